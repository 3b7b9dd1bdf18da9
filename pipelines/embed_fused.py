"""Score fusion as one embedder: the weighted concatenation of several networks.

For unit vectors a_i, b_i of two faces and weights w_i, the concatenation
``[w_1 a_1, w_2 a_2, ...] / sqrt(sum w_i^2)`` is again a unit vector, and the
cosine of two such vectors is ``sum w_i^2 cos_i / sum w_i^2``: a weighted mean
of each network's cosine. So a fused model is searched with the same inner
product, in the same gallery, as any single one. Each face is detected and
aligned once; each part gets its own chip of that face (``chip_specs``). The
weights come from configuration (``Settings.fusion_weights``, chosen on LFW
View 1 DevTrain by ``bench/recognizer.py``); vectors made with other weights
are not comparable, so changing them means re-enrolling a collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipelines.errors import ValidationError
from pipelines.models import EmbedderModel, l2_normalise
from pipelines.types import ChipSpec


class FusedEmbedder(EmbedderModel):
    """Weighted concatenation of the unit vectors of ``parts``."""

    def __init__(self, name: str, parts: Sequence[EmbedderModel], weights: Sequence[float]) -> None:
        if len(parts) < 2 or len(parts) != len(weights):
            raise ValueError("a fused embedder needs two or more parts, one weight each")
        if not all(w > 0 for w in weights):
            raise ValueError(f"fusion weights must be positive, got {list(weights)}")
        self.name = name
        self.parts = list(parts)
        norm = float(np.sqrt(np.sum(np.square(weights))))
        #: per-part scale, so the concatenation of unit vectors has unit length
        self.scales = [float(w) / norm for w in weights]
        self.dim = sum(p.dim for p in self.parts)
        self.chip = self.parts[0].chip

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        return tuple(dict.fromkeys(p.chip for p in self.parts))

    @property
    def precision(self) -> str:  # type: ignore[override]
        """Each part's precision in part order, e.g. ``int8+fp32`` (after ``load``)."""
        return "+".join(p.precision for p in self.parts)

    @property
    def engine(self) -> str:  # type: ignore[override]
        """The parts' engines (after ``load``), each once."""
        return "+".join(dict.fromkeys(p.engine for p in self.parts))

    def load(self) -> None:
        for p in self.parts:
            p.load()

    def combine(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Each part's (N, dim_i) unit vectors -> the fused (N, dim) unit vectors."""
        cat = np.concatenate([s * l2_normalise(v) for s, v in zip(self.scales, vectors,
                                                                  strict=True)], axis=1)
        return l2_normalise(cat)  # already unit length up to rounding

    def embed(self, chips: np.ndarray) -> np.ndarray:
        raise ValidationError(f"'{self.name}' needs chips of several kinds; call predict_batch "
                              f"with {', '.join(s.key for s in self.chip_specs)}")

    def predict_batch(self, chips: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.combine([p.predict_batch(chips) for p in self.parts])
