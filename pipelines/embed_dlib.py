"""dlib's 128-d face-recognition ResNet as two embedders: ONNX (batched) and native.

``DlibOnnxEmbedder`` ("dlib") runs the network converted by
``pipelines.install.dlib_convert`` under onnxruntime, so it batches, honours the
configured threads and can use CUDA; the conversion happens at install (or on
first load in a process that converts, ``pipelines.model_check``) into the models
directory, and every load checks the file against dlib's own embedding of a
synthetic chip, stored in its sidecar (``verify``).
``DlibNativeEmbedder`` ("dlib-native") calls dlib itself and is the reference
the ONNX model is held to. Both take dlib face chips (150 px, padding 0.25,
cut with ``dlib.get_face_chip`` from the 5-point shape) and return
L2-normalised vectors, so their outputs are interchangeable in one index.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ModelNotInstalled, Unavailable, ValidationError
from pipelines.model_check import (ModelVerificationFailed, load_sidecar, open_verified,
                                   sidecar_path, with_precision)
from pipelines.models import DLIB_CHIP, EmbedderModel, ModelContext, l2_normalise, require_file

log = logging.getLogger(__name__)

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
ONNX_NAME = "dlib_resnet_v1.onnx"
DIM = 128
#: cosine an ONNX file must reach against dlib on the synthetic chip
VERIFY_MIN_COSINE = 0.9999
_HINT = (f"it ships with the face-recognition-models package (pip install "
         f"face-recognition-models), or put {DAT_NAME} in the models directory")


def resolve_dat(ctx: ModelContext, model: str, explicit: Path | None = None) -> Path:
    """Where the .dat is: an explicit path, else the models dir, else the package's copy."""
    if explicit is not None:
        return require_file(Path(explicit), model, _HINT)
    local = Path(ctx.models_dir) / DAT_NAME
    if local.is_file():
        return local
    try:
        packaged = default_dat_path()
    except ModelNotInstalled:
        packaged = None
    if packaged is not None and packaged.is_file():
        return packaged
    return require_file(local, model, _HINT)


def _check_chips(chips: np.ndarray) -> np.ndarray:
    chips = np.asarray(chips)
    size = DLIB_CHIP.size
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
        raise ValidationError(
            f"dlib embedders take uint8 RGB chips of shape (N, {size}, {size}, 3), "
            f"got {chips.dtype} {chips.shape}",
            {"shape": list(chips.shape), "dtype": str(chips.dtype)},
        )
    return np.ascontiguousarray(chips)


class DlibOnnxEmbedder(EmbedderModel):
    """dlib ResNet v1 under onnxruntime: batched, CPU or CUDA."""

    name = "dlib"
    dim = DIM
    chip = DLIB_CHIP
    #: int8 holds here: cosine >= 0.998 to float32 on every LFW dev face, accuracy and
    #: rank-1 unchanged, about 2.5x faster a face on a VNNI CPU (bench/quantized.py)
    has_int8 = True
    #: bf16 holds too (bench/quantized.py), and on OpenVINO runs on AMX or AVX-512 BF16
    has_bf16 = True

    def __init__(self, ctx: ModelContext | None = None, dat_path: Path | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.dat_path = dat_path
        self.onnx_path = Path(self.ctx.models_dir) / ONNX_NAME
        self.session: Any = None
        #: cosine to dlib on the sidecar's reference chip, set by load()
        self.verified_cosine: float | None = None

    @staticmethod
    def preprocess(chips: np.ndarray) -> np.ndarray:
        """The network reads uint8 RGB chips as they are (its scaling is in the graph)."""
        return np.ascontiguousarray(chips)

    def load(self) -> None:
        if self.session is not None:
            return
        dat = resolve_dat(self.ctx, self.name, self.dat_path)
        session = open_verified("dlib", dat, self.onnx_path, self.name, self.ctx.runtime,
                                check=self._verify)
        session, self.precision = with_precision(session, self.onnx_path, self.name,
                                                 self.ctx.runtime, self.has_int8, self.has_bf16,
                                                 self.has_fp16)
        self.session = session
        self._input = session.get_inputs()[0].name
        self.engine = session.get_providers()[0]
        log.info("loaded %s on %s (%s; float32 cosine %.7f to dlib)", self.onnx_path,
                 self.engine, self.precision, self.verified_cosine)

    def _verify(self, session: Any) -> None:
        self.verified_cosine = verify(session, self.onnx_path)

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        """The network's raw output (dlib's descriptor scale: same person if distance < 0.6)."""
        if self.session is None:
            self.load()
        chips = _check_chips(chips)
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.session.run(None, {self._input: chips})[0]

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return l2_normalise(self.embed_raw(chips))


class DlibNativeEmbedder(EmbedderModel):
    """dlib ResNet v1 through dlib itself (CPU, ~75 ms a face, no batch speed-up)."""

    name = "dlib-native"
    dim = DIM
    chip = DLIB_CHIP

    def __init__(self, ctx: ModelContext | None = None, dat_path: Path | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.dat_path = dat_path
        self.model: Any = None
        # a dlib net keeps per-call buffers, so one call at a time per instance
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.model is not None:
            return
        import dlib

        if self.ctx.runtime.device == "cuda" and not getattr(dlib, "DLIB_USE_CUDA", False):
            raise Unavailable(
                "runtime.device is 'cuda' but this dlib build has no CUDA support; use the "
                "'dlib' (ONNX) embedder on GPUs or set FACEFLEET_RUNTIME__DEVICE=cpu",
                {"model": self.name},
            )
        dat = resolve_dat(self.ctx, self.name, self.dat_path)
        try:
            self.model = dlib.face_recognition_model_v1(str(dat))
        except RuntimeError as exc:
            raise ModelNotInstalled(
                f"model '{self.name}': {dat} is not a readable dlib network ({exc}); "
                "reinstall face-recognition-models",
                {"model": self.name, "file": str(dat)},
            ) from exc

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        if self.model is None:
            self.load()
        chips = _check_chips(chips)
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self.model.compute_face_descriptor(list(chips))
        return np.asarray([np.asarray(v) for v in out], dtype=np.float32)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return l2_normalise(self.embed_raw(chips))


def synthetic_chip(size: int = 150) -> np.ndarray:
    """A deterministic 150x150 RGB uint8 test chip (smooth ramps and waves).

    Defined by formulas rather than a random generator so that every numpy
    version draws the same pixels, and with texture at several scales so
    that every layer's weights influence the reference embedding.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    r = 128 + 100 * np.sin(2 * np.pi * (1.5 * xx + 0.5 * yy))
    gch = 128 + 90 * np.cos(2 * np.pi * 3.0 * yy) * np.sin(2 * np.pi * 2.0 * xx)
    b = 255 * (0.3 * xx + 0.7 * yy) + 20 * np.sin(2 * np.pi * 11 * (xx - yy))
    chip = np.stack([r, gch, b], axis=-1)
    return np.clip(np.rint(chip), 0, 255).astype(np.uint8)


def verify(session: Any, onnx_path: Path) -> float:
    """Check a session of ``onnx_path`` against its sidecar; returns the cosine.

    Raises ModelVerificationFailed when the sidecar is missing or the ONNX
    output on the synthetic chip strays from dlib's reference.
    """
    meta = load_sidecar(onnx_path)
    if meta is None or "reference_embedding" not in meta:
        raise ModelVerificationFailed(
            f"converted model {onnx_path} has no readable sidecar {sidecar_path(onnx_path)}; "
            "delete both files to reconvert",
            {"model": "dlib", "file": str(onnx_path)},
        )
    ref = np.asarray(meta["reference_embedding"], dtype=np.float64)
    chip = synthetic_chip(int(meta["input"]["size"][0]))[None]
    out = np.asarray(session.run(None, {"chips": chip})[0][0], dtype=np.float64)
    cos = float(out @ ref / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-12))
    if not cos >= VERIFY_MIN_COSINE:  # also catches NaN
        raise ModelVerificationFailed(
            f"converted model {onnx_path} does not reproduce dlib's reference embedding "
            f"(cosine {cos:.6f} < {VERIFY_MIN_COSINE}); delete it to reconvert",
            {"model": "dlib", "file": str(onnx_path), "cosine": cos},
        )
    return cos


def default_dat_path() -> Path:
    """The .dat shipped by the face-recognition-models package."""
    try:
        import face_recognition_models
    except ImportError:
        raise ModelNotInstalled(
            f"model 'dlib' is not installed: {DAT_NAME} comes with the "
            "face-recognition-models package (pip install face-recognition-models)",
            {"model": "dlib", "missing_file": DAT_NAME},
        ) from None
    return Path(face_recognition_models.face_recognition_model_location())
