"""Detectors, alignment and the detection stage on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from configs.settings import ImageLimits, Settings
from pipelines.errors import ImageDecodeError, TooManyPixels, UnknownModel
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines.registry import DETECTORS
from pipelines.stages import DetectionStage, DetectRequest
from pipelines.types import ChipSpec


@pytest.fixture(scope="module")
def stage() -> DetectionStage:
    return DetectionStage(ModelContext(), ImageLimits())


def _detect(stage, path, detector, **kw):
    r = stage.run([DetectRequest(path.read_bytes(), detector, **kw)])[0]
    assert not isinstance(r, Exception), r
    return r


@pytest.mark.parametrize("detector", list(DETECTORS))
def test_every_detector_finds_the_group(stage, faces, detector):
    r = _detect(stage, faces / "deepface/selfie-many-people.jpg", detector,
                chip_specs=(DLIB_CHIP,))
    assert 3 <= len(r.faces) <= 6, [f.box for f in r.faces]
    areas = [f.box.area for f in r.faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    assert r.chips[DLIB_CHIP.key].shape == (len(r.faces), 150, 150, 3)
    for f in r.faces:
        assert 0.0 <= f.confidence <= 1.0
        lm = f.landmarks
        assert not np.isnan(lm).any()
        # subject's left eye is on the image right; eyes above nose above mouth
        assert lm[0, 0] > lm[1, 0]
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
        b = f.box
        assert b.x - b.w * 0.2 <= lm[2, 0] <= b.x + b.w * 1.2


def test_default_detector_reports_no_face_on_dogs(stage, faces):
    default = Settings().default_detector
    assert _detect(stage, faces / "dlib-boxes/dogs.jpg", default).faces == []


def test_max_faces_and_min_confidence(stage, faces):
    path = faces / "group/multiface.jpg"
    allf = _detect(stage, path, "dlib-hog").faces
    assert len(allf) >= 5
    two = _detect(stage, path, "dlib-hog", max_faces=2).faces
    assert [f.box for f in two] == [f.box for f in allf[:2]]
    cut = sorted(f.confidence for f in allf)[len(allf) // 2]
    strict = _detect(stage, path, "dlib-hog", min_confidence=cut).faces
    assert 0 < len(strict) < len(allf) and all(f.confidence >= cut for f in strict)


def test_boxes_are_in_original_pixels_for_large_photos(faces):
    small = DetectionStage(ModelContext(), ImageLimits(work_max_side=400))
    full = DetectionStage(ModelContext(), ImageLimits(work_max_side=4000))
    path = faces / "deepface/img1.jpg"
    a = _detect(small, path, "dlib-hog").faces[0].box
    b = _detect(full, path, "dlib-hog").faces[0].box
    assert a.iou(b) > 0.7


def test_chips_of_several_specs(stage, faces):
    specs = (DLIB_CHIP, ChipSpec(64, 0.2), ChipSpec(32, 0.2))
    r = _detect(stage, faces / "group/multiface.jpg", "blazeface-full", chip_specs=specs)
    for s in specs:
        assert r.chips[s.key].shape == (len(r.faces), s.size, s.size, 3)
        assert r.chips[s.key].dtype == np.uint8


def test_bad_items_fail_alone(stage, faces):
    good = (faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").read_bytes()
    header = good[:200]
    results = stage.run([DetectRequest(b"", "dlib-hog"), DetectRequest(good, "dlib-hog"),
                         DetectRequest(header, "dlib-hog"), DetectRequest(good, "nope")])
    assert isinstance(results[0], ImageDecodeError)
    assert len(results[1].faces) == 1
    assert isinstance(results[2], (ImageDecodeError, TooManyPixels))
    assert isinstance(results[3], UnknownModel)
    assert len(stage.run([DetectRequest(good, "dlib-hog")])[0].faces) == 1
