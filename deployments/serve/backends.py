"""The backends of ``pipelines.flow.Flow``: Serve deployment handles, or stages in-process.

Each class satisfies one Protocol of ``pipelines.flow.contracts`` with
explicit methods (nothing is forwarded by name). Over Serve, every stage call
returns the handle's ``DeploymentResponse`` at once and the next stage
receives it as an argument, so Serve hands the Detector's result to the
Embedder (and the Embedder's to the Gallery) without the ingress awaiting,
decoding and re-sending it. In-process (the fused topology, and tests without
Ray), a reference is an ``asyncio`` task: the next stage awaits it where it
runs. The Gallery is always a deployment when the app has one; given an
in-process reference it awaits it first (there is no hop to save).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.errors import FacefleetError
from pipelines.flow.contracts import (Actor, Embedded, IdentifiedImage, Record, Ref,
                                      RegisteredImages)
from pipelines.flow.gallery_side import identify_embedded, register_embedded
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest


def _is_serve_response(value: Any) -> bool:
    from ray.serve.handle import DeploymentResponse

    return isinstance(value, DeploymentResponse)


# --------------------------------------------------------------------------- Serve


class ServeDetector:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def detect(self, request: DetectRequest) -> Ref:
        return self._h.detect.remote(request)

    async def ready(self) -> bool:
        return await self._h.ready.remote()

    async def stats(self) -> Record:
        return await self._h.stats.remote()


class ServeEmbedder:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def embed(self, detected: Ref, model: str) -> Ref:
        return self._h.embed.remote(detected, model)

    def embed_chips(self, request: EmbedRequest) -> Ref:
        return self._h.embed_chips.remote(request)

    async def info(self, model: str) -> Record | FacefleetError:
        return await self._h.embedder_info.remote(model)

    async def ready(self) -> bool:
        return await self._h.ready.remote()

    async def stats(self) -> Record:
        return await self._h.stats.remote()


class ServeAnalyzer:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def analyze(self, detected: Ref, actions: tuple[str, ...]) -> Ref:
        return self._h.analyze.remote(detected, actions)

    def analyze_chips(self, request: AnalyzeRequest) -> Ref:
        return self._h.analyze_chips.remote(request)

    async def info(self, action: str) -> Record | FacefleetError:
        return await self._h.attribute_info.remote(action)

    async def ready(self) -> bool:
        return await self._h.ready.remote()

    async def stats(self) -> Record:
        return await self._h.stats.remote()


class ServeGallery:
    """The Gallery deployment (``deployments.serve.gallery.Gallery``) through its handle."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @staticmethod
    async def _value(ref: Any) -> Any:
        if _is_serve_response(ref) or not inspect.isawaitable(ref):
            return ref  # Serve resolves a response argument where the Gallery runs
        return await ref

    # -- probes
    async def ready(self) -> bool:
        return await self._h.ready.remote()

    async def metrics(self) -> Record:
        return await self._h.metrics.remote()

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                                actor: Actor | None = None) -> Record:
        return await self._h.create_collection.remote(name, model, dim, exist_ok, actor)

    async def get_collection(self, name: str) -> Record:
        return await self._h.get_collection.remote(name)

    async def update_collection(self, name: str, changes: Mapping[str, Any],
                                actor: Actor | None = None) -> Record:
        return await self._h.update_collection.remote(name, dict(changes), actor)

    async def list_collections(self) -> list[Record]:
        return await self._h.list_collections.remote()

    async def drop_collection(self, name: str, actor: Actor | None = None) -> Record:
        return await self._h.drop_collection.remote(name, actor)

    async def stats(self, collection: str) -> Record:
        return await self._h.stats.remote(collection)

    # -- faces and persons
    async def get_face(self, collection: str, face_id: str, with_embedding: bool = False,
                       actor: Actor | None = None) -> Record:
        return await self._h.get_face.remote(collection, face_id, with_embedding, actor)

    async def delete_face(self, collection: str, face_id: str,
                          actor: Actor | None = None) -> Record:
        return await self._h.delete_face.remote(collection, face_id, actor)

    async def thumbnail(self, collection: str, face_id: str,
                        actor: Actor | None = None) -> bytes:
        return await self._h.thumbnail.remote(collection, face_id, actor)

    async def get_person(self, collection: str, person_id: str,
                         actor: Actor | None = None) -> Record:
        return await self._h.get_person.remote(collection, person_id, actor)

    async def delete_person(self, collection: str, person_id: str,
                            actor: Actor | None = None) -> Record:
        return await self._h.delete_person.remote(collection, person_id, actor)

    async def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                            actor: Actor | None = None) -> Record:
        return await self._h.update_person.remote(collection, person_id, changes, actor)

    async def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                            actor: Actor | None = None) -> Record:
        return await self._h.merge_persons.remote(collection, person_id, list(sources), actor)

    async def list_persons(self, collection: str, limit: int = 100, cursor: str | None = None,
                           actor: Actor | None = None, q: str | None = None) -> Record:
        return await self._h.list_persons.remote(collection, limit, cursor, actor, q)

    async def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                         cursor: str | None = None, actor: Actor | None = None) -> Record:
        return await self._h.list_faces.remote(collection, person_id, limit, cursor, actor)

    # -- unknown faces
    async def cluster(self, collection: str, threshold: float, scope: str = "unnamed",
                      actor: Actor | None = None, job: bool = False) -> Record:
        return await self._h.cluster.remote(collection, threshold, scope, actor, job)

    async def cluster_job(self, collection: str, job_id: str) -> Record:
        return await self._h.cluster_job.remote(collection, job_id)

    # -- search, enrolment, export and import
    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None,
                     actor: Actor | None = None) -> list[list[Record]]:
        return await self._h.search.remote(collection, model, vectors, k, max_distance, actor)

    async def replay_register(self, collection: str, idempotency_key: str,
                              request_hash: str) -> Record | None:
        return await self._h.replay_register.remote(collection, idempotency_key, request_hash)

    async def export_page(self, collection: str, after: int = 0, limit: int = 1000) -> Record:
        return await self._h.export_page.remote(collection, after, limit)

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                           actor: Actor | None = None, copy: bool = False) -> Record:
        return await self._h.import_faces.remote(collection, model, dim, rows,
                                                 create_collection, actor, copy)

    # -- the gallery side of the flow
    async def identify_embedded(self, embedded: Ref | Embedded, collection: str, k: int,
                                per_person: bool = False, actor: Actor | None = None,
                                max_distance: float | None = None, model: str | None = None,
                                enrol_unknown: bool | None = None,
                                threshold: float | None = None
                                ) -> IdentifiedImage | FacefleetError:
        return await self._h.identify_embedded.remote(await self._value(embedded), collection,
                                                      k, per_person, actor, max_distance, model,
                                                      enrol_unknown, threshold)

    async def register_embedded(self, collection: str, metas: Sequence[Mapping[str, Any]],
                                idempotency_key: str | None,
                                embedded: Sequence[Ref | Embedded],
                                actor: Actor | None = None, *, request_hash: str | None = None,
                                create: bool = True, every_face: bool = False,
                                model: str | None = None) -> RegisteredImages | FacefleetError:
        # each reference a top-level argument: Serve resolves those where the Gallery runs
        refs = [await self._value(e) for e in embedded]
        return await self._h.register_embedded.remote(
            collection, list(metas), idempotency_key, actor, *refs, request_hash=request_hash,
            create=create, every_face=every_face, model=model)

    # -- audit trail and API keys
    async def record(self, entry: Any) -> None:
        await self._h.record.remote(entry)

    async def record_read(self, action: Any, collection: str, rows: int,
                          actor: Actor | None = None) -> None:
        await self._h.record_read.remote(action, collection, rows, actor)

    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[Record]:
        return await self._h.audit_entries.remote(collection, action, since, after_seq, limit)

    async def create_key(self, key: Any, actor: Actor | None = None) -> Record:
        return await self._h.create_key.remote(key, actor)

    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> Record:
        return await self._h.revoke_key.remote(key_id, actor)

    async def list_keys(self) -> list[Record]:
        return await self._h.list_keys.remote()

    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None) -> tuple[int, list[Any] | None]:
        return await self._h.key_table.remote(known_version, used)


# --------------------------------------------------------------------------- in-process


class _LocalProbes:
    """``ready`` / ``stats`` of the model stages in this replica (``LocalStages``)."""

    def __init__(self, stages: Any) -> None:
        self.stages = stages

    async def ready(self) -> bool:
        return await self.stages.ready()

    async def stats(self) -> Record:
        return await self.stages.stats()


class LocalDetector(_LocalProbes):
    def detect(self, request: DetectRequest) -> Ref:
        return asyncio.ensure_future(self.stages.detect(request))


class LocalEmbedder(_LocalProbes):
    def embed(self, detected: Ref, model: str) -> Ref:
        async def run() -> Any:
            return await self.stages.embed(await detected, model)

        return asyncio.ensure_future(run())

    def embed_chips(self, request: EmbedRequest) -> Ref:
        return asyncio.ensure_future(self.stages.embed_chips(request))

    async def info(self, model: str) -> Record | FacefleetError:
        return await self.stages.embedder_info(model)


class LocalAnalyzer(_LocalProbes):
    def analyze(self, detected: Ref, actions: tuple[str, ...]) -> Ref:
        async def run() -> Any:
            return await self.stages.analyze(await detected, actions)

        return asyncio.ensure_future(run())

    def analyze_chips(self, request: AnalyzeRequest) -> Ref:
        return asyncio.ensure_future(self.stages.analyze_chips(request))

    async def info(self, action: str) -> Record | FacefleetError:
        return await self.stages.attribute_info(action)


class LocalGallery:
    """An ``index.gallery.GalleryService`` in this process (tests without Ray)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    # -- probes
    async def ready(self) -> bool:
        return True

    async def metrics(self) -> Record:
        from index.health import gallery_metrics

        shards = self.service.shards
        fetch: list[asyncio.Future] = []

        async def info(i: int) -> dict[str, Any]:  # one copy per in-process shard
            if not fetch:  # all shards at once, after the store was read
                fetch.append(asyncio.ensure_future(shards.info()))
            return (await fetch[0])[i]

        return await gallery_metrics(self.service.store, self.service._db,
                                     [[lambda i=i: info(i)] for i in range(shards.nshards)])

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                                actor: Actor | None = None) -> Record:
        return await self.service.create_collection(name, model, dim, exist_ok, actor)

    async def get_collection(self, name: str) -> Record:
        return await self.service.get_collection(name)

    async def update_collection(self, name: str, changes: Mapping[str, Any],
                                actor: Actor | None = None) -> Record:
        return await self.service.update_collection(name, changes, actor)

    async def list_collections(self) -> list[Record]:
        return await self.service.list_collections()

    async def drop_collection(self, name: str, actor: Actor | None = None) -> Record:
        return await self.service.drop_collection(name, actor)

    async def stats(self, collection: str) -> Record:
        return await self.service.stats(collection)

    # -- faces and persons
    async def get_face(self, collection: str, face_id: str, with_embedding: bool = False,
                       actor: Actor | None = None) -> Record:
        return await self.service.get_face(collection, face_id, with_embedding, actor)

    async def delete_face(self, collection: str, face_id: str,
                          actor: Actor | None = None) -> Record:
        return await self.service.delete_face(collection, face_id, actor)

    async def thumbnail(self, collection: str, face_id: str,
                        actor: Actor | None = None) -> bytes:
        return await self.service.thumbnail(collection, face_id, actor)

    async def get_person(self, collection: str, person_id: str,
                         actor: Actor | None = None) -> Record:
        return await self.service.get_person(collection, person_id, actor)

    async def delete_person(self, collection: str, person_id: str,
                            actor: Actor | None = None) -> Record:
        return await self.service.delete_person(collection, person_id, actor)

    async def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                            actor: Actor | None = None) -> Record:
        return await self.service.update_person(collection, person_id, changes, actor)

    async def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                            actor: Actor | None = None) -> Record:
        return await self.service.merge_persons(collection, person_id, sources, actor)

    async def list_persons(self, collection: str, limit: int = 100, cursor: str | None = None,
                           actor: Actor | None = None, q: str | None = None) -> Record:
        return await self.service.list_persons(collection, limit, cursor, actor, q)

    async def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                         cursor: str | None = None, actor: Actor | None = None) -> Record:
        return await self.service.list_faces(collection, person_id, limit, cursor, actor)

    # -- unknown faces
    async def cluster(self, collection: str, threshold: float, scope: str = "unnamed",
                      actor: Actor | None = None, job: bool = False) -> Record:
        return await self.service.cluster(collection, threshold, scope, actor, job)

    async def cluster_job(self, collection: str, job_id: str) -> Record:
        return await self.service.cluster_job(collection, job_id)

    # -- search, enrolment, export and import
    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None,
                     actor: Actor | None = None) -> list[list[Record]]:
        return await self.service.search(collection, model, vectors, k, max_distance, actor)

    async def replay_register(self, collection: str, idempotency_key: str,
                              request_hash: str) -> Record | None:
        return await self.service.replay_register(collection, idempotency_key, request_hash)

    async def export_page(self, collection: str, after: int = 0, limit: int = 1000) -> Record:
        return await self.service.export_page(collection, after, limit)

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                           actor: Actor | None = None, copy: bool = False) -> Record:
        return await self.service.import_faces(collection, model, dim, rows, create_collection,
                                               actor, copy)

    # -- the gallery side of the flow
    async def identify_embedded(self, embedded: Ref | Embedded, collection: str, k: int,
                                per_person: bool = False, actor: Actor | None = None,
                                max_distance: float | None = None, model: str | None = None,
                                enrol_unknown: bool | None = None,
                                threshold: float | None = None
                                ) -> IdentifiedImage | FacefleetError:
        value = await embedded if inspect.isawaitable(embedded) else embedded
        return await identify_embedded(self.service, value, collection, k, per_person, actor,
                                       max_distance, model, enrol_unknown, threshold)

    async def register_embedded(self, collection: str, metas: Sequence[Mapping[str, Any]],
                                idempotency_key: str | None,
                                embedded: Sequence[Ref | Embedded],
                                actor: Actor | None = None, *, request_hash: str | None = None,
                                create: bool = True, every_face: bool = False,
                                model: str | None = None) -> RegisteredImages | FacefleetError:
        values = [await e if inspect.isawaitable(e) else e for e in embedded]
        return await register_embedded(self.service, collection, metas, idempotency_key, values,
                                       actor, request_hash, create, every_face, model)

    # -- audit trail and API keys: the access service beside the gallery service
    async def record(self, entry: Any) -> None:
        await self.service.access.record(entry)

    async def record_read(self, action: Any, collection: str, rows: int,
                          actor: Actor | None = None) -> None:
        await self.service.record_read(action, collection, rows, actor)

    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[Record]:
        return await self.service.access.audit_entries(collection, action, since, after_seq,
                                                       limit)

    async def create_key(self, key: Any, actor: Actor | None = None) -> Record:
        return await self.service.access.create_key(key, actor)

    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> Record:
        return await self.service.access.revoke_key(key_id, actor)

    async def list_keys(self) -> list[Record]:
        return await self.service.access.list_keys()

    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None) -> tuple[int, list[Any] | None]:
        return await self.service.access.key_table(known_version, used)
