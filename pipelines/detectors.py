"""Face detectors of the offline pack behind one interface.

dlib HOG, MTCNN and OpenCV's Haar cascade (BlazeFace, the default, is in
``pipelines.blazeface``). Each returns ``Face`` objects with a box in pixels
of the image it was given, a confidence in [0, 1], and the landmarks the
detector itself knows (NaN where it knows none; the aligner fills those in
from dlib's 5-point shape).
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.models import DetectorModel, ModelContext, require_file
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


class DlibHogDetector(DetectorModel):
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


class MtcnnDetector(DetectorModel):
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


class HaarDetector(DetectorModel):
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
