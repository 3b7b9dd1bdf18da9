"""Static int8 copies of the embedders (QDQ, per-channel weights), calibrated on
LFW View 1 DevTrain faces.

``convert`` quantises a verified float32 ONNX embedder (``dlib_resnet_v1.onnx``,
``mobilefacenet.onnx``, ``mfn512.onnx``) with ``onnxruntime.quantization``:
QDQ format, int8 weights per output channel, uint8 activations (the form
MLAS's VNNI kernels take) with ranges from MinMax calibration over
``CALIBRATION_FACES`` faces of the photos named in ``pairsDevTrain.txt`` (the
calibration split; DevTest and the 1:N protocol judge the result,
``bench/quantized.py``; for the MobileFaceNets, int8 convolutions only, float
depthwise convolutions and percentile ranges (``quantize``'s options) also
missed the cosine bar: README "int8 embedders"). The chips are cut the way requests
cut them: the default detector, the face nearest the centre, the model's own
chip spec and input scaling.

The photos are read from ``$FACEFLEET_CALIBRATION_PHOTOS`` or the shared
``faces/lfw-dev`` beside the checkout; without them nothing is written and the
model keeps running in float32 (``pipelines.model_check.open_int8``).

Written atomically, in order: the int8 ONNX file, a reference (eight
calibration inputs and the float32 model's outputs for them, ``.ref.npz``)
and a JSON sidecar (the float32 file's sha256, the int8 file's sha256, the
quantiser's version, the calibration set's digest). Every load checks the
int8 file's sha256 and that it stays within ``INT8_MIN_COSINE`` of float32 on
the reference faces.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import FacefleetError, ModelNotInstalled
from configs.settings import ImageLimits, Runtime
from pipelines.install.model_files import (checked_reference, ensure_form, form_sidecar,
                                             write_form)
from pipelines.model_check import (FORMAT_VERSION, INT8_MIN_COSINE, QUANTIZER)

log = logging.getLogger(__name__)

CONVERTER_VERSION = FORMAT_VERSION["int8"]
#: faces the activation ranges are measured on (every k-th DevTrain photo)
CALIBRATION_FACES = 512
#: reference faces stored for the load-time check
REFERENCE_FACES = 8
DETECTOR = "blazeface"
_CPU = Runtime(device="cpu", intra_op_threads=1, inter_op_threads=1)


def photos_dir() -> Path:
    """Where the LFW dev photos are: ``$FACEFLEET_CALIBRATION_PHOTOS`` or the shared set."""
    env = os.environ.get("FACEFLEET_CALIBRATION_PHOTOS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "faces" / "lfw-dev"


def devtrain_photos(lfw: Path) -> list[Path]:
    """The distinct photos named in LFW View 1 ``pairsDevTrain.txt``, sorted."""
    out: set[Path] = set()
    for line in (lfw / "pairsDevTrain.txt").read_text().splitlines()[1:]:
        p = line.split("\t")
        named = ([(p[0], p[1]), (p[0], p[2])] if len(p) == 3
                 else [(p[0], p[1]), (p[2], p[3])] if len(p) == 4 else [])
        out.update(lfw / "images" / n / f"{n}_{int(i):04d}.jpg" for n, i in named)
    return sorted(out)


def calibration_chips(model: Any, models_dir: Path, n: int = CALIBRATION_FACES) -> np.ndarray:
    """(n, size, size, 3) uint8 chips of the model's spec from DevTrain photos."""
    from pipelines.models import ModelContext
    from pipelines.stages import DetectionStage, DetectRequest

    lfw = photos_dir()
    if not (lfw / "pairsDevTrain.txt").is_file():
        raise ModelNotInstalled(
            f"model '{model.name}': no calibration photos at {lfw} (LFW View 1 dev set; set "
            "FACEFLEET_CALIBRATION_PHOTOS); its int8 form is not made",
            {"model": model.name, "missing_file": str(lfw / "pairsDevTrain.txt")})
    photos = devtrain_photos(lfw)
    photos = photos[::max(1, len(photos) // n)][:n]
    stage = DetectionStage(ModelContext(models_dir=models_dir, runtime=_CPU), ImageLimits())
    chips = []
    for i in range(0, len(photos), 32):
        reqs = [DetectRequest(p.read_bytes(), DETECTOR, max_faces=8, chip_specs=(model.chip,))
                for p in photos[i:i + 32]]
        for r in stage.run(reqs):
            if isinstance(r, FacefleetError) or not r.faces:
                continue
            cx, cy = r.width / 2, r.height / 2  # LFW centres the labelled person
            j = min(range(len(r.faces)), key=lambda k: (r.faces[k].box.x + r.faces[k].box.w / 2
                                                        - cx) ** 2 + (r.faces[k].box.y
                                                        + r.faces[k].box.h / 2 - cy) ** 2)
            chips.append(r.chips[model.chip.key][j])
    return np.stack(chips)


def quantize(source: Path, inputs: np.ndarray, batch: int = 16, *,
             ops: tuple[str, ...] | None = None, skip_depthwise: bool = False,
             method: str = "MinMax") -> bytes:
    """The QDQ int8 model of ``source`` calibrated on ``inputs`` (the network's own input)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.batches = iter([{name: inputs[i:i + batch]}
                                 for i in range(0, len(inputs), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    model = onnx.load(str(source))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-channel DequantizeLinear needs opset 13
        model = version_converter.convert_version(model, 13)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        exclude = [n.name for n in model.graph.node if skip_depthwise and n.op_type == "Conv"
                   and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        quantize_static(str(src), str(out), Reader(model.graph.input[0].name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[method],
                        op_types_to_quantize=list(ops) if ops else None,
                        nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})
        return out.read_bytes()


def convert(source: Path, out: Path, name: str, inputs: np.ndarray | None = None,
            method: str = "MinMax") -> dict[str, Any]:
    """Write the int8 copy of the float32 embedder ``source`` at ``out``."""
    from pipelines.models import ModelContext
    from pipelines.registry import EMBEDDERS

    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    model = EMBEDDERS[name](ModelContext(models_dir=source.parent, runtime=_CPU))
    if inputs is None:
        inputs = model.preprocess(calibration_chips(model, source.parent))
    data = quantize(source, inputs, method=method)
    ref_x = inputs[::max(1, len(inputs) // REFERENCE_FACES)][:REFERENCE_FACES]
    cos, reference = checked_reference(source, data, ref_x, INT8_MIN_COSINE, name, "int8")
    meta = form_sidecar(CONVERTER_VERSION, name, source, data, **{
        "quantizer": QUANTIZER,
        "format": f"QDQ, int8 weights per channel (symmetric), uint8 activations ({method})",
        "calibration": f"LFW View 1 DevTrain, {len(inputs)} faces, detector {DETECTOR}",
        "calibration_sha256": hashlib.sha256(np.ascontiguousarray(inputs).tobytes()).hexdigest(),
        "reference_min_cosine": round(float(cos.min()), 6),
        "converted_in_s": round(time.perf_counter() - t0, 2),
    })
    write_form(out, data, reference, meta)
    log.info("quantised %s -> %s (int8, cosine >= %.4f to float32 on the reference faces) "
             "in %.1f s", source, out, cos.min(), meta["converted_in_s"])
    return meta


def ensure_converted(source: Path, out: Path, name: str, force: bool = False,
                     **options: Any) -> None:
    """Quantise once per models directory: concurrent starters wait for the first."""
    ensure_form("int8", "int8", convert, source, out, name, force, **options)
