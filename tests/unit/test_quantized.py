"""int8 embedders: which precision a runtime picks, the int8 dlib on real faces, and
the clean fall-back to float32 when the int8 form cannot be had."""

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
from pipelines.runtime import cpu_flags, int8_wanted
from pipelines.stages import DetectionStage, DetectRequest

MODELS = Path("data/models")
LFW = Path(__file__).resolve().parents[2].parent / "shared" / "faces" / "lfw-dev" / "images"
CPU = "CPUExecutionProvider"


def test_precision_setting_and_cpu_flags(tmp_path: Path) -> None:
    assert Settings().runtime.precision == "auto"
    assert not int8_wanted(Runtime(precision="fp32"), CPU, {"avx512_vnni"})
    assert int8_wanted(Runtime(precision="int8"), CPU, set())  # asked for: even without VNNI
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_wanted(Runtime(precision="auto"), CPU, {"avx2", flag})
    assert not int8_wanted(Runtime(precision="auto"), CPU, {"avx2", "avx512f"})
    # the CUDA provider keeps float32 whatever the setting
    for p in ("int8", "auto"):
        assert not int8_wanted(Runtime(precision=p), "CUDAExecutionProvider", {"avx512_vnni"})
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx_vnni\n")
    assert {"avx2", "avx_vnni"} <= cpu_flags(str(info))
    assert cpu_flags(str(tmp_path / "none")) == set()  # unreadable: no int8 under auto
    with pytest.raises(ValueError):
        Runtime(precision="int4")


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


def _dlib(precision: str, models: Path = MODELS) -> DlibOnnxEmbedder:
    emb = DlibOnnxEmbedder(ModelContext(models_dir=models, runtime=Runtime(precision=precision)))
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
                       runtime=Runtime(precision="int8"))
    fused = EMBEDDERS["dlib+mfn512"](ctx)
    fused.load()
    want = "int8" if int8_path(MODELS / ONNX_NAME).is_file() else "fp32"
    assert fused.precision == fused.info()["precision"] == f"{want}+fp32"


def test_models_that_keep_no_int8_form_stay_float32() -> None:
    assert not Mfn512Embedder.has_int8
    emb = Mfn512Embedder(ModelContext(models_dir=MODELS, runtime=Runtime(precision="int8")))
    emb.load()
    assert emb.precision == "fp32"


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
