"""Turn a shipped fixed-batch ONNX model into a verified dynamic-batch copy.

The models of ``faceplugin-face-recognition-js`` are PyTorch exports with the
batch fixed at 1. ``convert`` makes dim 0 of the inputs and outputs symbolic
and the ``Reshape`` targets that spell the batch out copy it instead (``[1,
-1]`` -> ``[0, -1]``), and, when asked, sets to zero the weights too small to
reach a float32 output (``flush_below``). That last step is a speed fix, not an
approximation: MobileFaceNet-512 carries thousands of weights between 1e-38 and
1e-12 (channels that weight decay drove to nothing); their products are
denormal floats, which the CPU computes some 7x slower, and onnxruntime's
``session.set_denormal_as_zero`` does not reach the calling thread that runs a
one-thread session. The conversion proves the point: the copy must give
**bit-identical** outputs to the shipped file, at batch 1 and with three rows at
once, on a deterministic input, or nothing is written.

Written atomically, in order: the ONNX copy, the shipped file's own outputs
(``.ref.npz``) and a JSON sidecar (source sha256, converter version, what was
changed). At load, ``pipelines.model_check.open_verified`` has it reconverted
when the source changed and, every time, runs the stored input and compares
with the shipped outputs.
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
from configs.settings import Runtime
from pipelines.install.model_files import atomic_write, exclusive, lock_path
from pipelines.install.tflite_onnx import reference_input, symbolic_batch_io
from pipelines.model_check import (FORMAT_VERSION, PREPARE, ModelVerificationFailed,
                                   is_current, reference_path, sha256_file, sidecar_path)
from pipelines.runtime import onnx_session

log = logging.getLogger(__name__)

#: bump (in pipelines.model_check) when the rewrite or the sidecar contents change,
#: so old copies get rebuilt
CONVERTER_VERSION = FORMAT_VERSION["rebatch"]
#: one thread on the CPU: the shipped file as its authors ran it
_PLAIN = Runtime(device="cpu", intra_op_threads=1, inter_op_threads=1)


def _plain_session(data: bytes | str) -> Any:
    return onnx_session(data, _PLAIN)


def rebatch(model: Any, flush_below: float = 0.0) -> dict[str, int]:
    """Make the batch symbolic and zero weights under ``flush_below``, in place."""
    from onnx import numpy_helper

    g = model.graph
    batch = symbolic_batch_io(g)
    inits = {t.name: t for t in g.initializer}
    reshapes = flushed = 0
    for node in g.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue  # a Shape -> Gather -> Concat target already follows the batch
        t = inits[node.input[1]]
        shape = numpy_helper.to_array(t).copy()
        if shape.ndim == 1 and len(shape) > 1 and shape[0] == batch:
            shape[0] = 0  # 0: copy the input's dim 0
            t.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), t.name))
            reshapes += 1
    if flush_below > 0:
        for t in g.initializer:
            w = numpy_helper.to_array(t)
            if w.dtype != np.float32:
                continue
            tiny = (w != 0) & (np.abs(w) < flush_below)
            if tiny.any():
                t.CopyFrom(numpy_helper.from_array(np.where(tiny, np.float32(0), w), t.name))
                flushed += int(tiny.sum())
    return {"fixed_batch": batch, "reshapes_rewritten": reshapes, "weights_flushed": flushed}


def convert(source: Path, out: Path, name: str, flush_below: float = 0.0) -> dict[str, Any]:
    """Write the dynamic-batch copy of ``source`` at ``out`` with reference and sidecar."""
    import onnx

    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    model = onnx.load(str(source))
    changes = rebatch(model, flush_below)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    shipped, copy = _plain_session(str(source)), _plain_session(data)
    inp = shipped.get_inputs()[0]
    chw = tuple(int(d) for d in inp.shape[1:])
    # reference_input is channels-last in [-1, 1]; these graphs read NCHW
    x3 = np.ascontiguousarray(reference_input((3, chw[1], chw[2], chw[0])).transpose(0, 3, 1, 2))
    ref = [np.concatenate(r) for r in zip(*(shipped.run(None, {inp.name: x3[i:i + 1]})
                                            for i in range(3)), strict=True)]
    alone = [np.concatenate(r) for r in zip(*(copy.run(None, {inp.name: x3[i:i + 1]})
                                              for i in range(3)), strict=True)]
    together = copy.run(None, {inp.name: x3})
    for label, got in (("one row a call", alone), ("three rows at once", together)):
        for g, r in zip(got, ref, strict=True):
            if g.shape != r.shape or not np.array_equal(g, r):
                err = float(np.max(np.abs(g - r))) if g.shape == r.shape else float("inf")
                raise ModelVerificationFailed(
                    f"{name}: the dynamic-batch copy of {source.name} is not bit-identical to "
                    f"it ({label}: max |diff| {err:.3g})", {"model": name, "error": err})
    buf = io.BytesIO()
    np.savez(buf, input=x3, **{f"out_{i}": r for i, r in enumerate(ref)})
    meta = {
        "converter_version": CONVERTER_VERSION,
        "model": name,
        "source": source.name,
        "source_sha256": sha256_file(source),
        "flush_below": flush_below,
        **changes,
        "input": {"name": inp.name, "shape": ["N", *chw], "dtype": "float32"},
        "outputs": [o.name for o in shipped.get_outputs()],
        "max_abs_error_vs_source": 0.0,
        "converted_in_s": round(time.perf_counter() - t0, 2),
    }
    # model, then reference, then sidecar: a sidecar only describes complete files
    atomic_write(out, data)
    atomic_write(reference_path(out), buf.getvalue())
    atomic_write(sidecar_path(out), json.dumps(meta, indent=1).encode())
    log.info("converted %s -> %s (batch made dynamic, %d tiny weights zeroed, bit-identical) "
             "in %.1f s", source, out, changes["weights_flushed"], meta["converted_in_s"])
    return meta


def ensure_converted(source: Path, out: Path, name: str, flush_below: float = 0.0,
                     force: bool = False) -> None:
    """Convert once per models directory: concurrent starters wait for the first."""
    try:
        with exclusive(lock_path(out)):
            if force or not is_current(out, source, "rebatch", flush_below=flush_below):
                convert(source, out, name, flush_below)
    except OSError as exc:
        raise ModelNotInstalled(
            f"model '{name}' is not converted and {out} cannot be written ({exc}); run "
            f"`{PREPARE}` where the models directory is writable",
            {"model": name, "missing_file": str(out)}) from exc
