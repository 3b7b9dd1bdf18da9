"""DeepFace REST compatibility: request models, name mapping and distance metrics.

DeepFace's Flask API (``/represent``, ``/verify``, ``/analyze``, ``/register``,
``/search``) takes loosely typed JSON or form fields; the models here accept
the same field names, coerce form strings to their types ("false" is False,
"3" is 3), ignore fields facefleet has no use for, and keep the values DeepFace
clients send. The helpers translate DeepFace model / detector names onto
facefleet's registry and express facefleet's calibrated cosine threshold in
each of DeepFace's distance metrics. Plain Python: no Ray, no FastAPI.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import ValidationError
from index.gallery import COLLECTION_PATTERN

#: DeepFace detector names -> facefleet detectors ("skip": no detection at all).
DETECTOR_MAP: dict[str, str] = {
    "opencv": "opencv-haar",
    "mtcnn": "mtcnn",
    "dlib": "dlib-hog",
    "mediapipe": "blazeface",
    "skip": "skip",
}
#: DeepFace detectors with no facefleet equivalent in the offline pack.
DEEPFACE_ONLY_DETECTORS = ("retinaface", "ssd", "yolov8n", "yolov8m", "yolov8l", "yolov11n",
                           "yolov11s", "yolov11m", "yolov11l", "yolov12n", "yolov12s",
                           "yolov12m", "yolov12l", "yunet", "fastmtcnn", "centerface")
#: facefleet embedder -> the name reported back, DeepFace-style (DeepFace's own
#: name where it wraps the same network).
DEEPFACE_NAME_OF: dict[str, str] = {"dlib": "Dlib", "dlib-native": "Dlib",
                                    "mobilefacenet": "MobileFaceNet",
                                    "dlib+mobilefacenet": "Dlib+MobileFaceNet",
                                    "mfn512": "MFN512", "dlib+mfn512": "Dlib+MFN512",
                                    "dlib+mobilefacenet+mfn512": "Dlib+MobileFaceNet+MFN512"}
#: facefleet's own embedders as clients may spell them (matched case-insensitively):
#: DeepFace has no such models, so these names never mean a ``deepface:`` one.
OWN_MODEL_NAMES: dict[str, str] = {n: n for n in (
    "dlib", "mobilefacenet", "dlib+mobilefacenet", "mfn512", "dlib+mfn512",
    "dlib+mobilefacenet+mfn512")}

Metric = Literal["cosine", "euclidean", "euclidean_l2", "angular"]
DEEPFACE_ACTIONS = ("age", "gender", "emotion", "race")


class _Compat(BaseModel):
    # DeepFace clients send fields facefleet has no use for (normalization,
    # expand_percentage, ...): accept and ignore them, as DeepFace ignores extras.
    model_config = ConfigDict(extra="ignore")

    model_name: str | None = None
    detector_backend: str | None = None
    enforce_detection: bool = True
    align: bool = True
    anti_spoofing: bool = False
    expand_percentage: int = Field(0, ge=0, le=100)
    normalization: str = "base"
    l2_normalize: bool = False


class RepresentBody(_Compat):
    # Any, not str: the multipart parser splits fields annotated as lists on
    # commas, which would cut data URIs apart.
    img: Any = None
    max_faces: int | None = Field(None, ge=1, le=1024)


class DfVerifyBody(_Compat):
    # the name the API has always shown for this body (ConfigDict title)
    model_config = ConfigDict(extra="ignore", title="VerifyBody")

    img1: Any = Field(None, description="image, or a pre-computed embedding (list of floats)")
    img2: Any = Field(None, description="image, or a pre-computed embedding (list of floats)")
    distance_metric: Metric = "cosine"
    threshold: float | None = Field(None, gt=0.0)


class DfAnalyzeBody(_Compat):
    # the name the API has always shown for this body (ConfigDict title)
    model_config = ConfigDict(extra="ignore", title="AnalyzeBody")

    img: Any = None
    actions: list[str] | str | None = None

    @field_validator("actions", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # DeepFace accepts "age,gender", "['age', 'gender']" and real lists; it
        # strips brackets, quotes and spaces from form strings, and so do we.
        if v is None:
            return None
        items = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else v
        if not isinstance(items, list):
            return v
        out: list[str] = []
        for item in items:
            cleaned = str(item)
            for ch in "[]()\"' ":
                cleaned = cleaned.replace(ch, "")
            out.extend(p for p in cleaned.split(",") if p)
        return out


class DfRegisterBody(_Compat):
    # the name the API has always shown for this body (ConfigDict title)
    model_config = ConfigDict(extra="ignore", title="RegisterBody")

    img: Any = None
    img_name: str | None = Field(None, max_length=256)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN,
                                   description="facefleet extension: gallery collection")
    person_id: str | None = Field(None, description="facefleet extension: person to attach to")


class SearchBody(_Compat):
    img: Any = None
    distance_metric: Metric = "cosine"
    k: int | None = Field(None, ge=1, le=1000)
    similarity_search: bool = False
    search_method: str = "exact"
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN,
                                   description="facefleet extension: gallery collection")


class BuildIndexBody(_Compat):
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


# --------------------------------------------------------------------------- answers


class FacialArea(BaseModel):
    x: int | None = None
    y: int | None = None
    w: int | None = None
    h: int | None = None
    left_eye: list[int] | None = None
    right_eye: list[int] | None = None


class Represented(BaseModel):
    embedding: list[float]
    facial_area: FacialArea
    face_confidence: float


class RepresentOut(BaseModel):
    results: list[Represented]


class DfVerifyOut(BaseModel):
    verified: bool
    distance: float
    threshold: float
    confidence: float
    model: str = Field(..., examples=["Dlib"])
    detector_backend: str
    similarity_metric: str
    facial_areas: dict[str, FacialArea]
    time: float


class DfAnalyzed(BaseModel):
    model_config = ConfigDict(extra="allow")  # the attributes asked for

    region: FacialArea
    face_confidence: float


class DfAnalyzeOut(BaseModel):
    results: list[DfAnalyzed]


class DfRegisterOut(BaseModel):
    inserted: int
    collection: str
    faces: list[dict[str, Any]]


class DfSearchHit(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    distance: float
    threshold: float
    confidence: float


class DfSearchOut(BaseModel):
    results: list[list[DfSearchHit]]


class BuildIndexOut(BaseModel):
    message: str


class CompatErrorOut(BaseModel):
    """facefleet's error envelope plus DeepFace's top-level ``exception`` message."""

    error: dict[str, Any]
    exception: str


#: DeepFace answers every client error with 400; facefleet keeps 401 and 5xx
COMPAT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": CompatErrorOut, "description": what} for code, what in (
        (400, "any bad request, as DeepFace answers it"), (401, "missing or unknown API key"),
        (500, "an unexpected error"), (503, "a backend is unavailable (Retry-After)"))}


def embedder_for(model_name: str | None, default: str, known: list[str]) -> str:
    """A DeepFace ``model_name`` as a facefleet embedder name (``None``: the default)."""
    if model_name is None or not str(model_name).strip():
        return default
    name = str(model_name).strip()
    if name in known:  # facefleet's own names are accepted too
        return name
    if name.lower() in OWN_MODEL_NAMES:
        # "Dlib" is the network DeepFace's Dlib wraps, run without TensorFlow; a name
        # the model pack leaves out is refused by the registry, listing what is offered
        return OWN_MODEL_NAMES[name.lower()]
    return name if name.startswith("deepface:") else f"deepface:{name}"


def deepface_model_name(embedder: str) -> str:
    """The name reported back in ``model`` fields, as DeepFace spells it."""
    if embedder in DEEPFACE_NAME_OF:
        return DEEPFACE_NAME_OF[embedder]
    return embedder.split(":", 1)[1] if embedder.startswith("deepface:") else embedder


def detector_for(backend: str | None, default: str, known: list[str]) -> str:
    """A DeepFace ``detector_backend`` as a facefleet detector, or ``"skip"``."""
    if backend is None or not str(backend).strip():
        return default
    name = str(backend).strip()
    if name.lower() in DETECTOR_MAP:
        return DETECTOR_MAP[name.lower()]
    if name in known:
        return name
    available = sorted(set(DETECTOR_MAP) | set(known))
    reason = ("has no equivalent in facefleet's offline model pack"
              if name.lower() in DEEPFACE_ONLY_DETECTORS else "is not a known detector")
    raise ValidationError(f"detector_backend '{name}' {reason}; available: {', '.join(available)}",
                          {"detector_backend": name, "available": available})


def threshold_in(metric: str, cosine_threshold: float) -> float:
    """facefleet's cosine-distance threshold expressed in ``metric``.

    Embeddings are unit vectors, so ``euclidean`` equals ``euclidean_l2`` and
    both are ``sqrt(2 * cosine)``; ``angular`` is DeepFace's ``arccos(sim) / pi``.
    """
    t = float(cosine_threshold)
    if metric == "cosine":
        return t
    if metric in ("euclidean", "euclidean_l2"):
        return math.sqrt(2.0 * t)
    if metric == "angular":
        return math.acos(min(1.0, max(-1.0, 1.0 - t))) / math.pi
    raise ValidationError(f"unknown distance_metric '{metric}'")


def distance_from_similarity(sim: Any, metric: str) -> Any:
    """Cosine similarity of unit vectors (scalar or array) as a distance in ``metric``."""
    sim = np.clip(np.asarray(sim, dtype=np.float64), -1.0, 1.0)
    if metric == "cosine":
        return 1.0 - sim
    if metric in ("euclidean", "euclidean_l2"):
        return np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0))
    if metric == "angular":
        return np.arccos(sim) / math.pi
    raise ValidationError(f"unknown distance_metric '{metric}'")


def distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(len(a), len(b)) distances between unit-vector rows, in ``metric``."""
    return distance_from_similarity(a.astype(np.float64) @ b.astype(np.float64).T, metric)


def confidence(distance: float, threshold: float, verified: bool) -> float:
    """A 0-100 score shaped like DeepFace's: 51-100 for matches, 0-49 otherwise.

    A logistic in distance/threshold; it orders pairs like the distance does
    but is not a calibrated probability (DeepFace fits one per model/metric).
    """
    ratio = distance / threshold if threshold > 0 else float("inf")
    score = 100.0 / (1.0 + math.exp(min(50.0, 8.0 * (ratio - 1.0))))
    score = max(51.0, score) if verified else min(49.0, score)
    return round(min(100.0, max(0.0, score)), 2)


def unit_embedding(value: Any, dim: int, field: str) -> np.ndarray:
    """A pre-computed embedding given in place of an image, L2-normalised."""
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise ValidationError(f"when '{field}' is a list it must hold numbers (an embedding)",
                              {"field": field})
    vec = np.asarray(value, dtype=np.float32)
    if vec.shape != (dim,):
        raise ValidationError(f"'{field}' has {vec.size} dimensions; the model makes {dim}",
                              {"field": field, "dim": dim})
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValidationError(f"'{field}' is not a usable embedding (zero or non-finite)",
                              {"field": field})
    return (vec / norm)[None, :]


def collection_for(collection: str | None, embedder: str) -> str:
    """The gallery collection behind DeepFace's single table: one per model."""
    if collection:
        return collection
    return "deepface-" + embedder.replace(":", "-").replace("/", "-").replace("+", "-").lower()
