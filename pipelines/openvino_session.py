"""OpenVINO as a second CPU engine, behind onnxruntime's session interface.

On the CPU, OpenVINO runs the same converted ONNX files as onnxruntime, faster
for MobileFaceNet-512 (depthwise convolutions, PReLU: 2.3x in float32), and it
runs bfloat16 on AMX / AVX-512 BF16 units where onnxruntime's CPU
provider has no bfloat16 kernels (``bench/quantized.py`` measures both engines
and precisions side by side). ``OpenVinoSession`` answers the part of
``onnxruntime.InferenceSession`` the models use (``run``, ``get_inputs``,
``get_outputs``, ``get_providers``), so a model does not know which engine it
runs on. Which engine and precision a model gets is decided in
``pipelines.runtime`` (``runtime.engine``, ``runtime.precision``); OpenVINO is
optional, and without it everything runs on onnxruntime as before.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: what ``get_providers()`` names for a session of this engine
PROVIDER = "OpenVINO-CPU"


def available() -> bool:
    """Whether the openvino package can be imported here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str | None:
    """openvino's version, or None where it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


@dataclass(frozen=True)
class _Arg:
    """What onnxruntime's NodeArg tells: name, shape (str for a dynamic dimension), type."""

    name: str
    shape: list[Any]
    type: str


_TYPES = {"f32": "tensor(float)", "u8": "tensor(uint8)", "f16": "tensor(float16)",
          "i64": "tensor(int64)", "i32": "tensor(int32)"}


def _arg(port: Any) -> _Arg:
    shape = [d.get_length() if d.is_static else "N" for d in port.get_partial_shape()]
    et = port.get_element_type().get_type_name()
    return _Arg(port.get_any_name(), shape, _TYPES.get(et, et))


class OpenVinoSession:
    """One ONNX file compiled by OpenVINO for the CPU, called like an onnxruntime session.

    ``bf16`` sets OpenVINO's inference precision to bfloat16 (weights and
    activations; accumulation stays float32), which runs on AMX tiles or
    AVX-512 BF16 where the CPU has them; otherwise float32 throughout. ``f16``
    asks for float16 likewise (AVX-512 FP16 / AMX-FP16; ``inference_precision``
    says what was granted): ``bench/gpu_check.py`` rehearses float16 files with
    it on a machine without a GPU; no model is served that way. Threads
    are not pinned, so several replicas share a small machine as they do under
    onnxruntime. An infer request is not thread-safe: each calling thread gets
    its own.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, bf16: bool = False,
                 f16: bool = False) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f16" if f16 else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.path = str(path)
        self._compiled = core.compile_model(core.read_model(self.path), "CPU", config)
        #: what OpenVINO computes in (``f32``, ``bf16``, ``f16``): a CPU without the
        #: units for the hint's type computes in float32
        self.inference_precision = self._compiled.get_property(
            "INFERENCE_PRECISION_HINT").get_type_name()
        self._inputs = [_arg(p) for p in self._compiled.inputs]
        self._outputs = [_arg(p) for p in self._compiled.outputs]
        self._local = threading.local()

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all, in order, for None) for the inputs in ``feed``."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({name: np.ascontiguousarray(x) for name, x in feed.items()})
        names = output_names or [o.name for o in self._outputs]
        # copies: the request reuses its output buffers on the next call
        return [np.array(request.get_tensor(name).data) for name in names]
