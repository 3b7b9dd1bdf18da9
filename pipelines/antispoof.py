"""Anti-spoofing (liveness) from user-supplied MiniFASNet weights; none ship.

No anti-spoofing model that installs offline was validated on attack images
(``NOTES-models.md``), so facefleet ships none. A deployment that has its own
weights plugs in DeepFace's pair of MiniFASNet ONNX graphs (Minivision's
Silent-Face-Anti-Spoofing, Apache-2.0): ``2.7_80x80_MiniFASNetV2.onnx`` and
``4_0_0_80x80_MiniFASNetV1SE.onnx`` in ``<deepface_home>/.deepface/weights/``,
the same place as the other DeepFace zoo weights. Until both files are there,
``load()`` raises ``ModelNotInstalled`` naming them.

Each graph reads an 80x80 context crop of the detector's box (grown 2.7 and 4
times: the ``box`` chip kind), BGR pixel values in [0, 255], channels last, and
ends in a softmax over (spoof, real, spoof). As DeepFace does, the two outputs
are summed: the face is real when class 1 wins, and the score is the winning
class's mean probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.errors import ValidationError
from pipelines.models import AttributeModel, ModelContext, chips_for
from pipelines.types import ChipSpec

#: (weights file, crop scale) of each graph, in the order their outputs are summed
MINIFASNET_GRAPHS = (("2.7_80x80_MiniFASNetV2.onnx", 2.7),
                     ("4_0_0_80x80_MiniFASNetV1SE.onnx", 4.0))
MINIFASNET_SIZE = 80
REAL_CLASS = 1
#: the action name in /v1/analyze and the registry
ANTI_SPOOFING = "anti_spoofing"
SOURCE = ("DeepFace's onnx-engine weights (github.com/serengil/deepface_models releases v1.0), "
          "exported from minivision-ai/Silent-Face-Anti-Spoofing, Apache-2.0")


class AntiSpoofModel(AttributeModel):
    """MiniFASNetV2 + MiniFASNetV1SE on two context crops: ``is_real`` per face."""

    name = "deepface:Fasnet"
    action = ANTI_SPOOFING

    def __init__(self, ctx: ModelContext | None = None, max_batch: int = 32) -> None:
        self.ctx = ctx or ModelContext()
        self.max_batch = max_batch
        self.specs = tuple(ChipSpec(MINIFASNET_SIZE, scale, "box")
                           for _, scale in MINIFASNET_GRAPHS)
        self.chip = self.specs[0]
        self._sessions: list[Any] = []

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        return self.specs

    def load(self) -> None:
        if self._sessions:
            return
        from pipelines.embed_deepface import require_weights
        from pipelines.runtime import onnx_session

        # both files are checked before either is loaded, so the error names
        # the first missing one and nothing half-loads
        paths = [require_weights(self.ctx, self.name, f, SOURCE) for f, _ in MINIFASNET_GRAPHS]
        self._sessions = [onnx_session(str(p), self.ctx.runtime) for p in paths]

    def predict(self, chips: np.ndarray) -> list[dict]:
        raise ValidationError(f"'{self.name}' reads two crops per face; call predict_batch "
                              f"with {', '.join(s.key for s in self.specs)}")

    def predict_batch(self, chips: Mapping[str, np.ndarray]) -> list[dict]:
        crops = [chips_for(chips, spec, self.name) for spec in self.specs]
        n = len(crops[0])
        if n == 0:
            return []
        self.load()
        total = np.zeros((n, 3), np.float64)
        for session, rgb in zip(self._sessions, crops, strict=True):
            total += self._run(session, rgb)
        label = total.argmax(axis=1)
        score = total[np.arange(n), label] / len(self._sessions)
        return [{"is_real": bool(lab == REAL_CLASS), "antispoof_score": float(sc)}
                for lab, sc in zip(label, score, strict=True)]

    def _run(self, session: Any, rgb: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)  # RGB -> BGR, 0-255
        inp = session.get_inputs()[0]
        # some exports fix the batch at 1
        step = 1 if inp.shape and inp.shape[0] == 1 else self.max_batch
        outs = [session.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        return np.concatenate(outs).reshape(len(x), -1)[:, :3].astype(np.float64)
