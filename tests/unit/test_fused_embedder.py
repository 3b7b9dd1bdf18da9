"""The fused embedder on real faces, the embedding stage's chip handling, and
the model pack (which embedders are offered, and the default of each pack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.evaluate import LFW
from pipelines.errors import ErrorCode, UnknownModel, ValidationError
from configs.settings import ImageLimits, Settings, SettingsProblem
from deployments.http.compat_schemas import collection_for, deepface_model_name, embedder_for
from pipelines.embed_fused import FusedEmbedder
from pipelines.embed_mobilefacenet import CHIP as MFN_CHIP
from pipelines.models import DLIB_CHIP, ModelContext, ModelTask
from pipelines.registry import PERMISSIVE_EMBEDDERS, build, check_model_settings, embedder_names
from pipelines.stages import DetectionStage, DetectRequest, EmbeddingStage, EmbedRequest, flips

FUSED = "dlib+mobilefacenet"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def ctx(settings) -> ModelContext:
    return ModelContext(models_dir=Path("data/models"), fusion_weights=settings.fusion_weights)


@pytest.fixture(scope="module")
def stage(ctx, settings) -> EmbeddingStage:
    return EmbeddingStage(ctx, flip_average=settings.flip_average)


@pytest.fixture(scope="module")
def chips(ctx) -> dict[str, np.ndarray]:
    """Both chip kinds of 6 photos: 3 people, 2 photos each."""
    names = ["Colin_Powell", "Tony_Blair", "Serena_Williams"]
    paths = [p for n in names for p in sorted((LFW / "images" / n).glob("*.jpg"))[:2]]
    det = DetectionStage(ctx, ImageLimits())
    res = det.run([DetectRequest(p.read_bytes(), "blazeface", chip_specs=(DLIB_CHIP, MFN_CHIP))
                   for p in paths])
    return {s.key: np.stack([r.chips[s.key][0] for r in res]) for s in (DLIB_CHIP, MFN_CHIP)}


def test_fused_vectors_are_the_weighted_concatenation(stage, chips, settings):
    fused = stage.model(FUSED)
    assert isinstance(fused, FusedEmbedder) and fused.dim == 128 + 192
    assert fused.chip_specs == (DLIB_CHIP, MFN_CHIP)
    vecs = stage.run([EmbedRequest(FUSED, chips)])[0]
    assert vecs.shape == (6, 320)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the fused model's own mirror setting applies to both its parts
    flip = flips(settings.flip_average, FUSED)
    parts = [stage.vectors(stage.model(n), chips, flip=flip) for n in ("dlib", "mobilefacenet")]
    w = settings.fusion_weights[FUSED]
    wd, wm = w["dlib"], w["mobilefacenet"]
    # the fused cosine is the weighted mean of the parts' cosines
    expect = (wd ** 2 * parts[0] @ parts[0].T + wm ** 2 * parts[1] @ parts[1].T) / (wd ** 2 + wm ** 2)
    assert np.abs(vecs @ vecs.T - expect).max() < 1e-5
    sims = vecs @ vecs.T
    for i in range(0, 6, 2):  # each person's two photos are nearest to each other
        others = np.delete(sims[i], [i, i + 1])
        assert sims[i, i + 1] > others.max()


def test_one_bad_request_does_not_fail_its_batch(stage, chips):
    good = EmbedRequest(FUSED, chips)
    missing = EmbedRequest(FUSED, {DLIB_CHIP.key: chips[DLIB_CHIP.key]})
    uneven = EmbedRequest(FUSED, {DLIB_CHIP.key: chips[DLIB_CHIP.key][:2],
                                  MFN_CHIP.key: chips[MFN_CHIP.key][:3]})
    empty = EmbedRequest(FUSED, {k: v[:0] for k, v in chips.items()})
    out = stage.run([good, missing, uneven, empty, EmbedRequest("dlib", chips)])
    assert out[0].shape == (6, 320) and out[4].shape == (6, 128)
    assert isinstance(out[1], ValidationError) and MFN_CHIP.key in out[1].message
    assert isinstance(out[2], ValidationError)
    assert out[3].shape == (0, 320)
    # the same faces alone give the same vectors as inside the batch
    assert np.abs(stage.run([good])[0] - out[0]).max() < 1e-5


def test_fused_embedder_needs_both_chip_kinds(stage, chips):
    with pytest.raises(ValidationError):
        stage.model(FUSED).embed(chips[DLIB_CHIP.key])


def test_default_pack_defaults_to_dlib_and_mfn512():
    s = Settings()
    assert s.model_pack == "default" and s.default_embedder == "dlib+mfn512"
    assert {"dlib", "mobilefacenet", FUSED, "mfn512", "dlib+mfn512",
            "dlib+mobilefacenet+mfn512"} <= set(embedder_names("default"))


def test_new_fused_models_are_the_weighted_concatenation(stage, chips, settings):
    """dlib+mfn512 (the default) and the three-network model: one warp5 chip feeds both
    MobileFaceNets, and the cosine is the weighted mean of each network's."""
    for name, dims in (("dlib+mfn512", (128, 512)),
                       ("dlib+mobilefacenet+mfn512", (128, 192, 512))):
        fused = stage.model(name)
        assert fused.chip_specs == (DLIB_CHIP, MFN_CHIP) and fused.dim == sum(dims)
        vecs = stage.run([EmbedRequest(name, chips)])[0]
        assert vecs.shape == (6, sum(dims))
        parts = [stage.vectors(stage.model(n), chips, flip=flips(settings.flip_average, name))
                 for n in name.split("+")]
        w = np.array([settings.fusion_weights[name][n] for n in name.split("+")]) ** 2
        cos = sum(wi * (pv @ pv.T) for wi, pv in zip(w, parts, strict=True)) / w.sum()
        assert np.abs(vecs @ vecs.T - cos).max() < 1e-5
        sims = vecs @ vecs.T  # each person's two photos are nearest each other
        for i in range(0, 6, 2):
            others = [j for j in range(6) if j not in (i, i + 1)]
            assert sims[i, i + 1] > sims[i, others].max()


def test_permissive_pack_offers_and_defaults_to_dlib_only(tmp_path):
    s = Settings(model_pack="permissive")
    assert s.default_embedder == "dlib"
    assert embedder_names("permissive") == list(PERMISSIVE_EMBEDDERS)
    ctx = ModelContext(models_dir=tmp_path, model_pack="permissive")
    for name in ("mobilefacenet", FUSED, "mfn512", "dlib+mfn512", "dlib+mobilefacenet+mfn512"):
        with pytest.raises(UnknownModel) as exc:
            build(ModelTask.EMBED, name, ctx)
        assert exc.value.code == ErrorCode.UNKNOWN_MODEL
        assert "permissive" in exc.value.message
        assert exc.value.details["available"] == list(PERMISSIVE_EMBEDDERS)
    with pytest.raises(UnknownModel, match="is unknown"):
        build(ModelTask.EMBED, "no-such-model", ctx)
    assert build(ModelTask.EMBED, "dlib", ctx).name == "dlib"
    with pytest.raises(SettingsProblem, match="not offered"):
        check_model_settings(Settings(model_pack="permissive", default_embedder="mobilefacenet"))


def test_identify_thresholds_are_stricter_than_verify_ones(settings):
    for model in ("dlib", "mobilefacenet", FUSED, "mfn512", "dlib+mfn512",
                  "dlib+mobilefacenet+mfn512"):
        verify, identify = settings.threshold_for(model), settings.identify_threshold_for(model)
        assert verify is not None and identify is not None and 0 < identify < verify
    assert settings.identify_threshold_for("deepface:ArcFace") is None  # not calibrated
    # a collection bound to dlib keeps dlib's 1:1 threshold and mirror averaging
    assert settings.threshold_for("dlib") == 0.0872 and flips(settings.flip_average, "dlib")
    # and one bound to the earlier default keeps its calibration and weights
    assert settings.threshold_for(FUSED) == 0.2182 and not flips(settings.flip_average, FUSED)
    assert settings.fusion_weights[FUSED] == {"dlib": 1.75, "mobilefacenet": 1.0}


def test_deepface_names_map_onto_the_new_models():
    known = embedder_names("default")
    assert embedder_for("Dlib", FUSED, known) == "dlib"
    assert embedder_for("MobileFaceNet", FUSED, known) == "mobilefacenet"
    assert embedder_for("Dlib+MobileFaceNet", FUSED, known) == FUSED
    assert embedder_for(None, FUSED, known) == FUSED
    assert embedder_for("ArcFace", FUSED, known) == "deepface:ArcFace"
    # in the permissive pack the name still means facefleet's model (refused by the registry)
    assert embedder_for("MobileFaceNet", "dlib", embedder_names("permissive")) == "mobilefacenet"
    assert deepface_model_name("mobilefacenet") == "MobileFaceNet"
    assert collection_for(None, FUSED) == "deepface-dlib-mobilefacenet"
    assert embedder_for("MFN512", "dlib+mfn512", known) == "mfn512"
    assert embedder_for("Dlib+MFN512", "dlib+mfn512", known) == "dlib+mfn512"
    assert deepface_model_name("dlib+mfn512") == "Dlib+MFN512"
    assert collection_for(None, "dlib+mfn512") == "deepface-dlib-mfn512"
