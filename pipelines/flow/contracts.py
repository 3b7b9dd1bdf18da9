"""What the request flow needs from each backend, and what the stages hand each other.

A topology is a choice of four backends (``deployments/serve/backends.py``: Serve
deployment handles for ``topology: separate``, model stages in the ingress
replica for ``fused``, an in-process gallery for tests). These Protocols list
every operation the flow and the HTTP routes call on them, with typed
arguments and results; a backend satisfies them structurally, nothing
forwards unknown names.

A stage call (``detect``, ``embed``, ``analyze``, ``embed_chips``,
``analyze_chips``) returns a :data:`Ref` at once, without waiting: an
awaitable that may be handed to the next stage of the same topology (Serve
passes it on without a round trip through the ingress) or awaited for its
value, which is the result or a ``FacefleetError`` (stages return errors as
values, so one bad item of a batch fails alone). The gallery's own
operations are plain coroutines that raise ``FacefleetError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np

from pipelines.errors import FacefleetError
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest
from pipelines.types import (AnalyzedImage, DetectedImage, EmbeddedImage, GivenEmbedding)

#: an awaitable stage result that may also be handed to the next stage unawaited
Ref: TypeAlias = Awaitable[Any]
#: a JSON-shaped record the gallery answers with (a collection, a face, a page ...)
Record: TypeAlias = dict[str, Any]
#: what reaches the gallery side of identify / register: an embedded image (or the
#: error that image failed with), a client's embedding, or vectors of chips cut
#: from the whole image (DeepFace's stand-in when no face is found)
Embedded: TypeAlias = EmbeddedImage | GivenEmbedding | np.ndarray | FacefleetError


class Actor(Protocol):
    """Who asks (``index.audit.Actor`` satisfies it): the gallery records it."""

    key_id: str | None
    request_id: str | None
    may_create: bool


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class FaceHits:
    """One probe face and its matches, nearest first (``box`` / ``confidence`` are
    None for an embedding the client sent). A match is a gallery hit:
    face_id, person_id, name, labels, similarity, distance."""

    box: dict[str, int] | None
    confidence: float | None
    hits: list[Record]
    #: ``enrol_unknown``: the person and face this face, matching nobody, became
    enrolled: Record | None = None


@dataclass(slots=True)
class IdentifiedImage:
    """What the gallery side of identify answers: the model the probe was embedded
    with and, per face found, its box and matches (no vectors, no landmarks)."""

    model: str
    faces: list[FaceHits]
    detector: str = ""


@dataclass(slots=True)
class RegisteredImages:
    """One result per enrolled image: the face written (with its box) or an error."""

    collection: str
    model: str
    results: list[Record | FacefleetError] = field(default_factory=list)
    replayed: bool = False
    #: this write created the collection (its first enrolment)
    collection_created: bool = False


# --------------------------------------------------------------------------- model stages


class DetectBackend(Protocol):
    def detect(self, request: DetectRequest) -> Ref:
        """-> DetectedImage | FacefleetError"""
        ...

    async def ready(self) -> bool: ...
    async def stats(self) -> Record: ...


class EmbedBackend(Protocol):
    def embed(self, detected: Ref, model: str) -> Ref:
        """(a detect Ref) -> EmbeddedImage | FacefleetError"""
        ...

    def embed_chips(self, request: EmbedRequest) -> Ref:
        """-> np.ndarray (n, dim) | FacefleetError"""
        ...

    async def info(self, model: str) -> Record | FacefleetError: ...
    async def ready(self) -> bool: ...
    async def stats(self) -> Record: ...


class AnalyzeBackend(Protocol):
    def analyze(self, detected: Ref, actions: tuple[str, ...]) -> Ref:
        """(a detect Ref) -> AnalyzedImage | FacefleetError"""
        ...

    def analyze_chips(self, request: AnalyzeRequest) -> Ref:
        """-> list[dict] (one per face) | FacefleetError"""
        ...

    async def info(self, action: str) -> Record | FacefleetError: ...
    async def ready(self) -> bool: ...
    async def stats(self) -> Record: ...


# --------------------------------------------------------------------------- gallery


class GalleryBackend(Protocol):
    """Every gallery operation the flow and the routes use (``index.gallery.
    GalleryService`` plus the functions of ``pipelines.flow.gallery_side`` that
    run next to it and take an embedded image from the stage before)."""

    # -- probes
    async def ready(self) -> bool: ...
    async def metrics(self) -> Record: ...

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                                actor: Actor | None = None) -> Record: ...
    async def get_collection(self, name: str) -> Record: ...
    async def update_collection(self, name: str, changes: Mapping[str, Any],
                                actor: Actor | None = None) -> Record: ...
    async def list_collections(self) -> list[Record]: ...
    async def drop_collection(self, name: str, actor: Actor | None = None) -> Record: ...
    async def stats(self, collection: str) -> Record: ...

    # -- faces and persons
    async def get_face(self, collection: str, face_id: str, with_embedding: bool = False,
                       actor: Actor | None = None) -> Record: ...
    async def delete_face(self, collection: str, face_id: str,
                          actor: Actor | None = None) -> Record: ...
    async def thumbnail(self, collection: str, face_id: str,
                        actor: Actor | None = None) -> bytes: ...
    async def get_person(self, collection: str, person_id: str,
                         actor: Actor | None = None) -> Record: ...
    async def delete_person(self, collection: str, person_id: str,
                            actor: Actor | None = None) -> Record: ...
    async def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                            actor: Actor | None = None) -> Record: ...
    async def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                            actor: Actor | None = None) -> Record: ...
    async def list_persons(self, collection: str, limit: int = 100, cursor: str | None = None,
                           actor: Actor | None = None, q: str | None = None) -> Record: ...
    async def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                         cursor: str | None = None, actor: Actor | None = None) -> Record: ...

    # -- unknown faces: clusters of unnamed persons' faces, at once or as a job
    async def cluster(self, collection: str, threshold: float, scope: str = "unnamed",
                      actor: Actor | None = None, job: bool = False) -> Record: ...
    async def cluster_job(self, collection: str, job_id: str) -> Record: ...

    # -- search, enrolment, export and import
    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None,
                     actor: Actor | None = None) -> list[list[Record]]: ...
    async def replay_register(self, collection: str, idempotency_key: str,
                              request_hash: str) -> Record | None: ...
    async def export_page(self, collection: str, after: int = 0, limit: int = 1000) -> Record: ...
    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                           actor: Actor | None = None, copy: bool = False) -> Record: ...

    # -- the gallery side of the flow (an embedded image straight from the Embedder)
    async def identify_embedded(self, embedded: Ref | Embedded, collection: str, k: int,
                                per_person: bool = False, actor: Actor | None = None,
                                max_distance: float | None = None, model: str | None = None,
                                enrol_unknown: bool | None = None,
                                threshold: float | None = None
                                ) -> IdentifiedImage | FacefleetError:
        """``model``: that of vectors of whole-image chips (an embedded image names its own);
        ``enrol_unknown`` (None: the collection's setting) enrols each face with no
        match within ``threshold`` as a new person."""
        ...
    async def register_embedded(self, collection: str, metas: Sequence[Mapping[str, Any]],
                                idempotency_key: str | None,
                                embedded: Sequence[Ref | Embedded],
                                actor: Actor | None = None, *, request_hash: str | None = None,
                                create: bool = True, every_face: bool = False,
                                model: str | None = None
                                ) -> RegisteredImages | FacefleetError: ...

    # -- audit trail and API keys
    async def record(self, entry: Any) -> None: ...
    async def record_read(self, action: Any, collection: str, rows: int,
                          actor: Actor | None = None) -> None: ...
    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[Record]: ...
    async def create_key(self, key: Any, actor: Actor | None = None) -> Record: ...
    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> Record: ...
    async def list_keys(self) -> list[Record]: ...
    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None) -> tuple[int, list[Any] | None]: ...


__all__ = ["Actor", "AnalyzeBackend", "AnalyzedImage", "DetectBackend", "DetectedImage",
           "EmbedBackend", "Embedded", "FaceHits", "GalleryBackend", "IdentifiedImage", "Record",
           "Ref", "RegisteredImages"]
