"""MobileFaceNet: the converted ONNX model against TFLite on real faces, its files
(pinned sha256, npm fetch) and its alignment.

The model files are the ones ``make install`` fetched and converted into
``data/models``; tests that damage files work on copies in a temp directory.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from configs.settings import ImageLimits, Runtime
from bench.evaluate import LFW, FACES
from pipelines.errors import ErrorCode, ModelNotInstalled, ValidationError
from pipelines.install import npm_assets, tflite_onnx
from pipelines.align import warp5_points
from pipelines.embed_mobilefacenet import ASSET, CHIP, MobileFaceNetEmbedder, preprocess
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines.stages import DetectionStage, DetectRequest
from pipelines.types import ChipSpec

MODELS = Path("data/models")


@pytest.fixture(scope="module")
def mfn() -> MobileFaceNetEmbedder:
    # the converted file itself, as onnxruntime runs it in float32: what these tests
    # check is the conversion (OpenVINO and bfloat16 are tested in test_quantized)
    emb = MobileFaceNetEmbedder(ModelContext(models_dir=MODELS, runtime=Runtime(precision="fp32",
                                                                 engine="onnxruntime")))
    emb.load()
    return emb


@pytest.fixture(scope="module")
def detection() -> DetectionStage:
    return DetectionStage(ModelContext(models_dir=MODELS), ImageLimits())


@pytest.fixture(scope="module")
def chips(detection) -> np.ndarray:
    """warp5 chips of 16 different LFW people (the largest face of each photo)."""
    people = sorted(p for p in (LFW / "images").iterdir() if p.is_dir())[::180][:16]
    reqs = [DetectRequest(sorted(p.glob("*.jpg"))[0].read_bytes(), "blazeface",
                          chip_specs=(CHIP,)) for p in people]
    out = [r.chips[CHIP.key][0] for r in detection.run(reqs)]
    assert len(out) == 16
    return np.stack(out)


def test_onnx_matches_tflite_on_real_faces(mfn, chips):
    x = preprocess(chips)
    ref = np.concatenate([  # the .tflite takes exactly two faces per call
        tflite_onnx.tflite_outputs(mfn.tflite_path, x[i:i + 2])["embeddings"]
        for i in range(0, len(x), 2)])
    got = mfn.embed_raw(chips)
    cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos.min()
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


def test_batched_unit_vectors(mfn, chips):
    vecs = mfn.embed(chips)
    assert vecs.shape == (16, 192) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    one = np.concatenate([mfn.embed(chips[i:i + 1]) for i in range(3)])
    assert np.abs(one - vecs[:3]).max() < 1e-5  # the batch is really dynamic
    # different people are not the same vector (a broken graph maps all faces together)
    sims = vecs @ vecs.T
    assert sims[~np.eye(16, dtype=bool)].max() < 0.8
    assert mfn.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 192)
    with pytest.raises(ValidationError):
        mfn.embed(chips[:, :100, :100])


def test_same_person_closer_than_others(mfn, detection):
    """Two photos of one person beat the same photo against 15 other people."""
    name = "George_W_Bush"
    a, b = sorted((LFW / "images" / name).glob("*.jpg"))[:2]
    res = detection.run([DetectRequest(p.read_bytes(), "blazeface", chip_specs=(CHIP,))
                         for p in (a, b)])
    va, vb = mfn.embed(np.stack([r.chips[CHIP.key][0] for r in res]))
    assert float(va @ vb) > 0.5


def test_warp5_chip_puts_the_points_on_the_template(detection):
    """dlib's own 5-point fit on a warp5 chip finds the points where the template
    says, for an LFW portrait and for a large camera photo (the area-averaged path)."""
    import cv2
    import dlib

    from pipelines.align import shape_predictor_path

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(shape_predictor_path()))
    sources = [sorted((LFW / "images" / "Colin_Powell").glob("*.jpg"))[0],
               FACES / "deepface" / "img1.jpg"]
    res = detection.run([DetectRequest(p.read_bytes(), "blazeface", chip_specs=(CHIP, DLIB_CHIP))
                         for p in sources])
    for r in res:
        assert r.chips[CHIP.key].shape[1:] == (112, 112, 3)
        assert r.chips[DLIB_CHIP.key].shape[1:] == (150, 150, 3)
        big = cv2.resize(r.chips[CHIP.key][0], (448, 448), interpolation=cv2.INTER_CUBIC)
        boxes = hog(big, 0)
        assert len(boxes) == 1
        pts = np.array([(q.x, q.y) for q in predictor(big, boxes[0]).parts()]) / 4.0
        assert np.abs(pts - warp5_points(CHIP)).max() < 5.0, pts
    assert CHIP.key != ChipSpec(112, 0.0).key  # the kind is part of the key


def test_wrong_tflite_is_refused(tmp_path):
    bad = tmp_path / ASSET.filename
    data = bytearray((MODELS / ASSET.filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(npm_assets.AssetVerificationFailed) as exc:
        MobileFaceNetEmbedder(ModelContext(models_dir=tmp_path)).load()
    assert exc.value.code == ErrorCode.MODEL_NOT_INSTALLED
    assert "sha256" in exc.value.message and "pipelines.install.prepare" in exc.value.message
    assert not (tmp_path / "mobilefacenet.onnx").exists()  # nothing converted from it


def test_missing_tflite_names_the_file_and_the_command(tmp_path):
    with pytest.raises(ModelNotInstalled) as exc:
        MobileFaceNetEmbedder(ModelContext(models_dir=tmp_path)).load()
    assert str(tmp_path / ASSET.filename) in exc.value.message
    assert "python -m pipelines.install.prepare" in exc.value.message
    assert exc.value.details["missing_file"] == str(tmp_path / ASSET.filename)


def _tarball(path: Path, member: str, data: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"package/{member}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_member_is_checked_against_the_pin(tmp_path):
    real = (MODELS / ASSET.filename).read_bytes()
    good = _tarball(tmp_path / "good.tgz", ASSET.member, real)
    assert npm_assets.extract_verified(good, ASSET) == real
    tampered = _tarball(tmp_path / "bad.tgz", ASSET.member, real[:-1] + b"\x00")
    with pytest.raises(npm_assets.AssetVerificationFailed, match="sha256"):
        npm_assets.extract_verified(tampered, ASSET)
    other = _tarball(tmp_path / "other.tgz", "README.md", b"no model here")
    with pytest.raises(npm_assets.AssetVerificationFailed, match="holds no readable"):
        npm_assets.extract_verified(other, ASSET)


def test_fetch_reuses_an_installed_file_and_needs_npm_otherwise(tmp_path, monkeypatch):
    shutil.copy(MODELS / ASSET.filename, tmp_path / ASSET.filename)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm reachable
    assert npm_assets.fetch(ASSET, tmp_path) == tmp_path / ASSET.filename
    with pytest.raises(ModelNotInstalled, match="npm"):
        npm_assets.fetch(ASSET, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / ASSET.filename).exists()
