"""float16 embedders for the CUDA provider: the copy is made, pinned and referenced; on
real LFW faces, run in float16 by OpenVINO on the CPU, it stays with float32; the
policy picks it only on CUDA for a model that keeps it; a damaged or unobtainable copy
leaves the model in float32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import pipelines.install  # noqa: F401 - registers the fp16 converter, as a replica does
from configs.settings import ImageLimits, Runtime
from pipelines import model_check, openvino_session
from pipelines.embed_dlib import ONNX_NAME, DlibOnnxEmbedder
from pipelines.embed_mfn512 import Mfn512Embedder
from pipelines.model_check import (FORMAT_VERSION, FP16_MIN_COSINE, ONNXRUNTIME, fp16_path,
                                   int8_path, is_current, load_sidecar, open_fp16,
                                   reference_path, sha256_file, sidecar_path)
from pipelines.models import ModelContext
from pipelines.registry import EMBEDDERS
from pipelines.runtime import onnx_session, precision_for
from pipelines.stages import DetectionStage, DetectRequest

MODELS = Path("data/models")
LFW = Path(__file__).resolve().parents[2].parent / "shared" / "faces" / "lfw-dev" / "images"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
NETS = {"dlib": (DlibOnnxEmbedder, ONNX_NAME), "mfn512": (Mfn512Embedder, "mfn512.onnx")}
_RT = Runtime(device="cpu")


def _copy_fp32(name: str, work: Path) -> Path:
    """The verified float32 file of ``name`` in ``work``, with the int8 reference's real
    faces where the model keeps an int8 form (dlib; the others' references are cut from
    the DevTrain photos by the converter)."""
    fp32 = MODELS / NETS[name][1]
    for src in (fp32, sidecar_path(fp32)):
        if not src.is_file():
            pytest.skip(f"{src} missing: run python -m pipelines.install.prepare")
        shutil.copy(src, work / src.name)
    if NETS[name][0].has_int8:
        ref = reference_path(int8_path(fp32))
        assert ref.is_file(), f"{ref} missing: run python -m pipelines.install.prepare"
        shutil.copy(ref, work / ref.name)
    return work / fp32.name


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Each network's float32 file with its float16 copy made beside it (by the load path)."""
    out = {}
    for name in NETS:
        work = tmp_path_factory.mktemp(name)
        fp32 = _copy_fp32(name, work)
        assert open_fp16(fp32, name, _RT) is not None
        out[name] = fp32
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_fp16_copy_is_made_pinned_and_referenced(made: dict[str, Path], name: str) -> None:
    fp32 = made[name]
    half = fp16_path(fp32)
    assert half.name == fp32.name.replace(".onnx", ".fp16.onnx")
    meta = load_sidecar(half)
    assert meta["converter_version"] == FORMAT_VERSION["fp16"]
    assert meta["source_sha256"] == sha256_file(fp32) and meta["sha256"] == sha256_file(half)
    assert meta["onnxruntime"] == ONNXRUNTIME and meta["kept_float32"] == []
    assert meta["reference_min_cosine_cpu"] >= FP16_MIN_COSINE
    assert is_current(half, fp32, "fp16", onnxruntime=ONNXRUNTIME)
    # weights are float16; inputs and outputs keep their float32 (dlib: uint8) types
    g, src = onnx.load(str(half)).graph, onnx.load(str(fp32)).graph
    assert {t.data_type for t in g.initializer if t.dims and len(t.dims) > 1} == {
        onnx.TensorProto.FLOAT16}
    io = lambda graph: [(v.name, v.type.tensor_type.elem_type)  # noqa: E731
                        for v in (*graph.input, *graph.output)]
    assert io(g) == io(src)
    assert half.stat().st_size < 0.6 * fp32.stat().st_size
    # the reference: real faces (the int8 reference's, else cut from DevTrain photos)
    # and the float32 outputs for them
    assert "DevTrain faces" in meta["reference"]
    with np.load(reference_path(half)) as ref:
        assert len(ref["input"]) == 8
        if int8_path(fp32).with_suffix(".ref.npz").is_file():
            with np.load(reference_path(int8_path(fp32))) as faces:
                assert np.array_equal(ref["input"], faces["input"][:8])
        s = onnx_session(str(fp32), _RT)
        want = np.concatenate([s.run(None, {s.get_inputs()[0].name: x[None]})[0]
                               for x in ref["input"]])
        assert np.allclose(ref["out_0"], want, atol=1e-5)
    # a copy made by another onnxruntime is made again at load
    stale = dict(meta, onnxruntime="onnxruntime 0.0")
    sidecar_path(half).write_text(json.dumps(stale))
    assert not is_current(half, fp32, "fp16", onnxruntime=ONNXRUNTIME)
    assert open_fp16(fp32, name, _RT) is not None
    assert load_sidecar(half)["onnxruntime"] == ONNXRUNTIME


@pytest.fixture(scope="module")
def chips() -> dict[str, np.ndarray]:
    """Each network's chips of 16 LFW dev faces, cut as requests cut them."""
    if not LFW.is_dir():
        pytest.skip(f"LFW dev photos not found at {LFW}")
    paths = sorted(LFW.glob("*/*.jpg"))[::300][:16]
    specs = tuple(cls.chip for cls, _ in NETS.values())
    res = DetectionStage(ModelContext(models_dir=MODELS), ImageLimits()).run(
        [DetectRequest(p.read_bytes(), "blazeface", chip_specs=specs) for p in paths])
    out = {name: np.stack([r.chips[cls.chip.key][0] for r in res if r.faces])
           for name, (cls, _) in NETS.items()}
    assert all(len(c) >= 12 for c in out.values())
    return out


@pytest.mark.skipif(not openvino_session.available(), reason="openvino is not installed")
@pytest.mark.parametrize("name", list(NETS))
def test_fp16_on_openvino_stays_with_float32_on_real_faces(made: dict[str, Path],
                                                           chips: dict[str, np.ndarray],
                                                           name: str) -> None:
    cls, _ = NETS[name]
    ref = cls(ModelContext(models_dir=MODELS, runtime=Runtime(precision="fp32",
                                                              engine="onnxruntime")))
    want = ref.embed(chips[name])
    half = openvino_session.OpenVinoSession(fp16_path(made[name]), f16=True)
    got = half.run(None, {half.get_inputs()[0].name: cls.preprocess(chips[name])})[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    cos = (got * want).sum(1)
    # where the CPU has float16 units OpenVINO computes in float16, else in float32
    # from the float16 weights: either way the file keeps the bar on every face
    assert cos.min() >= FP16_MIN_COSINE, f"worst face {cos.min():.6f} ({half.inference_precision})"
    assert (np.argmax(got @ want.T, axis=1) == np.arange(len(want))).all()


def _pick(precision: str, provider: str, has_fp16: bool = True, engine: str = "openvino"
          ) -> str:
    return precision_for(Runtime(precision=precision), provider, engine=engine,
                         has_int8=True, has_bf16=True, has_fp16=has_fp16,
                         flags={"avx512_vnni", "amx_bf16"})


def test_policy_fp16_only_on_cuda_for_models_that_keep_it() -> None:
    assert Runtime(precision="fp16").precision == "fp16"
    assert _pick("fp16", CUDA) == "fp16"
    assert _pick("fp16", CUDA, has_fp16=False) == "fp32"
    for other in ("auto", "fp32", "int8", "bf16"):  # auto keeps float32 on CUDA
        assert _pick(other, CUDA) == "fp32"
    for engine in ("openvino", "onnxruntime"):  # no float16 kernels on the CPU: float32
        assert _pick("fp16", CPU, engine=engine) == "fp32"
    # none is kept until a GPU run of bench/gpu_check.py shows parity
    assert not any(type(EMBEDDERS[n](ModelContext(models_dir=MODELS))).has_fp16
                   for n in ("dlib", "mobilefacenet", "mfn512"))


def test_fp16_asked_for_on_the_cpu_loads_float32() -> None:
    kept = type("KeptDlib", (DlibOnnxEmbedder,), {"has_fp16": True})
    emb = kept(ModelContext(models_dir=MODELS, runtime=Runtime(precision="fp16",
                                                               engine="onnxruntime")))
    emb.load()
    assert (emb.precision, emb.engine) == ("fp32", CPU)


def test_damaged_or_unobtainable_fp16_is_refused(made: dict[str, Path], tmp_path: Path,
                                                  monkeypatch, caplog) -> None:
    fp32 = _copy_fp32("dlib", tmp_path)
    half = fp16_path(made["dlib"])
    for src in (half, sidecar_path(half), reference_path(half)):
        shutil.copy(src, tmp_path / src.name)
    ok = open_fp16(fp32, "dlib", _RT)
    assert ok is not None and ok.get_providers()[0] == CPU
    # bytes changed after the sidecar pinned them: refused, not run, and not remade
    # by a process that does not convert (the model stays float32)
    monkeypatch.setattr(model_check, "_CONVERTERS", {})
    damaged = tmp_path / half.name
    damaged.write_bytes(damaged.read_bytes()[:-16] + bytes(16))
    assert open_fp16(fp32, "dlib", _RT) is None
    assert "sha256" in caplog.text and "running float32" in caplog.text
    # no copy at all and no converter: float32 too
    for p in (damaged, sidecar_path(damaged), reference_path(damaged)):
        p.unlink()
    assert open_fp16(fp32, "dlib", _RT) is None
    assert not damaged.exists()
