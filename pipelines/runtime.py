"""The one place where the compute runtime is chosen.

onnxruntime execution providers and session options, the CPU engine (OpenVINO
or onnxruntime) and precision of the models that can run on either,
TensorFlow's device and
thread pools, and BLAS / OpenMP thread counts all come from
``configs.settings.Runtime`` through this module: model replicas call
``limit_native_threads``, every onnxruntime session (the install-time
converters' too) comes from ``onnx_session``, and the local launcher's
environment for the processes it starts from ``native_thread_env`` (FAISS's
pool in the Gallery is the index's, ``index.faiss_threads``). ``device='cuda'``
fails loudly when CUDA is not usable; ``device='auto'`` falls back to the CPU.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipelines.errors import Unavailable
from configs.settings import Runtime

log = logging.getLogger(__name__)

#: the variables BLAS / OpenMP read their pool sizes from when they start
NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def native_thread_env(threads: int) -> dict[str, str]:
    """The environment that caps BLAS / OpenMP pools of a process not yet started."""
    return {var: str(max(threads, 1)) for var in NATIVE_THREAD_VARS}


def limit_native_threads(threads: int) -> None:
    """Cap BLAS/OpenMP pools; on small machines extra threads make matmuls slower.

    Must run before numpy-heavy libraries spin up their pools, so replicas call
    it first thing in their constructor.
    """
    os.environ.update(native_thread_env(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(threads, 1))
    except Exception:  # threadpoolctl is optional  # noqa: BLE001
        pass


def onnx_providers(cfg: Runtime) -> list[Any]:
    """Execution providers for onnxruntime according to ``cfg.device``.

    Raises ``Unavailable`` when CUDA is requested but onnxruntime has no CUDA
    provider (a CPU-only wheel, or no GPU visible).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if cfg.device == "cpu":
        return ["CPUExecutionProvider"]
    if cfg.device == "cuda" and not cuda:
        raise Unavailable(
            "runtime.device is 'cuda' but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or set "
            "FACEFLEET_RUNTIME__DEVICE=cpu",
            {"available_providers": available},
        )
    if not cuda:
        log.info("runtime.device=auto: CUDA not available, using the CPU")
        return ["CPUExecutionProvider"]
    _preload_cuda_libraries(ort)
    # tf32 off keeps GPU embeddings within 1e-4 of the CPU reference (parity).
    return [("CUDAExecutionProvider", {"device_id": cfg.cuda_device_id, "use_tf32": 0}),
            "CPUExecutionProvider"]


_cuda_preloaded = False


def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA / cuDNN from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) once.

    The CUDA provider is opened only when a session asks for it and does not
    search pip's nvidia folders by itself; without those wheels the system's
    CUDA libraries are used, as before.
    """
    global _cuda_preloaded
    if _cuda_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _cuda_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - the session check below reports what matters
        log.info("onnxruntime.preload_dlls failed (%s); relying on system CUDA libraries", exc)


def onnx_session(path: str | bytes, cfg: Runtime, *, optimize: bool = True,
                 denormal_as_zero: bool = False) -> Any:
    """An onnxruntime InferenceSession for ``path`` (or a serialized model) on the
    configured device.

    ``denormal_as_zero`` sets onnxruntime's flush-to-zero switch; it reaches
    the intra-op pool's threads only, not the thread that calls ``run`` (all of
    the work with one intra-op thread), so a model with denormal weights also
    needs them zeroed (``pipelines.install.onnx_rebatch``).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if denormal_as_zero:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    providers = onnx_providers(cfg)
    session = ort.InferenceSession(path, sess_options=opts, providers=providers)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if session.get_providers()[0] != wanted:
        # onnxruntime falls back to the CPU silently when the CUDA provider's
        # libraries (CUDA, cuDNN) or the GPU cannot be loaded
        if cfg.device == "cuda":
            raise Unavailable(
                f"runtime.device is 'cuda' but onnxruntime could not start {wanted} for "
                f"{path} (got {', '.join(session.get_providers())}): check that nvidia-smi "
                "sees a GPU and that the CUDA and cuDNN libraries onnxruntime-gpu needs are "
                "installed (pip install 'onnxruntime-gpu[cuda,cudnn]')",
                {"providers": session.get_providers()})
        log.warning("runtime.device=auto: %s unavailable for %s, using the CPU", wanted, path)
    return session


#: CPU flags (``/proc/cpuinfo``) under which int8 matrix work runs on dedicated
#: instructions (onnxruntime's MLAS uses VNNI); without them int8 is no faster
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: CPU flags under which bfloat16 runs on dedicated units (OpenVINO uses AMX tiles
#: or AVX-512 BF16); without them OpenVINO computes a bf16 request in float32
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags; empty where ``/proc/cpuinfo`` cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_engine(cfg: Runtime) -> str:
    """The engine of models that may run on either: ``openvino`` or ``onnxruntime``.

    ``auto`` takes OpenVINO where it is installed. Raises ``Unavailable`` when
    ``openvino`` is asked for and cannot be imported.
    """
    from pipelines import openvino_session

    if cfg.engine == "onnxruntime":
        return "onnxruntime"
    if openvino_session.available():
        return "openvino"
    if cfg.engine == "openvino":
        raise Unavailable("runtime.engine is 'openvino' but the openvino package is not "
                          "installed (pip install openvino); set FACEFLEET_RUNTIME__ENGINE=auto")
    return "onnxruntime"


def precision_for(cfg: Runtime, provider: str, *, engine: str, has_int8: bool,
                  has_bf16: bool, has_fp16: bool = False, flags: set[str] | None = None) -> str:
    """The precision a model whose float32 session runs on ``provider`` should run in:
    ``bf16``, ``int8``, ``fp16`` or ``fp32``.

    On the CUDA provider float32, unless ``fp16`` is asked for and the model keeps
    its float16 copy (``has_fp16``); ``auto`` keeps float32 there. ``fp16`` means
    float32 on the CPU: onnxruntime's CPU provider has no float16 kernels for
    these networks (it casts the float16 file back to float32: the same work, with
    rounded weights), and OpenVINO's fast path on the CPU is bf16. ``bf16`` needs the OpenVINO
    engine and a model that keeps its bf16 form (``has_bf16``); ``int8`` a model
    that keeps an int8 copy (``has_int8``); a model without the asked-for form runs
    float32. ``auto`` picks bf16 where the CPU has one of ``BF16_FLAGS`` and the
    engine is OpenVINO, else int8 where it has one of ``INT8_FLAGS``, else float32.
    """
    if provider == "CUDAExecutionProvider":
        return "fp16" if cfg.precision == "fp16" and has_fp16 else "fp32"
    if provider != "CPUExecutionProvider" or cfg.precision in ("fp32", "fp16"):
        return "fp32"
    bf16_ok = has_bf16 and engine == "openvino"
    if cfg.precision == "bf16":
        return "bf16" if bf16_ok else "fp32"
    if cfg.precision == "int8":
        return "int8" if has_int8 else "fp32"
    flags = cpu_flags() if flags is None else flags
    if bf16_ok and set(BF16_FLAGS) & flags:
        return "bf16"
    if has_int8 and set(INT8_FLAGS) & flags:
        return "int8"
    return "fp32"


_tf_configured = False


def configure_tensorflow(cfg: Runtime) -> Any:
    """Import TensorFlow with the configured threads and device; returns the module."""
    global _tf_configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    if not _tf_configured:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cfg.inter_op_threads)
            if cfg.device == "cpu":
                tf.config.set_visible_devices([], "GPU")
            elif cfg.device == "cuda" and not tf.config.list_physical_devices("GPU"):
                raise Unavailable("runtime.device is 'cuda' but TensorFlow sees no GPU")
        except RuntimeError:  # already initialised by an earlier import: keep its setup
            pass
        _tf_configured = True
    return tf


def tf_device(cfg: Runtime) -> str:
    """TensorFlow device string for model placement."""
    if cfg.device == "cpu":
        return "CPU:0"
    return f"GPU:{cfg.cuda_device_id}" if cfg.device == "cuda" else "CPU:0"
