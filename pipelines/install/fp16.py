"""float16 copies of the embedders, for the CUDA provider.

``convert`` turns a verified float32 ONNX embedder (``dlib_resnet_v1.onnx``,
``mobilefacenet.onnx``, ``mfn512.onnx``) into ``name.fp16.onnx`` with
onnxruntime's own converter (``onnxruntime.transformers.float16``): weights and
activations in float16, ``keep_io_types`` so the inputs and outputs keep their
types (dlib's uint8 chips, float32 inputs of the MobileFaceNets, float32
vectors) and callers see no difference.

What stays float32 is onnxruntime's default block list (ML-domain operators,
NonMaxSuppression, TopK, Range, CumSum, ...), which none of these networks
uses; nothing else needs to. They are convolutions, ReLU / PReLU, additions,
pooling and one MatMul, with no reduction, softmax, normalisation or exponent
that overflows or loses its small terms in float16, and their largest
activation on the int8 reference faces is 255 (dlib's uint8 input, exact in
float16; then 213 in MobileFaceNet, 4.8 in mfn512) against float16's 65504.
The load-time check proves each file rather than this argument.

The reference is ``REFERENCE_FACES`` real faces: the int8 reference's input
(LFW View 1 DevTrain faces), else faces cut from those photos the way
``pipelines.install.quantize`` cuts them, else the float32 file's own
reference input (synthetic); with none of them nothing is written and the
model runs float32. Stored with the float32 outputs for them.

Before anything is written, onnxruntime's CPU provider runs the copy on the
reference (it computes a float16 graph in float32 from the float16 weights, so
this catches a broken conversion, not float16 arithmetic) and must give cosine
>= ``FP16_MIN_COSINE``. Written atomically, in order: the float16 file, the
reference (``.ref.npz``) and a sidecar (the float32 file's sha256, the copy's
sha256, the converter version, onnxruntime's version). Every load checks the
sha256 and the cosine again on the provider that runs it
(``pipelines.model_check.open_fp16``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from configs.settings import Runtime
from pipelines.errors import ModelNotInstalled
from pipelines.install.model_files import (checked_reference, ensure_form, form_sidecar,
                                             write_form)
from pipelines.model_check import (FORMAT_VERSION, FP16_MIN_COSINE, ONNXRUNTIME, int8_path,
                                   reference_path)

log = logging.getLogger(__name__)

CONVERTER_VERSION = FORMAT_VERSION["fp16"]
#: reference faces stored for the load-time check
REFERENCE_FACES = 8
_CPU = Runtime(device="cpu", intra_op_threads=1, inter_op_threads=1)


def to_float16(source: Path) -> tuple[bytes, list[str]]:
    """The float16 model of ``source`` and the operators of it left in float32."""
    import onnx
    from onnxruntime.transformers.float16 import (DEFAULT_OP_BLOCK_LIST,
                                                  convert_float_to_float16)

    model = onnx.load(str(source))
    kept = sorted({n.op_type for n in model.graph.node} & set(DEFAULT_OP_BLOCK_LIST))
    half = convert_float_to_float16(model, keep_io_types=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST))
    return half.SerializeToString(), kept


def reference_inputs(source: Path, name: str) -> tuple[np.ndarray, str]:
    """Up to ``REFERENCE_FACES`` network inputs of real faces, and where they come from."""
    try:
        with np.load(reference_path(int8_path(source))) as z:
            return z["input"][:REFERENCE_FACES], "LFW View 1 DevTrain faces (int8 reference)"
    except (OSError, ValueError, KeyError):
        pass
    from pipelines.install import quantize
    from pipelines.models import ModelContext
    from pipelines.registry import EMBEDDERS

    try:
        model = EMBEDDERS[name](ModelContext(models_dir=source.parent, runtime=_CPU))
        chips = quantize.calibration_chips(model, source.parent, REFERENCE_FACES)
        return model.preprocess(chips), f"LFW View 1 DevTrain faces, detector {quantize.DETECTOR}"
    except ModelNotInstalled as exc:  # no photos: the float32 file's own reference
        why = exc
    try:
        with np.load(reference_path(source)) as z:
            return z["input"][:REFERENCE_FACES], "the float32 file's reference input (synthetic)"
    except (OSError, ValueError, KeyError):
        raise ModelNotInstalled(
            f"model '{name}': no reference faces for its float16 form ({why}); it is not made",
            {"model": name, "missing_file": str(reference_path(source))}) from why


def convert(source: Path, out: Path, name: str) -> dict[str, Any]:
    """Write the float16 copy of the float32 embedder ``source`` at ``out``."""
    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    data, kept = to_float16(source)
    x, origin = reference_inputs(source, name)
    cos, reference = checked_reference(source, data, x, FP16_MIN_COSINE, name, "float16")
    meta = form_sidecar(CONVERTER_VERSION, name, source, data, **{
        "onnxruntime": ONNXRUNTIME,
        "format": "float16 weights and activations, inputs and outputs as in float32 "
                  "(onnxruntime.transformers.float16, keep_io_types)",
        "kept_float32": kept,
        "reference": f"{len(x)} inputs: {origin}",
        "reference_min_cosine_cpu": round(float(cos.min()), 7),
        "converted_in_s": round(time.perf_counter() - t0, 2),
    })
    write_form(out, data, reference, meta)
    log.info("made %s (float16; cosine >= %.6f to float32 on %d reference faces on the CPU) "
             "in %.1f s", out, cos.min(), len(x), meta["converted_in_s"])
    return meta


def ensure_converted(source: Path, out: Path, name: str, force: bool = False,
                     **options: Any) -> None:
    """Convert once per models directory: concurrent starters wait for the first."""
    ensure_form("fp16", "float16", convert, source, out, name, force, **options)
