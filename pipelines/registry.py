"""The explicit registry of model names.

Names map to factories that import their model library only when built, so a
process that never detects with MTCNN never imports its TensorFlow graph. Any
``deepface:<Name>`` embedder is resolved through DeepFace's model zoo.
"""

from __future__ import annotations

from collections.abc import Callable

from configs.errors import UnknownModel
from pipelines.models import AttributeModel, Detector, Embedder, ModelContext


def _blaze_short(ctx: ModelContext) -> Detector:
    from pipelines.blazeface import SHORT, BlazeFaceOnnxDetector

    return BlazeFaceOnnxDetector(ctx, SHORT)


def _blaze_full(ctx: ModelContext) -> Detector:
    from pipelines.blazeface import FULL, BlazeFaceOnnxDetector

    return BlazeFaceOnnxDetector(ctx, FULL)


def _hog(ctx: ModelContext) -> Detector:
    from pipelines.detectors import DlibHogDetector

    return DlibHogDetector(ctx)


def _mtcnn(ctx: ModelContext) -> Detector:
    from pipelines.detectors import MtcnnDetector

    return MtcnnDetector(ctx)


def _haar(ctx: ModelContext) -> Detector:
    from pipelines.detectors import HaarDetector

    return HaarDetector(ctx)


def _blaze_both(ctx: ModelContext) -> Detector:
    from pipelines.blazeface import BlazeFaceBothDetector

    return BlazeFaceBothDetector(ctx)


DETECTORS: dict[str, Callable[[ModelContext], Detector]] = {
    "blazeface": _blaze_both,
    "blazeface-short": _blaze_short,
    "blazeface-full": _blaze_full,
    "dlib-hog": _hog,
    "mtcnn": _mtcnn,
    "opencv-haar": _haar,
}


def _dlib_onnx(ctx: ModelContext) -> Embedder:
    from pipelines.embed_dlib import DlibOnnxEmbedder

    return DlibOnnxEmbedder(ctx)


def _dlib_native(ctx: ModelContext) -> Embedder:
    from pipelines.embed_dlib import DlibNativeEmbedder

    return DlibNativeEmbedder(ctx)


EMBEDDERS: dict[str, Callable[[ModelContext], Embedder]] = {
    "dlib": _dlib_onnx,
    "dlib-native": _dlib_native,
}

#: DeepFace recognition models reachable as ``deepface:<Name>`` when present.
DEEPFACE_MODELS = ("VGG-Face", "Facenet", "Facenet512", "OpenFace", "DeepFace", "DeepID",
                   "ArcFace", "Dlib", "SFace", "GhostFaceNet")


def _attr(cls_name: str) -> Callable[[ModelContext], AttributeModel]:
    def build(ctx: ModelContext) -> AttributeModel:
        from pipelines import attributes

        return getattr(attributes, cls_name)(ctx)

    return build


ATTRIBUTES: dict[str, Callable[[ModelContext], AttributeModel]] = {
    "age": _attr("AgeModel"),
    "gender": _attr("GenderModel"),
    "emotion": _attr("EmotionModel"),
    "race": _attr("RaceModel"),
}


def build_detector(name: str, ctx: ModelContext) -> Detector:
    try:
        return DETECTORS[name](ctx)
    except KeyError:
        raise UnknownModel(f"unknown detector '{name}'; available: {', '.join(DETECTORS)}",
                           {"detector": name, "available": list(DETECTORS)}) from None


def build_embedder(name: str, ctx: ModelContext) -> Embedder:
    if name in EMBEDDERS:
        return EMBEDDERS[name](ctx)
    if name.startswith("deepface:") and name.split(":", 1)[1] in DEEPFACE_MODELS:
        from pipelines.embed_deepface import DeepFaceEmbedder

        return DeepFaceEmbedder(name, ctx)
    available = list(EMBEDDERS) + [f"deepface:{m}" for m in DEEPFACE_MODELS]
    raise UnknownModel(f"unknown embedding model '{name}'; known: {', '.join(available)}",
                       {"model": name, "available": available})


def build_attribute(action: str, ctx: ModelContext) -> AttributeModel:
    try:
        return ATTRIBUTES[action](ctx)
    except KeyError:
        raise UnknownModel(f"unknown action '{action}'; available: {', '.join(ATTRIBUTES)}",
                           {"action": action, "available": list(ATTRIBUTES)}) from None
