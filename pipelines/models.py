"""Model interfaces shared by every detector, embedder and attribute model.

Each model is a plain class with a ``load()`` that may raise
``ModelNotInstalled`` (naming the missing file and where it goes) and a
batched call. Registries of names live in ``pipelines/registry.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from configs.settings import Runtime
from configs.errors import ModelNotInstalled, ValidationError
from pipelines.types import ChipSpec, Face

DLIB_CHIP = ChipSpec(150, 0.25)


@dataclass(frozen=True)
class ModelContext:
    """What a model needs to find its weights and pick its runtime.

    ``model_pack`` limits which models the registry builds (``permissive``:
    only weights under an unrestricted licence); ``fusion_weights`` gives each
    fused embedder the weight of each part (``configs.settings``);
    ``anti_spoofing_model`` picks the liveness model.
    """

    models_dir: Path = Path("data/models")
    deepface_home: Path | None = None
    runtime: Runtime = field(default_factory=Runtime)
    model_pack: str = "default"
    fusion_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: which model answers the ``anti_spoofing`` action (``pipelines.registry.ANTI_SPOOFING_MODELS``)
    anti_spoofing_model: str = "fr_liveness"


def require_file(path: Path, model: str, hint: str) -> Path:
    """Return ``path`` if it exists, else raise a ModelNotInstalled naming it."""
    if not path.is_file():
        raise ModelNotInstalled(
            f"model '{model}' is not installed: weights file {path} is missing ({hint})",
            {"model": model, "missing_file": str(path)},
        )
    return path


class Detector(ABC):
    """Finds faces in decoded RGB images (uint8, HxWx3)."""

    name: str = ""
    #: (dx, dy, sw, sh): maps this detector's box onto the box dlib's 5-point
    #: shape predictor was trained with (dlib HOG): centre shift in box widths /
    #: heights and size ratios, medians over 600 LFW View 1 DevTrain images
    #: (bench/box_calibration.py). Used for alignment only (``Face.align_box``);
    #: reported boxes stay the detector's own.
    box_to_dlib: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def calibrate(self, faces: list[Face]) -> list[Face]:
        for f in faces:
            if f.align_box is None:
                f.align_box = f.box.mapped(*self.box_to_dlib)
        return faces

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights; raise ModelNotInstalled when they are missing."""

    @abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, in any order; landmarks may be NaN when unknown."""


class Embedder(ABC):
    """Turns aligned chips into L2-normalised embeddings.

    ``chip_specs`` lists the chips the model needs of each face (one for a
    single network; a fused embedder needs one per part); ``embed_chips``
    takes them keyed by ``ChipSpec.key``, as ``DetectedImage.chips`` holds them.
    """

    name: str = ""
    dim: int = 0
    chip: ChipSpec = DLIB_CHIP

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        return (self.chip,)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights; raise ModelNotInstalled when they are missing."""

    @abstractmethod
    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB chips -> (N, dim) float32 unit vectors."""

    def embed_chips(self, chips: Mapping[str, np.ndarray]) -> np.ndarray:
        """Chips keyed by ``ChipSpec.key`` -> (N, dim) float32 unit vectors."""
        return self.embed(chips_for(chips, self.chip, self.name))


class AttributeModel(ABC):
    """Predicts one face attribute (age, gender, emotion, race, liveness) from chips."""

    name: str = ""
    action: str = ""
    chip: ChipSpec = DLIB_CHIP

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        """Every chip the model reads per face (anti-spoofing reads two crops)."""
        return (self.chip,)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights; raise ModelNotInstalled when they are missing."""

    @abstractmethod
    def predict(self, chips: np.ndarray) -> list[dict]:
        """One result dict per chip, in the API's shape for this action."""

    def predict_chips(self, chips: Mapping[str, np.ndarray]) -> list[dict]:
        """Chips keyed by ``ChipSpec.key`` -> one result dict per face."""
        return self.predict(chips_for(chips, self.chip, self.name))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def chips_for(chips: Mapping[str, np.ndarray], spec: ChipSpec, model: str) -> np.ndarray:
    """The chips of ``spec`` from a key -> chips mapping, or a ValidationError."""
    try:
        return chips[spec.key]
    except KeyError:
        raise ValidationError(
            f"model '{model}' needs chips '{spec.key}'; the request carries "
            f"{', '.join(sorted(chips)) or 'none'}",
            {"model": model, "needed": spec.key, "given": sorted(chips)}) from None
