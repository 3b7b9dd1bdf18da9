"""The converted dlib ResNet matches dlib itself on real LFW face chips.

The model is converted once per session into a temporary models dir; chips
are cut the way production cuts them for this model (dlib HOG box, 5-point
shape, ``dlib.get_face_chip`` at 150 px / padding 0.25) from a fixed,
evenly spaced sample of the LFW development images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
ort = pytest.importorskip("onnxruntime")
face_recognition_models = pytest.importorskip("face_recognition_models")

from pipelines.errors import ModelNotInstalled, Unavailable, ValidationError  # noqa: E402
from configs.settings import Runtime  # noqa: E402
from pipelines.embed_dlib import ONNX_NAME, DlibNativeEmbedder, DlibOnnxEmbedder  # noqa: E402
from pipelines.install import dlib_convert  # noqa: E402
from pipelines.model_check import ModelVerificationFailed  # noqa: E402
from pipelines.models import DLIB_CHIP, ModelContext  # noqa: E402

LFW = Path(__file__).resolve().parents[2].parent / "shared" / "faces" / "lfw-dev" / "images"
N_SAMPLE = 60
PARITY_MIN_COSINE = 0.9999
#: these tests hold the float32 conversion to dlib; its int8 form is tested in test_quantized
FP32 = Runtime(precision="fp32", engine="onnxruntime")


def _five_point_predictor():
    return dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())


def _hog_chip(detector, predictor, path: Path) -> np.ndarray | None:
    """The production cut for this model: largest HOG face, 5-point shape, 150 px chip."""
    img = dlib.load_rgb_image(str(path))
    boxes = detector(img, 1)
    if not boxes:
        return None
    box = max(boxes, key=lambda r: r.area())
    return dlib.get_face_chip(img, predictor(img, box), size=DLIB_CHIP.size,
                              padding=DLIB_CHIP.padding)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding a fresh conversion, made through the embedder's own load()."""
    path = tmp_path_factory.mktemp("models")
    DlibOnnxEmbedder(ModelContext(models_dir=path, runtime=FP32)).load()
    return path


@pytest.fixture(scope="session")
def onnx_embedder(models_dir: Path) -> DlibOnnxEmbedder:
    emb = DlibOnnxEmbedder(ModelContext(models_dir=models_dir, runtime=FP32))
    emb.load()
    return emb


@pytest.fixture(scope="session")
def native_embedder() -> DlibNativeEmbedder:
    emb = DlibNativeEmbedder()
    emb.load()
    return emb


@pytest.fixture(scope="session")
def lfw_chips() -> np.ndarray:
    """dlib face chips of the largest HOG face in ~60 evenly spaced LFW images."""
    if not LFW.is_dir():
        pytest.skip(f"LFW sample images not found at {LFW}")
    paths = sorted(LFW.glob("*/*.jpg"))
    step = max(len(paths) // N_SAMPLE, 1)
    detector, predictor = dlib.get_frontal_face_detector(), _five_point_predictor()
    chips = [c for c in (_hog_chip(detector, predictor, p) for p in paths[::step][:N_SAMPLE])
             if c is not None]
    assert len(chips) >= 50, f"HOG found faces in only {len(chips)} of {N_SAMPLE} LFW images"
    return np.stack(chips)


def test_reader_parses_whole_file_into_the_known_architecture() -> None:
    net = dlib_convert.read_dat(dlib_convert.default_dat_path())
    kinds = [type(layer).__name__ for layer in net.layers]
    assert net.n_params == 5_614_592
    assert (kinds.count("Conv"), kinds.count("Affine"), kinds.count("AddPrev")) == (29, 29, 14)
    assert net.size == (150, 150)
    np.testing.assert_allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)
    assert net.distance_threshold == pytest.approx(0.6)


def test_conversion_writes_model_and_sidecar(models_dir: Path,
                                             onnx_embedder: DlibOnnxEmbedder) -> None:
    onnx_path = models_dir / ONNX_NAME
    meta = json.loads(dlib_convert.sidecar_path(onnx_path).read_text())
    assert meta["source_sha256"] == dlib_convert.sha256_file(dlib_convert.default_dat_path())
    assert len(meta["reference_embedding"]) == 128
    assert onnx_embedder.verified_cosine is not None and onnx_embedder.verified_cosine >= 0.9999
    # no temp files are left behind by the atomic writes
    assert not [p for p in models_dir.iterdir() if p.name.endswith(".tmp")]
    sess = onnx_embedder.session
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [150, 150, 3]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert out.shape[1] == 128


def test_onnx_matches_dlib_native_on_lfw_chips(lfw_chips: np.ndarray,
                                               onnx_embedder: DlibOnnxEmbedder,
                                               native_embedder: DlibNativeEmbedder) -> None:
    ours = onnx_embedder.embed(lfw_chips)
    ref = native_embedder.embed(lfw_chips)
    assert ours.shape == ref.shape == (len(lfw_chips), 128)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ours * ref, axis=1)
    assert cos.min() >= PARITY_MIN_COSINE, f"worst chip cosine {cos.min():.7f}"


def test_raw_output_keeps_dlib_scale(lfw_chips: np.ndarray, onnx_embedder: DlibOnnxEmbedder,
                                     native_embedder: DlibNativeEmbedder) -> None:
    # dlib's 0.6 distance threshold is defined on the raw (unnormalised) descriptors
    ours = onnx_embedder.embed_raw(lfw_chips[:4])
    ref = native_embedder.embed_raw(lfw_chips[:4])
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_batch_equals_single(lfw_chips: np.ndarray, onnx_embedder: DlibOnnxEmbedder) -> None:
    chips = lfw_chips[:16]
    batched = onnx_embedder.embed(chips)
    single = np.concatenate([onnx_embedder.embed(c[None]) for c in chips])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert onnx_embedder.embed(chips[:0]).shape == (0, 128)


def test_dlib_threshold_separates_lfw_pairs(onnx_embedder: DlibOnnxEmbedder) -> None:
    """On raw outputs, dlib's own rule (distance < 0.6 = same person) holds on LFW pairs."""
    lines = (LFW.parent / "pairsDevTest.txt").read_text().splitlines()
    n = int(lines[0])
    picked = lines[1:n + 1][::50] + lines[n + 1:][::50]  # 10 same + 10 different, spread out
    detector, predictor = dlib.get_frontal_face_detector(), _five_point_predictor()

    def chip(name: str, idx: str) -> np.ndarray:
        path = LFW / name / f"{name}_{int(idx):04d}.jpg"
        c = _hog_chip(detector, predictor, path)
        assert c is not None, f"no HOG face in {path}"
        return c

    firsts, seconds, same = [], [], []
    for line in picked:
        f = line.split("\t")
        a, b = ((f[0], f[1]), (f[0], f[2])) if len(f) == 3 else ((f[0], f[1]), (f[2], f[3]))
        firsts.append(chip(*a))
        seconds.append(chip(*b))
        same.append(len(f) == 3)
    dist = np.linalg.norm(onnx_embedder.embed_raw(np.stack(firsts))
                          - onnx_embedder.embed_raw(np.stack(seconds)), axis=1)
    predicted = dist < 0.6
    accuracy = float(np.mean(predicted == np.array(same)))
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f} at dlib's 0.6 threshold, distances {dist}"


def test_rejects_wrong_chip_shape(onnx_embedder: DlibOnnxEmbedder) -> None:
    with pytest.raises(ValidationError):
        onnx_embedder.embed(np.zeros((1, 112, 112, 3), dtype=np.uint8))


def test_provider_cpu_and_auto(models_dir: Path) -> None:
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    expected = {"cpu": "CPUExecutionProvider",
                "auto": "CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider"}
    for device, provider in expected.items():
        emb = DlibOnnxEmbedder(ModelContext(models_dir=models_dir,
                                            runtime=Runtime(device=device, precision="fp32")))
        emb.load()
        assert emb.session.get_providers()[0] == provider
        assert emb.embed(np.zeros((1, 150, 150, 3), dtype=np.uint8)).shape == (1, 128)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this machine has CUDA")
def test_provider_cuda_unavailable_is_clear(models_dir: Path) -> None:
    emb = DlibOnnxEmbedder(ModelContext(models_dir=models_dir,
                                        runtime=Runtime(device="cuda")))
    with pytest.raises(Unavailable, match="CUDAExecutionProvider"):
        emb.load()
    with pytest.raises(Unavailable, match="cuda"):
        DlibNativeEmbedder(ModelContext(runtime=Runtime(device="cuda"))).load()


def test_absent_dat_is_model_not_installed(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / dlib_convert.DAT_NAME
    for cls in (DlibOnnxEmbedder, DlibNativeEmbedder):
        with pytest.raises(ModelNotInstalled, match="nowhere") as info:
            cls(ModelContext(models_dir=tmp_path), dat_path=missing).load()
        assert info.value.details["missing_file"] == str(missing)
    assert not (tmp_path / ONNX_NAME).exists()


def test_corrupt_dat_is_a_clear_error(tmp_path: Path) -> None:
    real = dlib_convert.default_dat_path()
    corrupt = tmp_path / dlib_convert.DAT_NAME
    corrupt.write_bytes(real.read_bytes()[: 5_000_000])  # a truncated download
    with pytest.raises(dlib_convert.DlibFormatError, match="unexpected end of file"):
        DlibOnnxEmbedder(ModelContext(models_dir=tmp_path / "m"), dat_path=corrupt).load()
    with pytest.raises(ModelNotInstalled, match="not a readable dlib network"):
        DlibNativeEmbedder(ModelContext(models_dir=tmp_path / "m"), dat_path=corrupt).load()
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"\x01\x01\x01\x05hello" + bytes(100))
    with pytest.raises(dlib_convert.DlibFormatError, match="not a metric network"):
        dlib_convert.read_dat(garbage)


def test_tampered_model_is_rebuilt_or_rejected(models_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "models"
    shutil.copytree(models_dir, work)
    sidecar = dlib_convert.sidecar_path(work / ONNX_NAME)
    meta = json.loads(sidecar.read_text())
    meta["reference_embedding"] = [-v for v in meta["reference_embedding"]]
    sidecar.write_text(json.dumps(meta))

    # verify() alone refuses a model that disagrees with its reference ...
    session = ort.InferenceSession(str(work / ONNX_NAME), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelVerificationFailed, match="cosine"):
        dlib_convert.verify(session, work / ONNX_NAME)

    # ... and the embedder heals a damaged model by reconverting it from the .dat
    emb = DlibOnnxEmbedder(ModelContext(models_dir=work, runtime=FP32))
    emb.load()
    assert emb.verified_cosine is not None and emb.verified_cosine >= 0.9999
    assert json.loads(sidecar.read_text())["reference_embedding"] != meta["reference_embedding"]

    # a truncated ONNX file that onnxruntime cannot even open is rebuilt as well
    onnx_path = work / ONNX_NAME
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    emb = DlibOnnxEmbedder(ModelContext(models_dir=work, runtime=FP32))
    emb.load()
    assert emb.verified_cosine >= 0.9999
    assert onnx_path.stat().st_size > 20_000_000


def test_cli_converts(tmp_path: Path) -> None:
    out = tmp_path / "cli" / "model.onnx"
    assert dlib_convert.main(["--out", str(out)]) == 0
    assert out.is_file() and dlib_convert.sidecar_path(out).is_file()
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o644)
