"""Typed values passed between pipeline stages (and between Serve deployments).

Plain dataclasses of numbers and small numpy arrays: cheap to pickle across
Ray processes and independent of any model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Names of the five reported landmarks, in the order of ``Face.landmarks``.
#: "left"/"right" are the subject's own sides (the subject's left eye appears on
#: the image's right), as DeepFace and MTCNN report them.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned face box in pixels of the decoded image."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return max(self.w, 0.0) * max(self.h, 0.0)

    def as_dict(self) -> dict[str, int]:
        return {"x": int(round(self.x)), "y": int(round(self.y)),
                "w": int(round(self.w)), "h": int(round(self.h))}

    def iou(self, other: Box) -> float:
        x1, y1 = max(self.x, other.x), max(self.y, other.y)
        x2 = min(self.x + self.w, other.x + other.w)
        y2 = min(self.y + self.h, other.y + other.h)
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def mapped(self, dx: float, dy: float, sw: float, sh: float) -> Box:
        """Centre shifted by (dx*w, dy*h), size scaled by (sw, sh)."""
        w, h = self.w * sw, self.h * sh
        return Box(self.x + self.w / 2 + dx * self.w - w / 2,
                   self.y + self.h / 2 + dy * self.h - h / 2, w, h)

    def clipped(self, width: int, height: int) -> Box:
        x1, y1 = min(max(self.x, 0.0), width), min(max(self.y, 0.0), height)
        x2 = min(max(self.x + self.w, 0.0), width)
        y2 = min(max(self.y + self.h, 0.0), height)
        return Box(x1, y1, x2 - x1, y2 - y1)


@dataclass(slots=True)
class Face:
    """One detected face.

    ``landmarks`` is a (5, 2) float32 array in ``LANDMARK_NAMES`` order;
    ``shape`` holds dlib's 5-point shape (eye corners + nose base, (5, 2)), from
    which every aligned chip is cut, so all models see dlib-style alignment.
    """

    box: Box
    confidence: float
    landmarks: np.ndarray
    shape: np.ndarray | None = None
    #: the box handed to dlib's shape predictor when it differs from ``box``
    #: (detectors map their boxes onto the dlib-HOG box the predictor expects)
    align_box: Box | None = None

    def landmarks_dict(self) -> dict[str, list[float]]:
        return {name: [round(float(x), 1), round(float(y), 1)]
                for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)}


#: How a chip is cut from dlib's 5-point shape (``pipelines.align``):
#: ``dlib``: ``dlib.get_face_chip`` (dlib's own template, what dlib's ResNet and
#: the age/gender networks were trained on); ``warp5``: a similarity warp of the
#: five points onto a 112 px template (the ArcFace-style crop MobileFaceNet takes);
#: ``box``: no alignment, the detector's box grown ``padding`` times about its
#: centre and kept inside the image (the context crop MiniFASNet anti-spoofing
#: models take; ``padding`` is their scale, e.g. 2.7).
CHIP_KINDS = ("dlib", "warp5", "box")


@dataclass(frozen=True, slots=True)
class ChipSpec:
    """An aligned crop of ``size`` px with ``padding``, cut the ``kind`` way."""

    size: int
    padding: float
    kind: str = "dlib"

    def __post_init__(self) -> None:
        if self.kind not in CHIP_KINDS:
            raise ValueError(f"unknown chip kind {self.kind!r}; known: {', '.join(CHIP_KINDS)}")

    @property
    def key(self) -> str:
        # dlib chips keep their historical key ("150@0.25"), which clients of
        # DetectedImage.chips already use; other kinds are prefixed so two kinds
        # of the same size never share a key.
        base = f"{self.size}@{self.padding:g}"
        return base if self.kind == "dlib" else f"{self.kind}:{base}"

    def as_dict(self) -> dict:
        return {"size": self.size, "padding": self.padding, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> ChipSpec:
        return cls(int(d["size"]), float(d["padding"]), str(d.get("kind", "dlib")))


#: the face thumbnails kept for review (``face_thumbnails``): a dlib-aligned 112 px
#: crop with a quarter of padding, a JPEG of a few KB
THUMBNAIL_SPEC = ChipSpec(112, 0.25)
THUMBNAIL_JPEG_QUALITY = 85


@dataclass(slots=True)
class DetectedImage:
    """Detection result for one image: faces (largest first) and their chips."""

    width: int
    height: int
    faces: list[Face]
    #: ChipSpec.key -> (n_faces, size, size, 3) uint8 RGB aligned chips
    chips: dict[str, np.ndarray] = field(default_factory=dict)
    detector: str = ""
    time_ms: float = 0.0
    #: with ``DetectRequest.thumbnails``: a JPEG of each face (``THUMBNAIL_SPEC``)
    thumbnails: list[bytes] | None = None


@dataclass(slots=True)
class EmbeddedImage:
    """Faces of one image with one embedding each: what the embedding stage hands
    on (to the ingress or straight to the gallery), without the chips."""

    width: int
    height: int
    faces: list[Face]
    #: (n_faces, dim) float32 unit vectors, row i for ``faces[i]``
    vectors: np.ndarray
    model: str
    detector: str = ""
    time_ms: float = 0.0
    #: the detector's JPEG thumbnails of the faces, handed on to the gallery
    thumbnails: list[bytes] | None = None


@dataclass(slots=True)
class GivenEmbedding:
    """An embedding a client sent in place of an image (enrol or identify by vector):
    no face box, already checked against the collection's model and dimension."""

    vector: np.ndarray
    model: str


@dataclass(slots=True)
class AnalyzedImage:
    """Faces of one image with their attributes (one dict per face, API-shaped)."""

    width: int
    height: int
    faces: list[Face]
    attributes: list[dict]
    detector: str = ""
