"""One base for the embedders that run a converted, pinned ONNX file.

MobileFaceNet (192-d, from TFLite) and MobileFaceNet-512 (a rebatched ONNX
export) differ only in their source file, their converter and their input
scaling; loading (pinned source checked, converted file verified through
``pipelines.model_check``), chip checks, the CPU step and normalising live here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipelines.errors import ValidationError
from pipelines.model_check import NpmAsset, check_installed, open_verified, with_precision
from pipelines.models import EmbedderModel, ModelContext, l2_normalise
from pipelines.openvino_session import PROVIDER as OPENVINO

#: faces per OpenVINO call: ~1.6 ms a face in bf16 from 3 to 16 faces, 2.1 ms at 1
OPENVINO_STEP = 16

log = logging.getLogger(__name__)


class OnnxChipEmbedder(EmbedderModel):
    """An embedder over a converted ONNX file of a pinned npm asset; unit vectors."""

    #: the pinned source file, the converter kind (``model_check.FORMAT_VERSION``)
    #: and the converted file's name under the models directory
    asset: ClassVar[NpmAsset]
    kind: ClassVar[str]
    onnx_name: ClassVar[str]
    #: faces per onnxruntime call on the CPU. These networks are fastest one face
    #: per call there: their early activations (56x56x64 floats a face) leave the
    #: caches in bigger batches (1 thread: ~11 ms a face at batch 1, ~23 ms at
    #: batch 64; bench/embedder_throughput.py). A GPU takes the whole batch at once.
    cpu_step: ClassVar[int] = 1
    #: sidecar entries the converted file must have been made with (and converter options)
    convert_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: ModelContext | None = None) -> None:
        self.ctx = ctx or ModelContext()
        self.source_path = self.asset.path(self.ctx.models_dir)
        self.onnx_path = Path(self.ctx.models_dir) / self.onnx_name
        self.session: Any = None

    @staticmethod
    def preprocess(chips: np.ndarray) -> np.ndarray:
        """uint8 RGB chips -> the network's float32 input."""
        raise NotImplementedError

    def load(self) -> None:
        if self.session is not None:
            return
        # a missing or foreign source file fails here, before any conversion
        source = check_installed(self.asset, self.ctx.models_dir, self.name)
        session = open_verified(self.kind, source, self.onnx_path, self.name, self.ctx.runtime,
                                denormal_as_zero=self.convert_options.get("flush_below", 0) > 0,
                                **self.convert_options)
        session, self.precision = with_precision(session, self.onnx_path, self.name,
                                                 self.ctx.runtime, self.has_int8, self.has_bf16,
                                                 self.has_fp16)
        self._input = session.get_inputs()[0].name
        self.engine = session.get_providers()[0]
        # onnxruntime's CPU provider: one face a call (above); OpenVINO and CUDA
        # are faster a face in batches, which OpenVINO caps for the caches' sake
        self._step = {"CPUExecutionProvider": self.cpu_step,
                      OPENVINO: OPENVINO_STEP}.get(self.engine, 0)
        self.session = session
        log.info("loaded %s on %s (%s)", self.onnx_path, self.engine, self.precision)

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        """The network's raw output (not normalised)."""
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
        return np.concatenate([
            self.session.run(None, {self._input: self.preprocess(chips[i:i + step])})[0]
            for i in range(0, len(chips), step)])

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return l2_normalise(self.embed_raw(chips))
