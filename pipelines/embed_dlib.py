"""dlib's 128-d face-recognition ResNet as two embedders: ONNX (batched) and native.

``DlibOnnxEmbedder`` ("dlib") runs the network converted by
``pipelines.dlib_convert`` under onnxruntime, so it batches, honours the
configured threads and can use CUDA; the conversion happens on first load
into the models directory and is checked against dlib on every load.
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

from pipelines import dlib_convert
from configs.errors import ModelNotInstalled, Unavailable, ValidationError
from pipelines.model_files import exclusive, lock_path
from pipelines.models import DLIB_CHIP, Embedder, ModelContext, l2_normalise, require_file
from pipelines.runtime import onnx_providers, onnx_session

log = logging.getLogger(__name__)

ONNX_NAME = "dlib_resnet_v1.onnx"
DIM = 128
_HINT = (f"it ships with the face-recognition-models package (pip install "
         f"face-recognition-models), or put {dlib_convert.DAT_NAME} in the models directory")


def resolve_dat(ctx: ModelContext, model: str, explicit: Path | None = None) -> Path:
    """Where the .dat is: an explicit path, else the models dir, else the package's copy."""
    if explicit is not None:
        return require_file(Path(explicit), model, _HINT)
    local = Path(ctx.models_dir) / dlib_convert.DAT_NAME
    if local.is_file():
        return local
    try:
        packaged = dlib_convert.default_dat_path()
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


class DlibOnnxEmbedder(Embedder):
    """dlib ResNet v1 under onnxruntime: batched, CPU or CUDA."""

    name = "dlib"
    dim = DIM
    chip = DLIB_CHIP

    def __init__(self, ctx: ModelContext | None = None, dat_path: Path | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.dat_path = dat_path
        self.onnx_path = Path(self.ctx.models_dir) / ONNX_NAME
        self.session: Any = None
        #: cosine to dlib on the sidecar's reference chip, set by load()
        self.verified_cosine: float | None = None

    def load(self) -> None:
        if self.session is not None:
            return
        onnx_providers(self.ctx.runtime)  # fail on an unusable device before converting
        dat = resolve_dat(self.ctx, self.name, self.dat_path)
        converted = False
        if not dlib_convert.is_current(self.onnx_path, dat):
            self._convert(dat)
            converted = True
        try:
            session = self._open_verified()
        except ModelNotInstalled:
            if converted:
                raise
            # a stale or damaged file on disk: rebuild it once from the .dat
            log.warning("%s failed verification; reconverting from %s", self.onnx_path, dat)
            self._convert(dat, force=True)
            session = self._open_verified()
        self.session = session
        self._input = session.get_inputs()[0].name
        log.info("loaded %s on %s (cosine %.7f to dlib)", self.onnx_path,
                 session.get_providers()[0], self.verified_cosine)

    def _convert(self, dat: Path, force: bool = False) -> None:
        try:
            with exclusive(lock_path(self.onnx_path)):
                if force or not dlib_convert.is_current(self.onnx_path, dat):
                    dlib_convert.convert(dat, self.onnx_path)
        except OSError as exc:
            raise ModelNotInstalled(
                f"model 'dlib' is not converted and {self.onnx_path} cannot be written "
                f"({exc}); run `python -m pipelines.dlib_convert --out {self.onnx_path}` "
                "where that directory is writable",
                {"model": self.name, "missing_file": str(self.onnx_path)},
            ) from exc

    def _open_verified(self) -> Any:
        try:
            session = onnx_session(str(self.onnx_path), self.ctx.runtime)
        except (Unavailable, ModelNotInstalled):
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise dlib_convert.ModelVerificationFailed(
                f"converted model {self.onnx_path} cannot be opened by onnxruntime: {exc}",
                {"model": self.name, "file": str(self.onnx_path)},
            ) from exc
        self.verified_cosine = dlib_convert.verify(session, self.onnx_path)
        return session

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


class DlibNativeEmbedder(Embedder):
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
