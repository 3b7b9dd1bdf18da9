"""Batch-in, batch-out stages: what each Serve deployment runs.

``DetectionStage`` decodes encoded images, finds faces, fits shapes and cuts
the aligned chips each downstream model asked for. ``EmbeddingStage`` and
``AnalysisStage`` run models over chips, grouping a batch by model so one
forward pass serves many requests. A bad item yields its own error object in
the results; it never fails the other items of its batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipelines.errors import FacefleetError, ValidationError
from configs.settings import ImageLimits
from pipelines.align import Aligner
from pipelines.decode import DecodedImage, decode_image
from pipelines.embed_fused import FusedEmbedder
from pipelines.models import (AttributeModel, DetectorModel, EmbedderModel, InferenceModel,
                              ModelContext, ModelTask, chips_for, l2_normalise)
from pipelines.registry import build
from pipelines.types import (THUMBNAIL_JPEG_QUALITY, THUMBNAIL_SPEC, AnalyzedImage, Box, ChipSpec,
                             DetectedImage, EmbeddedImage, Face)

log = logging.getLogger(__name__)


class ModelCache:
    """Builds and loads each model once, by task and name, for every stage of a process.

    A load that fails (``ModelNotInstalled``) is not cached, so a later install
    works without a restart.
    """

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self._models: dict[tuple[ModelTask, str], InferenceModel] = {}
        self._lock = threading.Lock()

    def get(self, task: ModelTask, name: str) -> InferenceModel:
        key = (ModelTask(task), name)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = build(key[0], name, self.ctx)
                model.load()
                self._models[key] = model
        return model

    def info(self, task: ModelTask, name: str) -> dict[str, Any]:
        """``InferenceModel.info`` of the model (built and loaded if need be)."""
        return self.get(task, name).info()


@dataclass(frozen=True)
class DetectRequest:
    """One image to detect in, with the chips its caller needs."""

    data: bytes
    detector: str
    max_faces: int = 64
    min_confidence: float = 0.0
    chip_specs: tuple[ChipSpec, ...] = ()
    #: also a small JPEG of each face (``THUMBNAIL_SPEC``), encoded here, where the
    #: chip is cut, so that only a few KB per face travel on
    thumbnails: bool = False


class DetectionStage:
    """Decode + detect + align, for a batch of encoded images.

    All images of a batch are decoded first, then each detector named in the
    batch runs once over all of its images (one forward pass per model for
    the batched detectors), then shapes are fitted and chips cut per image.
    A request that fails (bad image, unknown detector) fails alone.
    """

    def __init__(self, ctx: ModelContext, limits: ImageLimits,
                 preload: list[str] | None = None, models: ModelCache | None = None) -> None:
        self.ctx = ctx
        self.limits = limits
        self.models = models or ModelCache(ctx)
        self.aligner = Aligner(ctx)
        self.aligner.load()
        for name in preload or []:
            self.detector(name)

    def detector(self, name: str) -> DetectorModel:
        return self.models.get(ModelTask.DETECT, name)  # type: ignore[return-value]

    def run(self, requests: list[DetectRequest]) -> list[DetectedImage | FacefleetError]:
        results: list[DetectedImage | FacefleetError | None] = [None] * len(requests)
        decoded: dict[int, tuple[DecodedImage, float]] = {}
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            t0 = time.perf_counter()
            try:
                if req.max_faces < 1:
                    raise ValidationError("max_faces must be at least 1")
                self.detector(req.detector)
                img = decode_image(req.data, max_bytes=self.limits.max_bytes,
                                   max_pixels=self.limits.max_pixels,
                                   work_max_side=self.limits.work_max_side)
            except FacefleetError as exc:
                results[i] = exc
                continue
            decoded[i] = (img, time.perf_counter() - t0)
            groups.setdefault(req.detector, []).append(i)
        for name, idx in groups.items():
            detector = self.detector(name)
            t0 = time.perf_counter()
            found = _detect_each(detector, [decoded[i][0].pixels for i in idx])
            shared = time.perf_counter() - t0
            for i, faces in zip(idx, found, strict=True):
                if isinstance(faces, FacefleetError):
                    results[i] = faces
                    continue
                img, own = decoded[i]
                try:
                    results[i] = self._finish(requests[i], detector, img, faces, own + shared)
                except FacefleetError as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def _finish(self, req: DetectRequest, detector: DetectorModel, img: DecodedImage,
                faces: list[Face], spent_s: float) -> DetectedImage:
        """Filter, order, align and cut chips for one image's faces.

        ``time_ms`` is this image's own decoding and alignment plus the whole
        detector pass it shared with its batch (``spent_s`` so far).
        """
        t0 = time.perf_counter()
        pixels = img.pixels
        h, w = pixels.shape[:2]
        faces = [f for f in faces if f.confidence >= req.min_confidence]
        faces = [_clip(f, w, h) for f in faces]
        faces = [f for f in faces if f.box.w >= 8 and f.box.h >= 8]
        faces.sort(key=lambda f: f.box.area, reverse=True)
        faces = faces[: req.max_faces]
        self.aligner.fit(pixels, detector.calibrate(faces))
        specs = list(req.chip_specs)
        if req.thumbnails and THUMBNAIL_SPEC not in specs:
            specs.append(THUMBNAIL_SPEC)
        chips = self.aligner.chips(pixels, faces, specs)
        thumbnails = None
        if req.thumbnails:
            cut = (chips[THUMBNAIL_SPEC.key] if THUMBNAIL_SPEC in req.chip_specs
                   else chips.pop(THUMBNAIL_SPEC.key))
            thumbnails = [_jpeg(c) for c in cut]
        scale = img.scale
        if scale != 1.0:  # report in the original image's pixels
            for f in faces:
                b = f.box
                f.box = Box(b.x * scale, b.y * scale, b.w * scale, b.h * scale)
                f.landmarks = f.landmarks * scale
                f.shape = f.shape * scale if f.shape is not None else None
        return DetectedImage(width=img.original_width, height=img.original_height, faces=faces,
                             chips=chips, detector=req.detector,
                             time_ms=(spent_s + time.perf_counter() - t0) * 1000,
                             thumbnails=thumbnails)


def _jpeg(chip: np.ndarray) -> bytes:
    """An RGB chip as a JPEG (OpenCV encodes BGR)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(chip[:, :, ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding of a thumbnail failed")
    return buf.tobytes()


def _detect_each(detector: DetectorModel, images: list[np.ndarray]) -> list[list[Face] | FacefleetError]:
    """The detector over all images at once; if that fails, image by image,
    so that one image the detector cannot handle fails alone."""
    try:
        return list(detector.predict_batch(images))
    except FacefleetError as exc:
        if len(images) == 1:
            return [exc]
    out: list[list[Face] | FacefleetError] = []
    for image in images:
        try:
            out.append(detector.predict_batch([image])[0])
        except FacefleetError as exc:
            out.append(exc)
    return out


def _clip(face: Face, w: int, h: int) -> Face:
    face.box = face.box.clipped(w, h)
    return face


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    #: ChipSpec.key -> (n, s, s, 3) uint8: the chips of every spec in the model's
    #: ``chip_specs``, the same n faces in the same order
    chips: dict[str, np.ndarray]


class EmbeddingStage:
    """Embeds chips of many requests, one forward pass per model.

    ``flip_average`` is a bool for every model or a mapping model -> bool
    (models not in it: on): mirror averaging helps some networks more than
    others and doubles their cost, so it is chosen per model
    (``Settings.flip_average``). A fused model listed there applies its own
    entry to all its parts; otherwise each part follows its own entry.
    """

    def __init__(self, ctx: ModelContext, preload: list[str] | None = None,
                 flip_average: bool | Mapping[str, bool] = True,
                 models: ModelCache | None = None) -> None:
        self.models = models or ModelCache(ctx)
        self.flip_average = flip_average
        for name in preload or []:
            self.model(name)

    def flips(self, name: str) -> bool:
        return flips(self.flip_average, name)

    def _forward(self, model: EmbedderModel, chips: np.ndarray, flip: bool) -> np.ndarray:
        if not flip:
            return model.embed(chips)
        # Mirror test-time augmentation: one batch of 2N, then the mean of each
        # face's two unit vectors, renormalised.
        n = len(chips)
        both = model.embed(np.concatenate([chips, chips[:, :, ::-1]]))
        return l2_normalise(both[:n] + both[n:])

    def vectors(self, model: EmbedderModel, chips: Mapping[str, np.ndarray],
                flip: bool | None = None) -> np.ndarray:
        """Unit vectors of ``model`` for chips keyed by ChipSpec.key."""
        if isinstance(model, FusedEmbedder):
            own = None if isinstance(self.flip_average, bool) or \
                model.name not in self.flip_average else self.flips(model.name)
            return model.combine([self.vectors(p, chips, own) for p in model.parts])
        return self._forward(model, chips_for(chips, model.chip, model.name),
                             self.flips(model.name) if flip is None else flip)

    def model(self, name: str) -> EmbedderModel:
        return self.models.get(ModelTask.EMBED, name)  # type: ignore[return-value]

    def run_detected(self, detected: list[DetectedImage | FacefleetError],
                     models: list[str]) -> list[EmbeddedImage | FacefleetError]:
        """Embed the faces of detected images (an error from detection passes through)."""
        out: list[EmbeddedImage | FacefleetError] = list(detected)  # type: ignore[arg-type]
        reqs, idx = [], []
        for i, (det, name) in enumerate(zip(detected, models, strict=True)):
            if isinstance(det, FacefleetError):
                continue
            try:
                specs = self.model(name).chip_specs
            except FacefleetError as exc:
                out[i] = exc
                continue
            missing = [c.key for c in specs if c.key not in det.chips]
            if missing:
                out[i] = ValidationError(f"the detector did not cut {', '.join(missing)} chips "
                                         f"for model '{name}'", {"model": name})
                continue
            reqs.append(EmbedRequest(name, {c.key: det.chips[c.key] for c in specs}))
            idx.append(i)
        for i, vecs in zip(idx, self.run(reqs), strict=True):
            det = detected[i]
            out[i] = vecs if isinstance(vecs, FacefleetError) else EmbeddedImage(
                det.width, det.height, det.faces, vecs, models[i], det.detector, det.time_ms,
                det.thumbnails)
        return out

    def run(self, requests: list[EmbedRequest]) -> list[np.ndarray | FacefleetError]:
        results: list[np.ndarray | FacefleetError] = [None] * len(requests)  # type: ignore[list-item]
        by_model: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_model.setdefault(r.model, []).append(i)
        for name, idx in by_model.items():
            try:
                model = self.model(name)
            except FacefleetError as exc:
                for i in idx:
                    results[i] = exc
                continue
            keys = [s.key for s in model.chip_specs]
            sizes: dict[int, int] = {}
            for i in idx:  # a request without the chips this model needs fails alone
                try:
                    sizes[i] = _face_count(requests[i].chips, keys, name)
                except FacefleetError as exc:
                    results[i] = exc
            good = [i for i in idx if sizes.get(i)]
            try:
                vecs = self.vectors(model, {k: np.concatenate([requests[i].chips[k] for i in good])
                                            for k in keys}) if good else None
                offsets = np.cumsum([0] + [sizes[i] for i in good])
                for j, i in enumerate(good):
                    results[i] = vecs[offsets[j]:offsets[j + 1]]
                for i in sizes.keys() - set(good):
                    results[i] = np.zeros((0, model.dim), np.float32)
            except FacefleetError as exc:
                for i in sizes:
                    results[i] = exc
        return results


def flips(flip_average: bool | Mapping[str, bool], model: str) -> bool:
    """Whether ``model`` embeds with mirror averaging under ``Settings.flip_average``
    (a bool for every model, or per model; unlisted models: on)."""
    if isinstance(flip_average, bool):
        return flip_average
    return bool(flip_average.get(model, True))


def _face_count(chips: Mapping[str, np.ndarray], keys: list[str], model: str) -> int:
    if not isinstance(chips, Mapping):
        raise ValidationError(f"a model request carries chips keyed by chip spec, got "
                              f"{type(chips).__name__}")
    missing = [k for k in keys if k not in chips]
    if missing:
        raise ValidationError(f"model '{model}' needs chips {', '.join(missing)}; the request "
                              f"carries {', '.join(sorted(chips)) or 'none'}",
                              {"model": model, "missing": missing})
    counts = {len(chips[k]) for k in keys}
    if len(counts) != 1:
        raise ValidationError(f"the chips of one request must cover the same faces; "
                              f"got {sorted(counts)} faces per kind", {"model": model})
    return counts.pop()


@dataclass(frozen=True)
class AnalyzeRequest:
    actions: tuple[str, ...]
    chips: dict[str, np.ndarray] = field(default_factory=dict)  # ChipSpec.key -> chips


class AnalysisStage:
    """Runs attribute models over chips, batched per action across requests."""

    def __init__(self, ctx: ModelContext, preload: list[str] | None = None,
                 models: ModelCache | None = None) -> None:
        self.models = models or ModelCache(ctx)
        for name in preload or []:
            self.model(name)

    def model(self, action: str) -> AttributeModel:
        return self.models.get(ModelTask.ATTRIBUTE, action)  # type: ignore[return-value]

    def run_detected(self, detected: list[DetectedImage | FacefleetError],
                     actions: list[tuple[str, ...]]) -> list[AnalyzedImage | FacefleetError]:
        """Attributes of the faces of detected images (detection errors pass through)."""
        out: list[AnalyzedImage | FacefleetError] = list(detected)  # type: ignore[arg-type]
        idx = [i for i, d in enumerate(detected) if not isinstance(d, FacefleetError)]
        results = self.run([AnalyzeRequest(actions[i], detected[i].chips)  # type: ignore[union-attr]
                            for i in idx])
        for i, res in zip(idx, results, strict=True):
            det = detected[i]
            out[i] = res if isinstance(res, FacefleetError) else AnalyzedImage(
                det.width, det.height, det.faces, res, det.detector)
        return out

    def run(self, requests: list[AnalyzeRequest]) -> list[list[dict] | FacefleetError]:
        n_faces = [max((len(c) for c in r.chips.values()), default=0) for r in requests]
        merged: list[list[dict]] = [[{} for _ in range(n)] for n in n_faces]
        failed: dict[int, FacefleetError] = {}
        actions = sorted({a for r in requests for a in r.actions})
        for action in actions:
            idx = [i for i, r in enumerate(requests) if action in r.actions and i not in failed]
            try:
                model = self.model(action)
                keys = [c.key for c in model.chip_specs]
                counts = [_face_count(requests[i].chips, keys, model.name) for i in idx]
                batch = {key: np.concatenate([requests[i].chips[key] for i in idx])
                         for key in keys} if sum(counts) else {}
                preds = model.predict_batch(batch) if batch else []
                k = 0
                for i, n in zip(idx, counts, strict=True):
                    for j in range(n):
                        merged[i][j].update(preds[k])
                        k += 1
            except FacefleetError as exc:
                for i in idx:
                    failed[i] = exc
            except KeyError as exc:
                for i in idx:
                    failed[i] = ValidationError(f"chips for action '{action}' were not provided: {exc}")
        return [failed.get(i, merged[i]) for i in range(len(requests))]
