"""Anti-spoofing plugs in from user-supplied MiniFASNet weights; none ship.

The weights are not on this machine, so these tests check what can be checked
without them: the context crops are cut exactly as DeepFace (whose MiniFASNet
pair a user would install) cuts them, on real photos and at the image border;
the detector stage cuts them beside the aligned chips; and every way of asking
for the model without its weights answers ``model_not_installed`` naming the
file and where it goes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from configs.errors import ModelNotInstalled
from pipelines.align import box_chip
from pipelines.antispoof import ANTI_SPOOFING, MINIFASNET_GRAPHS, AntiSpoofModel
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines.stages import AnalysisStage, AnalyzeRequest, DetectionStage, DetectRequest, \
    ImageLimitsCfg
from pipelines.types import Box, ChipSpec

fasnet_utils = pytest.importorskip("deepface.models.spoofing.FasNetUtils")

SPECS = AntiSpoofModel().chip_specs


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def stage() -> DetectionStage:
    return DetectionStage(ModelContext(), ImageLimitsCfg())


def test_chip_specs_are_the_two_minifasnet_crops():
    assert [(s.size, s.padding, s.kind) for s in SPECS] == [(80, 2.7, "box"), (80, 4.0, "box")]
    assert len({s.key for s in SPECS}) == 2 and all(s.key.startswith("box:") for s in SPECS)


@pytest.mark.parametrize("photo", ["deepface/img1.jpg", "group/multiface.jpg",
                                   "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg"])
def test_box_chips_equal_deepfaces_crop_on_detected_faces(stage, faces, photo):
    path = faces / photo
    det = stage.run([DetectRequest(path.read_bytes(), "blazeface", chip_specs=SPECS)])[0]
    assert not isinstance(det, Exception) and det.faces, det
    rgb = _rgb(path)
    assert (det.width, det.height) == (rgb.shape[1], rgb.shape[0])  # no working downscale
    for i, face in enumerate(det.faces):
        b = face.box.as_dict()
        for spec in SPECS:
            theirs = fasnet_utils.crop(rgb, (b["x"], b["y"], b["w"], b["h"]), spec.padding,
                                       spec.size, spec.size)
            assert np.array_equal(det.chips[spec.key][i], theirs), (photo, i, spec.key)


@pytest.mark.parametrize("where", ["top-left", "bottom-right", "past-the-right-edge",
                                   "larger-than-the-image", "one-pixel"])
def test_box_chips_equal_deepfaces_crop_at_the_border(faces, where):
    rgb = _rgb(faces / "deepface/img1.jpg")
    h, w = rgb.shape[:2]
    x, y, bw, bh = {"top-left": (0, 0, 60, 70), "bottom-right": (w - 60, h - 60, 60, 60),
                    "past-the-right-edge": (w - 30, 10, 60, 60),
                    "larger-than-the-image": (30, 40, 2 * w, 2 * h),
                    "one-pixel": (1, 1, 1, 1)}[where]
    for scale in (2.7, 4.0, 1.0):
        spec = ChipSpec(80, scale, "box")
        ours = box_chip(rgb, Box(x, y, bw, bh), spec)
        theirs = fasnet_utils.crop(rgb, (x, y, bw, bh), scale, 80, 80)
        assert ours.shape == (80, 80, 3) and np.array_equal(ours, theirs), (where, scale)


def test_box_chips_come_beside_aligned_chips(stage, faces):
    specs = (DLIB_CHIP, *SPECS)
    det = stage.run([DetectRequest((faces / "deepface/selfie-many-people.jpg").read_bytes(),
                                   "blazeface", chip_specs=specs)])[0]
    assert len(det.faces) >= 3
    for s in specs:
        assert det.chips[s.key].shape == (len(det.faces), s.size, s.size, 3)
    # the wider crop holds more context: its centre region is the narrower crop, shrunk
    assert not np.array_equal(det.chips[SPECS[0].key], det.chips[SPECS[1].key])


def test_without_a_deepface_home_the_model_is_not_installed():
    with pytest.raises(ModelNotInstalled) as err:
        AntiSpoofModel(ModelContext(deepface_home=None)).load()
    assert MINIFASNET_GRAPHS[0][0] in err.value.message
    assert "FACEFLEET_DEEPFACE_HOME" in err.value.message


def test_each_missing_file_is_named_before_anything_loads(tmp_path):
    weights = tmp_path / ".deepface" / "weights"
    weights.mkdir(parents=True)
    model = AntiSpoofModel(ModelContext(deepface_home=tmp_path))
    with pytest.raises(ModelNotInstalled) as err:
        model.load()
    assert err.value.details["missing_file"] == str(weights / MINIFASNET_GRAPHS[0][0])
    # with the first file in place the second is named; no session was built
    (weights / MINIFASNET_GRAPHS[0][0]).write_bytes(b"")
    with pytest.raises(ModelNotInstalled) as err:
        model.load()
    assert err.value.details["missing_file"] == str(weights / MINIFASNET_GRAPHS[1][0])
    assert model._sessions == []


def test_the_analysis_stage_answers_not_installed_per_request(stage, faces, tmp_path):
    det = stage.run([DetectRequest((faces / "deepface/img1.jpg").read_bytes(), "blazeface",
                                   chip_specs=SPECS)])[0]
    analysis = AnalysisStage(ModelContext(deepface_home=tmp_path))
    res = analysis.run([AnalyzeRequest((ANTI_SPOOFING,), det.chips)])
    assert isinstance(res[0], ModelNotInstalled)
    assert res[0].details["model"] == "deepface:Fasnet"
