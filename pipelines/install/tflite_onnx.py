"""Convert a shipped TFLite model into a verified ONNX model with a dynamic batch.

TFLite graphs come with a fixed batch (BlazeFace 1, MobileFaceNet 2), so they
cannot run a batch of requests in one forward pass, and TFLite has no CUDA
path here. ``convert`` runs tf2onnx on the ``.tflite``, makes the batch
dimension symbolic (graph inputs / outputs, and the ``Reshape`` shapes that
spell the batch out), checks that a batch of three gives the same rows as
three single calls, and writes, atomically and in this order, the ONNX file,
the TFLite interpreter's own outputs on a deterministic input (``.ref.npz``)
and a JSON sidecar (source sha256, converter version, tensor names, the
largest difference measured). ``open_verified`` reconverts when the source
changed, and on every load proves the file still computes what TFLite does.
Conversion needs TensorFlow (tf2onnx); loading needs only onnxruntime
(``pipelines.model_check.open_verified``).
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ModelNotInstalled
from pipelines.install.model_files import atomic_write, exclusive, lock_path
from pipelines.model_check import (FORMAT_VERSION, PREPARE, ModelVerificationFailed,
                                   is_current, max_error, reference_path, sha256_file,
                                   sidecar_path)

log = logging.getLogger(__name__)

#: bump (in pipelines.model_check) when the graph rewrite or the sidecar contents
#: change, so old files get rebuilt
CONVERTER_VERSION = FORMAT_VERSION["tflite"]
ONNX_OPSET = 17


def reference_input(shape: tuple[int, ...]) -> np.ndarray:
    """A deterministic NHWC float32 input in [-1, 1] (smooth ramps and waves).

    Defined by formulas, not a random generator, so every numpy draws the
    same values; each batch item is shifted so rows differ.
    """
    n, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = yy / h, xx / w
    items = []
    for i in range(n):
        s = 0.37 * i
        chans = [np.sin(2 * np.pi * (1.5 * xx + 0.5 * yy + s)),
                 np.cos(2 * np.pi * 3.0 * (yy + s)) * np.sin(2 * np.pi * 2.0 * xx),
                 (0.6 * xx + 1.4 * yy) - 1 + 0.1 * np.sin(2 * np.pi * 11 * (xx - yy + s))]
        items.append(np.stack([chans[k % 3] for k in range(c)], axis=-1))
    return np.clip(np.stack(items), -1, 1).astype(np.float32)


def tflite_outputs(tflite: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The TFLite interpreter's outputs for ``x``, keyed by output tensor name."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(tflite), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {d["name"]: np.array(interp.get_tensor(d["index"]))
            for d in interp.get_output_details()}


def symbolic_batch_io(g: Any) -> int:
    """Make dim 0 of a graph's inputs and outputs the symbol ``N``, in place, and
    drop the inferred intermediate shapes (they still carry the fixed batch);
    returns the fixed batch. The ``Reshape`` targets are the caller's to rewrite."""
    batch = int(g.input[0].type.tensor_type.shape.dim[0].dim_value)
    for vi in list(g.input) + list(g.output):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del g.value_info[:]
    return batch


def make_batch_dynamic(model: Any) -> int:
    """Make dim 0 of the graph's inputs and outputs symbolic, in place.

    The converter spells the fixed batch out in ``Reshape`` target shapes;
    those become ``-1`` (or ``0``, copy the input's batch, where another
    dimension is already ``-1``). Returns the fixed batch that was replaced.
    """
    from onnx import numpy_helper

    g = model.graph
    batch = symbolic_batch_io(g)
    inits = {t.name: t for t in g.initializer}
    done: set[str] = set()
    for node in g.node:
        if node.op_type != "Reshape" or node.input[1] not in inits or node.input[1] in done:
            continue
        t = inits[node.input[1]]
        shape = numpy_helper.to_array(t).copy()
        if shape.ndim == 1 and len(shape) and shape[0] == batch:
            shape[0] = 0 if (shape[1:] == -1).any() else -1
            t.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), t.name))
            done.add(t.name)
    return batch


def convert(tflite: Path, out: Path, name: str) -> dict[str, Any]:
    """Convert ``tflite`` to ONNX at ``out`` with its reference and sidecar; returns the sidecar."""
    import onnx
    import tf2onnx

    t0 = time.perf_counter()
    tflite, out = Path(tflite), Path(out)
    model, _ = tf2onnx.convert.from_tflite(str(tflite), opset=ONNX_OPSET)
    batch = make_batch_dynamic(model)
    onnx.checker.check_model(model)
    data = model.SerializeToString()

    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    hwc = tuple(int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    shape = (batch, *hwc)
    x = reference_input(shape)
    ref = tflite_outputs(tflite, x)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {inp.name: x}), strict=True))
    if set(got) != set(ref):
        raise ModelVerificationFailed(
            f"{name}: converted outputs {sorted(got)} differ from the TFLite ones {sorted(ref)}",
            {"model": name})
    worst = 0.0
    for k, r in ref.items():
        err, bound = max_error(got[k], r)
        worst = max(worst, err)
        if not err <= bound:
            raise ModelVerificationFailed(
                f"{name}: ONNX output {k} differs from TFLite by {err:.3g} (> {bound:.3g})",
                {"model": name, "output": k, "error": err})
    # the batch really is dynamic: three rows at once equal three single calls
    x3 = reference_input((3, *hwc))
    together = sess.run(None, {inp.name: x3})
    for i in range(3):
        alone = sess.run(None, {inp.name: x3[i:i + 1]})
        for a, b in zip(together, alone, strict=True):
            err, bound = max_error(a[i:i + 1], b.astype(np.float64))
            if not err <= bound:
                raise ModelVerificationFailed(
                    f"{name}: batched rows differ from single calls by {err:.3g}",
                    {"model": name, "error": err})
    buf = io.BytesIO()
    np.savez(buf, input=x, **{f"out_{i}": ref[k] for i, k in enumerate(names)})
    meta = {
        "converter_version": CONVERTER_VERSION,
        "model": name,
        "source": tflite.name,
        "source_sha256": sha256_file(tflite),
        "onnx_opset": ONNX_OPSET,
        "tflite_batch": batch,
        "input": {"name": inp.name, "shape": ["N", *hwc], "dtype": "float32"},
        "outputs": names,
        "max_abs_error_vs_tflite": worst,
        "converted_in_s": round(time.perf_counter() - t0, 2),
    }
    # model, then reference, then sidecar: a sidecar only describes complete files
    atomic_write(out, data)
    atomic_write(reference_path(out), buf.getvalue())
    atomic_write(sidecar_path(out), json.dumps(meta, indent=1).encode())
    log.info("converted %s -> %s (batch %d made dynamic, max |diff| %.2g vs TFLite) in %.1f s",
             tflite, out, batch, worst, meta["converted_in_s"])
    return meta


def ensure_converted(tflite: Path, out: Path, name: str, force: bool = False) -> None:
    """Convert once per models directory: concurrent starters wait for the first."""
    try:
        with exclusive(lock_path(out)):
            if force or not is_current(out, tflite, "tflite"):
                convert(tflite, out, name)
    except OSError as exc:
        raise ModelNotInstalled(
            f"model '{name}' is not converted and {out} cannot be written ({exc}); run "
            f"`{PREPARE}` where the models directory is writable",
            {"model": name, "missing_file": str(out)}) from exc
