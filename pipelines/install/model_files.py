"""Writing model files: atomic writes, one converter at a time.

Every converted model (dlib's ResNet, the TFLite models, the rebatched ONNX
models) and every fetched npm file is written through these helpers: readers
see either the old file or the whole new one, and replicas that start together
wait for the first one to finish converting instead of racing it. Reading and
checking the files is request-time code (``pipelines.model_check``).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users' replicas must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(f".{model_path.name}.lock")


def form_sidecar(version: int, name: str, source: Path, data: bytes,
                 **entries: Any) -> dict[str, Any]:
    """The sidecar of a form made from ``source``: what pins it to its float32 file and
    to its own bytes, then the form's own ``entries``."""
    import hashlib

    from pipelines.model_check import sha256_file

    return {"converter_version": version, "model": name, "source": Path(source).name,
            "source_sha256": sha256_file(source), "sha256": hashlib.sha256(data).hexdigest(),
            **entries}


def write_form(out: Path, data: bytes, reference: bytes, meta: dict[str, Any]) -> None:
    """A model form (an int8 or float16 copy) with its reference and sidecar, in the
    order a load trusts them: the file, the reference, then the sidecar naming both."""
    from pipelines.model_check import reference_path, sidecar_path

    atomic_write(out, data)
    atomic_write(reference_path(out), reference)
    atomic_write(sidecar_path(out), json.dumps(meta, indent=1).encode())


def ensure_form(kind: str, what: str, convert: Callable[[Path, Path, str], Any], source: Path,
                out: Path, name: str, force: bool = False, **options: Any) -> None:
    """Make ``out`` (the ``kind`` form of ``source``) once per models directory:
    concurrent starters wait for the first; an unwritable directory is a clear error."""
    from pipelines.errors import ModelNotInstalled
    from pipelines.model_check import PREPARE, is_current

    try:
        with exclusive(lock_path(out)):
            if force or not is_current(out, source, kind, **options):
                convert(source, out, name)
    except OSError as exc:
        raise ModelNotInstalled(
            f"model '{name}': the {what} form is not made and {out} cannot be written "
            f"({exc}); run `{PREPARE}` where the models directory is writable",
            {"model": name, "missing_file": str(out)}) from exc


def checked_reference(source: Path, data: bytes, x: Any, bar: float, name: str,
                      what: str) -> tuple[Any, bytes]:
    """Run the float32 file ``source`` and its new form ``data`` on the reference inputs
    ``x`` (one at a time, on the CPU); raise unless every output's cosine to float32 is
    at least ``bar``. Returns the cosines and the reference (``.ref.npz``) bytes."""
    import io

    import numpy as np

    from configs.settings import Runtime
    from pipelines.model_check import ModelVerificationFailed, int8_cosines
    from pipelines.runtime import onnx_session

    cpu = Runtime(device="cpu", intra_op_threads=1)
    fp32, form = onnx_session(str(source), cpu), onnx_session(data, cpu)
    feed = fp32.get_inputs()[0].name
    y = np.concatenate([fp32.run(None, {feed: x[i:i + 1]})[0] for i in range(len(x))])
    cos = int8_cosines(form, x, y)
    if not cos.min() >= bar:  # also catches NaN
        raise ModelVerificationFailed(
            f"{name}: the {what} copy strays from float32 (cosine {cos.min():.5f} < {bar}) "
            "on a reference face", {"model": name})
    buf = io.BytesIO()
    np.savez(buf, input=x, out_0=y)
    return cos, buf.getvalue()
