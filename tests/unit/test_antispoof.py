"""Anti-spoofing: the shipped ``fr_liveness`` model, and the user's MiniFASNet pair.

``fr_liveness`` (the default) is checked on the three smoke-test frames of
``spoof/`` (both attacks flagged, the live face not), on genuine photos, and its
dynamic-batch copy against the shipped file. The MiniFASNet pair's weights are
not on this machine, so for it these tests check what can be checked without
them: the context crops are cut exactly as DeepFace (whose MiniFASNet pair a
user would install) cuts them, on real photos and at the image border; the
detector stage cuts them beside the aligned chips; and every way of asking for
the model without its weights answers ``model_not_installed`` naming the file
and where it goes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.errors import ModelNotInstalled
from pipelines.align import box_chip
from configs.settings import ImageLimits, Runtime, Settings
from pipelines.antispoof import ANTI_SPOOFING, MINIFASNET_GRAPHS, AntiSpoofModel
from pipelines.antispoof_fr import CHIP as FR_CHIP
from pipelines.antispoof_fr import FrLivenessModel
from pipelines.antispoof_fr import preprocess as preprocess_live
from pipelines.models import DLIB_CHIP, ModelContext, ModelTask
from pipelines.registry import build
from pipelines.stages import AnalysisStage, AnalyzeRequest, DetectionStage, DetectRequest
from pipelines.types import Box, ChipSpec

fasnet_utils = pytest.importorskip("deepface.models.spoofing.FasNetUtils")

SPECS = AntiSpoofModel().chip_specs


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def stage() -> DetectionStage:
    return DetectionStage(ModelContext(), ImageLimits())


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
    analysis = AnalysisStage(ModelContext(deepface_home=tmp_path,
                                          anti_spoofing_model="deepface:Fasnet"))
    res = analysis.run([AnalyzeRequest((ANTI_SPOOFING,), det.chips)])
    assert isinstance(res[0], ModelNotInstalled)
    assert res[0].details["model"] == "deepface:Fasnet"


# ------------------------------------------------------------------ fr_liveness (shipped)
MODELS = Path("data/models")


@pytest.fixture(scope="module")
def live() -> FrLivenessModel:
    model = FrLivenessModel(ModelContext(models_dir=MODELS))
    model.load()
    return model


def _spoof_frames_upright() -> dict[str, bytes]:
    from bench.faceplugin import upright_spoof_frames

    return upright_spoof_frames()


def test_fr_liveness_is_the_default_and_the_minifasnet_pair_stays_selectable():
    assert isinstance(build(ModelTask.ATTRIBUTE, ANTI_SPOOFING, ModelContext()), FrLivenessModel)
    pair = build(ModelTask.ATTRIBUTE, ANTI_SPOOFING,
                 ModelContext(anti_spoofing_model="deepface:Fasnet"))
    assert isinstance(pair, AntiSpoofModel)
    assert Settings().anti_spoofing_model == "fr_liveness"
    assert Settings(model_pack="permissive").anti_spoofing_model == "deepface:Fasnet"
    with pytest.raises(ValueError, match="permissive"):
        Settings(model_pack="permissive", anti_spoofing_model="fr_liveness")


def test_smoke_frames_attacks_flagged_live_face_not(stage):
    """Both attack frames are spoofs and the live one is real, through the stages the
    service runs (detection cuts the 2.7x crop, analysis runs the default model)."""
    frames = _spoof_frames_upright()
    assert sorted(frames) == ["image_F1", "image_F2", "image_T1"]
    dets = stage.run([DetectRequest(b, "blazeface", max_faces=1, chip_specs=(FR_CHIP,))
                      for b in frames.values()])
    analysis = AnalysisStage(ModelContext(models_dir=MODELS))
    res = analysis.run([AnalyzeRequest((ANTI_SPOOFING,), d.chips) for d in dets])
    verdicts = {name: r[0] for name, r in zip(frames, res, strict=True)}
    assert not verdicts["image_F1"]["is_real"], verdicts
    assert not verdicts["image_F2"]["is_real"], verdicts
    assert verdicts["image_T1"]["is_real"], verdicts
    for v in verdicts.values():
        assert 0.5 <= v["antispoof_score"] <= 1.0  # the probability of the verdict


def test_genuine_photos_are_real(stage, live, faces):
    """The 61 deepface identity photos (genuine, camera-sized): at most 5% called spoofs
    (measured 0%; bench/faceplugin.py)."""
    from bench.evaluate import deepface_identities

    dets = stage.run([DetectRequest(Path(p).read_bytes(), "blazeface", max_faces=1,
                                    chip_specs=(FR_CHIP,)) for p, _ in deepface_identities()])
    chips = np.stack([d.chips[FR_CHIP.key][0] for d in dets if d.faces])
    assert len(chips) >= 60
    verdicts = live.predict(chips)
    spoofs = sum(not v["is_real"] for v in verdicts)
    assert spoofs <= 0.05 * len(chips), f"{spoofs} of {len(chips)} genuine photos called spoofs"


def test_fr_liveness_copy_matches_the_shipped_file(stage, live, faces):
    from pipelines.runtime import onnx_session

    dets = stage.run([DetectRequest(b, "blazeface", max_faces=1, chip_specs=(FR_CHIP,))
                      for b in _spoof_frames_upright().values()])
    x = preprocess_live(np.stack([d.chips[FR_CHIP.key][0] for d in dets]))
    shipped = onnx_session(str(live.source_path), Runtime())
    ref = np.concatenate([shipped.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    one = np.concatenate([live.session.run(None, {"input": x[i:i + 1]})[0]
                          for i in range(len(x))])
    assert np.array_equal(one, ref)
    together = live.session.run(None, {"input": x})[0]  # a batch: the same up to rounding
    assert np.abs(together - ref).max() < 1e-3


def test_fr_liveness_reads_bgr_and_the_2_7_crop():
    assert (FR_CHIP.size, FR_CHIP.padding, FR_CHIP.kind) == (128, 2.7, "box")
    rgb = np.zeros((1, 128, 128, 3), np.uint8)
    rgb[..., 0] = 200  # red
    x = preprocess_live(rgb)
    assert x.shape == (1, 3, 128, 128) and x[0, 2].max() == 200 and x[0, 0].max() == 0
