"""int8 and bfloat16 embedders: which engine and precision a runtime picks, the int8
and OpenVINO forms on real faces, and the clean fall-back to float32 (and to
onnxruntime) when a form cannot be had."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from configs.settings import ImageLimits, Runtime, Settings
from pipelines.embed_dlib import ONNX_NAME, DlibOnnxEmbedder
from pipelines.embed_mfn512 import Mfn512Embedder
from pipelines.model_check import int8_path, sidecar_path
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines import openvino_session
from pipelines.errors import Unavailable
from pipelines.runtime import cpu_engine, cpu_flags, precision_for
from pipelines.stages import DetectionStage, DetectRequest

MODELS = Path("data/models")
LFW = Path(__file__).resolve().parents[2].parent / "shared" / "faces" / "lfw-dev" / "images"
CPU = "CPUExecutionProvider"


def _pick(precision: str, flags: set[str], *, engine: str = "openvino", provider: str = CPU,
          has_int8: bool = True, has_bf16: bool = True) -> str:
    return precision_for(Runtime(precision=precision), provider, engine=engine,
                         has_int8=has_int8, has_bf16=has_bf16, flags=flags)


def test_precision_setting_and_cpu_flags(tmp_path: Path) -> None:
    assert Settings().runtime.precision == "auto" and Settings().runtime.engine == "auto"
    assert _pick("fp32", {"avx512_vnni", "amx_bf16"}) == "fp32"
    assert _pick("int8", set()) == "int8"  # asked for: even without VNNI
    assert _pick("int8", set(), has_int8=False) == "fp32"  # a model without the form
    assert _pick("bf16", set()) == "bf16"  # OpenVINO computes it in float32 without AMX
    assert _pick("bf16", set(), engine="onnxruntime") == "fp32"  # no bf16 kernels there
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert _pick("auto", {"avx2", flag}) == "int8"
        assert _pick("auto", {"avx2", flag}, has_int8=False) == "fp32"
    for flag in ("amx_bf16", "avx512_bf16"):
        assert _pick("auto", {"avx512_vnni", flag}) == "bf16"
        # without OpenVINO, or for a model that loses accuracy in bf16: int8 where kept
        assert _pick("auto", {"avx512_vnni", flag}, engine="onnxruntime") == "int8"
        assert _pick("auto", {"avx512_vnni", flag}, has_bf16=False) == "int8"
    assert _pick("auto", {"avx2", "avx512f"}) == "fp32"
    # the CUDA provider keeps float32 whatever the setting
    for p in ("int8", "bf16", "auto"):
        assert _pick(p, {"avx512_vnni", "amx_bf16"}, provider="CUDAExecutionProvider") == "fp32"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx_vnni\n")
    assert {"avx2", "avx_vnni"} <= cpu_flags(str(info))
    assert cpu_flags(str(tmp_path / "none")) == set()  # unreadable: no int8 under auto
    with pytest.raises(ValueError):
        Runtime(precision="int4")
    with pytest.raises(ValueError):
        Runtime(engine="tensorrt")


def test_engine_setting(monkeypatch) -> None:
    assert cpu_engine(Runtime(engine="onnxruntime")) == "onnxruntime"
    assert cpu_engine(Runtime(engine="auto")) == (
        "openvino" if openvino_session.available() else "onnxruntime")
    # without the package: auto falls back, an explicit openvino fails with what to do
    monkeypatch.setattr(openvino_session, "available", lambda: False)
    assert cpu_engine(Runtime(engine="auto")) == "onnxruntime"
    with pytest.raises(Unavailable, match="pip install openvino"):
        cpu_engine(Runtime(engine="openvino"))


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """dlib chips of 24 LFW dev faces, cut as requests cut them."""
    if not LFW.is_dir():
        pytest.skip(f"LFW dev photos not found at {LFW}")
    paths = sorted(LFW.glob("*/*.jpg"))[::200][:24]
    stage = DetectionStage(ModelContext(models_dir=MODELS), ImageLimits())
    res = stage.run([DetectRequest(p.read_bytes(), "blazeface", chip_specs=(DLIB_CHIP,))
                     for p in paths])
    out = np.stack([r.chips[DLIB_CHIP.key][0] for r in res if r.faces])
    assert len(out) >= 20
    return out


def _dlib(precision: str, models: Path = MODELS, engine: str = "onnxruntime"
          ) -> DlibOnnxEmbedder:
    emb = DlibOnnxEmbedder(ModelContext(models_dir=models, runtime=Runtime(
        precision=precision, engine=engine)))
    emb.load()
    return emb


def test_int8_dlib_stays_with_float32_on_real_faces(chips: np.ndarray) -> None:
    if not int8_path(MODELS / ONNX_NAME).is_file():
        pytest.skip("no int8 dlib in data/models: run python -m pipelines.install.prepare")
    fp32, int8 = _dlib("fp32"), _dlib("int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert fp32.info()["precision"] == "fp32" and int8.info()["precision"] == "int8"
    a, b = fp32.embed(chips), int8.embed(chips)
    assert b.shape == a.shape and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99, f"worst face cosine {cos.min():.4f}"
    # int8 vectors still find their own float32 vectors (a float32 gallery keeps answering)
    assert (np.argmax(b @ a.T, axis=1) == np.arange(len(a))).all()
    meta = json.loads(sidecar_path(int8_path(MODELS / ONNX_NAME)).read_text())
    assert meta["calibration"].startswith("LFW View 1 DevTrain")


def test_fused_default_reports_each_part() -> None:
    from pipelines.registry import EMBEDDERS

    s = Settings()
    ctx = ModelContext(models_dir=MODELS, fusion_weights=s.fusion_weights,
                       runtime=Runtime(precision="int8", engine="onnxruntime"))
    fused = EMBEDDERS["dlib+mfn512"](ctx)
    fused.load()
    want = "int8" if int8_path(MODELS / ONNX_NAME).is_file() else "fp32"
    assert fused.precision == fused.info()["precision"] == f"{want}+fp32"
    assert fused.info()["engine"] == fused.engine != ""


def test_models_that_keep_no_int8_form_stay_float32() -> None:
    assert not Mfn512Embedder.has_int8
    emb = Mfn512Embedder(ModelContext(models_dir=MODELS, runtime=Runtime(
        precision="int8", engine="onnxruntime")))
    emb.load()
    assert emb.precision == "fp32" and emb.engine == CPU


def test_missing_or_damaged_int8_falls_back_to_float32(tmp_path: Path, chips: np.ndarray,
                                                       monkeypatch) -> None:
    work = tmp_path / "models"
    work.mkdir()
    for name in (ONNX_NAME, sidecar_path(Path(ONNX_NAME)).name):
        shutil.copy(MODELS / name, work / name)
    # no int8 file and no calibration photos to make one: float32, and it embeds
    monkeypatch.setenv("FACEFLEET_CALIBRATION_PHOTOS", str(tmp_path / "no-photos"))
    emb = _dlib("int8", work)
    assert emb.precision == "fp32"
    assert emb.embed(chips[:2]).shape == (2, 128)
    if not int8_path(MODELS / ONNX_NAME).is_file():
        return
    # an int8 file that is not the one its sidecar pins is refused, not run
    q = int8_path(MODELS / ONNX_NAME)
    for src in (q, sidecar_path(q), q.with_suffix(".ref.npz")):
        shutil.copy(src, work / src.name)
    damaged = work / q.name
    damaged.write_bytes(damaged.read_bytes()[:-16] + bytes(16))
    assert _dlib("int8", work).precision == "fp32"


needs_openvino = pytest.mark.skipif(not openvino_session.available(),
                                    reason="openvino is not installed")


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_stays_with_onnxruntime_on_real_faces(chips: np.ndarray, precision: str
                                                       ) -> None:
    ref = _dlib("fp32")
    ov = _dlib(precision, engine="openvino")
    assert ov.engine == openvino_session.PROVIDER and ov.precision == precision
    a, b = ref.embed(chips), ov.embed(chips)
    assert b.shape == a.shape and b.dtype == np.float32
    cos = (a * b).sum(1)
    # float32 on OpenVINO is the same function; bf16 keeps the bar int8 keeps
    assert cos.min() >= (0.9999 if precision == "fp32" else 0.99), f"worst {cos.min():.5f}"
    assert (np.argmax(b @ a.T, axis=1) == np.arange(len(a))).all()
    # batches of any size, one face, none: the same vectors as face by face
    one = np.concatenate([ov.embed(chips[i:i + 1]) for i in range(5)])
    assert np.allclose(one, b[:5], atol=2e-3)
    assert ov.embed(chips[:0]).shape == (0, 128)


@needs_openvino
def test_openvino_session_is_safe_across_threads(chips: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ov = Mfn512Embedder(ModelContext(models_dir=MODELS, runtime=Runtime(
        precision="fp32", engine="openvino")))
    ref = Mfn512Embedder(ModelContext(models_dir=MODELS, runtime=Runtime(
        precision="fp32", engine="onnxruntime")))
    x = np.ascontiguousarray(chips[:, 19:131, 19:131])  # 112x112 crops of real faces
    want = ref.embed(x)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: ov.embed(x[i % len(x):i % len(x) + 3]), range(24)))
    for i, g in enumerate(got):
        assert np.allclose(g, want[i % len(x):i % len(x) + 3], atol=1e-3)


@needs_openvino
def test_openvino_that_strays_falls_back_to_onnxruntime(monkeypatch) -> None:
    from pipelines import model_check

    # a check that no engine could pass: the model still loads, on onnxruntime
    monkeypatch.setattr(model_check, "INT8_MIN_COSINE", 1.5)
    emb = _dlib("bf16", engine="openvino")
    assert emb.engine == CPU and emb.precision == "fp32"
