"""Typed results of the facefleet HTTP API.

Frozen dataclasses built from the JSON answers by ``from_json``; each keeps
the answer it came from in ``raw`` so a field the server adds later is still
reachable before this module learns about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _f(v: Any, default: float = 0.0) -> float:
    return default if v is None else float(v)


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Box:
        return cls(int(d["x"]), int(d["y"]), int(d["w"]), int(d["h"]))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


@dataclass(frozen=True)
class DetectedFace:
    box: Box
    confidence: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    crop: str | None = None  # base64 JPEG of the aligned crop, when asked for

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetectedFace:
        marks = {k: (float(v[0]), float(v[1])) for k, v in (d.get("landmarks") or {}).items()}
        return cls(Box.from_json(d["box"]), _f(d.get("confidence")), marks, d.get("crop"))


@dataclass(frozen=True)
class DetectResult:
    faces: list[DetectedFace]
    detector: str
    width: int
    height: int
    time_ms: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetectResult:
        img = d.get("image") or {}
        return cls([DetectedFace.from_json(f) for f in d.get("faces", [])], d.get("detector", ""),
                   int(img.get("width", 0)), int(img.get("height", 0)), _f(d.get("time_ms")), d)


@dataclass(frozen=True)
class EmbeddedFace:
    box: Box
    confidence: float
    embedding: list[float]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EmbeddedFace:
        return cls(Box.from_json(d["box"]), _f(d.get("confidence")),
                   [float(x) for x in d["embedding"]])


@dataclass(frozen=True)
class EmbedResult:
    faces: list[EmbeddedFace]
    model: str
    detector: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EmbedResult:
        return cls([EmbeddedFace.from_json(f) for f in d.get("faces", [])], d.get("model", ""),
                   d.get("detector", ""), d)


@dataclass(frozen=True)
class VerifyResult:
    verified: bool
    distance: float | None  # None: an image had no face (enforce_detection=False)
    threshold: float
    model: str
    detector: str
    box1: Box | None
    box2: Box | None
    time_ms: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VerifyResult:
        faces = d.get("faces") or {}
        b1, b2 = faces.get("img1"), faces.get("img2")
        dist = d.get("distance")
        return cls(bool(d["verified"]), None if dist is None else float(dist),
                   _f(d.get("threshold")),
                   d.get("model", ""), d.get("detector", ""),
                   Box.from_json(b1) if b1 else None, Box.from_json(b2) if b2 else None,
                   _f(d.get("time_ms")), d)


@dataclass(frozen=True)
class AnalyzedFace:
    box: Box
    confidence: float
    attributes: dict[str, Any]  # age, gender, emotion... as the server names them

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AnalyzedFace:
        attrs = {k: v for k, v in d.items() if k not in ("box", "confidence")}
        return cls(Box.from_json(d["box"]), _f(d.get("confidence")), attrs)


@dataclass(frozen=True)
class AnalyzeResult:
    faces: list[AnalyzedFace]
    actions: list[str]
    detector: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AnalyzeResult:
        return cls([AnalyzedFace.from_json(f) for f in d.get("faces", [])],
                   list(d.get("actions", [])), d.get("detector", ""), d)


@dataclass(frozen=True)
class Collection:
    name: str
    model: str
    dim: int
    created_at: float
    faces: int | None = None  # counts come only with collection(name)
    persons: int | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Collection:
        return cls(d["collection"], d.get("model", ""), int(d.get("dim", 0)),
                   _f(d.get("created_at")), d.get("faces"), d.get("persons"), d)


@dataclass(frozen=True)
class Face:
    """A face stored in a collection."""

    id: str
    person_id: str
    collection: str
    created_at: float
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    box: Box | None = None
    replayed: bool = False  # an Idempotency-Key retry answered with the first result

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Face:
        box = d.get("box")
        return cls(d.get("id") or d.get("face_id") or "", d.get("person_id") or "",
                   d.get("collection") or "", _f(d.get("created_at")), d.get("name"),
                   dict(d.get("labels") or {}), Box.from_json(box) if box else None,
                   bool(d.get("replayed", False)))


@dataclass(frozen=True)
class BatchItemResult:
    index: int
    ok: bool
    face_id: str | None = None
    person_id: str | None = None
    box: Box | None = None
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchItemResult:
        err = d.get("error") or {}
        box = d.get("box")
        return cls(int(d["index"]), d.get("status") == "created", d.get("id"),
                   d.get("person_id"), Box.from_json(box) if box else None,
                   err.get("code"), err.get("message"))


@dataclass(frozen=True)
class BatchResult:
    collection: str
    created: int
    failed: int
    results: list[BatchItemResult]
    replayed: bool = False  # a retry under the same Idempotency-Key: the first answer
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchResult:
        return cls(d.get("collection", ""), int(d.get("created", 0)), int(d.get("failed", 0)),
                   [BatchItemResult.from_json(r) for r in d.get("results", [])],
                   bool(d.get("replayed", False)), d)


@dataclass(frozen=True)
class Match:
    face_id: str
    person_id: str
    name: str | None
    labels: dict[str, str]
    distance: float
    match: bool  # distance <= the threshold in force

    @property
    def label(self) -> str:
        return self.name or self.person_id

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Match:
        return cls(d.get("id", ""), d.get("person_id", ""), d.get("name"),
                   dict(d.get("labels") or {}), _f(d.get("distance")), bool(d.get("match")))


@dataclass(frozen=True)
class IdentifiedFace:
    box: Box | None  # None for a probe embedding
    confidence: float | None
    matches: list[Match]  # nearest first
    #: ``enrol_unknown``: this face matched nobody and became ``{person_id, face_id}``
    enrolled: dict[str, str] | None = None

    @property
    def best(self) -> Match | None:
        """The nearest enrolled face if it is within the threshold, else None."""
        return self.matches[0] if self.matches and self.matches[0].match else None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IdentifiedFace:
        box, conf = d.get("box"), d.get("confidence")
        return cls(Box.from_json(box) if box else None, None if conf is None else float(conf),
                   [Match.from_json(m) for m in d.get("matches", [])], d.get("enrolled"))


@dataclass(frozen=True)
class IdentifyResult:
    faces: list[IdentifiedFace]
    collection: str
    model: str
    threshold: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IdentifyResult:
        return cls([IdentifiedFace.from_json(f) for f in d.get("faces", [])],
                   d.get("collection", ""), d.get("model", ""), _f(d.get("threshold")), d)


@dataclass(frozen=True)
class Person:
    person_id: str
    collection: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: list[Face]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Person:
        return cls(d["person_id"], d.get("collection", ""), d.get("name"),
                   dict(d.get("labels") or {}), _f(d.get("created_at")),
                   [Face.from_json(f) for f in d.get("faces", [])], d)


@dataclass(frozen=True)
class Deleted:
    """What a forget call removed."""

    collection: str
    face_ids: list[str]
    person_id: str | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class PersonSummary:
    """A person as a listing shows it."""

    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: int

    @property
    def label(self) -> str:
        return self.name or self.person_id

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PersonSummary:
        return cls(d["person_id"], d.get("name"), dict(d.get("labels") or {}),
                   _f(d.get("created_at")), int(d.get("faces", 0)))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` fetches the next (None: the last page)."""

    collection: str
    items: list[T]
    next_cursor: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class ImportLineError:
    line: int
    code: str
    message: str


@dataclass(frozen=True)
class ImportResult:
    """What an import did: faces read, added, already there, held by another
    collection, and the lines left out (the first 100 in ``errors``)."""

    collection: str
    model: str | None
    dim: int | None
    lines: int
    imported: int
    skipped: int
    elsewhere: int
    failed: int
    errors: list[ImportLineError]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def copied(self) -> dict[str, str]:
        """Faces copied from another collection of the service: old id -> new id."""
        return dict(self.raw.get("copied") or {})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImportResult:
        return cls(d.get("collection", ""), d.get("model"), d.get("dim"),
                   int(d.get("lines", 0)), int(d.get("imported", 0)), int(d.get("skipped", 0)),
                   int(d.get("elsewhere", 0)), int(d.get("failed", 0)),
                   [ImportLineError(int(e["line"]), e["code"], e["message"])
                    for e in d.get("errors", [])], d)


@dataclass(frozen=True)
class ApiKey:
    """An API key made through ``/v1/keys``; ``key`` (the secret) is set only in the
    answer to its creation."""

    id: str
    name: str
    scopes: list[str]
    collections: list[str] | None  # None: every collection
    created_at: float
    last_used_at: float | None = None
    key: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    #: Unix time after which the key is refused (None: never)
    expires_at: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        colls = d.get("collections")
        return cls(d["id"], d.get("name", ""), list(d.get("scopes", [])),
                   None if colls is None else list(colls), _f(d.get("created_at")),
                   d.get("last_used_at"), d.get("key"), d, d.get("expires_at"))


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit trail (fields the action does not use are None)."""

    seq: int
    at: float
    action: str
    collection: str | None
    key_id: str | None
    request_id: str | None
    status: str
    face_ids: list[str] | None = None
    person_id: str | None = None
    matches: list[str | None] | None = None
    target_key_id: str | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(int(d["seq"]), _f(d.get("at")), d.get("action", ""), d.get("collection"),
                   d.get("key_id"), d.get("request_id"), d.get("status", ""),
                   d.get("face_ids"), d.get("person_id"), d.get("matches"),
                   d.get("target_key_id"), d)


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    #: pass it back as ``cursor`` for the next page; None: this was the last one
    next_cursor: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditPage:
        return cls([AuditEntry.from_json(e) for e in d.get("entries", [])],
                   d.get("next_cursor"), d)
