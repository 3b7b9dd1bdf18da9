"""The in-process gallery, called synchronously: a store, its shards, the gallery
service and the access service in this process, for tests, benchmarks and
scripts (``index.recipe_import``). The Serve deployment of the same service is
``deployments.serve.gallery.Gallery``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from index.access_service import AccessService
from index.audit import Actor, AuditAction
from index.gallery.service import GalleryService
from index.gallery.shards import LocalShards
from index.shard import IndexConfig, ShardIndex
from index.store import KeyRecord, Store

T = TypeVar("T")


class InProcessGallery:
    """The gallery (a store plus its shards) in this process, called synchronously.

    The shards are :class:`LocalShards` (FAISS), or for a pgvector store the
    SQL search of ``index.pgvector_shards`` (``search="sql"``, its default);
    ``search="faiss"`` serves a pgvector store from FAISS shards too, as its
    change log allows. Each method runs the :class:`GalleryService` (or, for keys
    and the audit trail, the :class:`AccessService`) method of the same name to
    completion on a private event loop thread, so callers use the one gallery
    implementation without asyncio; it is safe to call from several threads.
    """

    def __init__(self, store: Store, nshards: int = 1, config: IndexConfig | None = None,
                 rebuild: bool = True, search: str | None = None,
                 ef_search: int | None = None) -> None:
        self.store = store
        if search is None:
            search = "sql" if store.backend == "pgvector" else "faiss"
        self.local: Any
        if search == "sql":
            from index.pgvector_shards import SqlShards

            self.local = SqlShards(store, ef_search=ef_search)  # type: ignore[arg-type]
            self.shards: list[ShardIndex] = []
        elif search == "faiss":
            self.local = LocalShards(store, nshards, config, rebuild)
            self.shards = self.local.shards
        else:
            raise ValueError(f"unknown search {search!r}: 'faiss' or 'sql'")
        self.service = GalleryService(store, self.local)
        self.access: AccessService = self.service.access
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="gallery-loop")
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.local.close()

    # -- collections
    def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                          actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.create_collection(name, model, dim, exist_ok, actor))

    def get_collection(self, name: str) -> dict[str, Any]:
        return self._run(self.service.get_collection(name))

    def list_collections(self) -> list[dict[str, Any]]:
        return self._run(self.service.list_collections())

    def drop_collection(self, name: str, actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.drop_collection(name, actor))

    # -- faces and persons
    def register(self, collection: str, model: str, dim: int,
                 items: Sequence[Mapping[str, Any]], idempotency_key: str | None = None,
                 create_collection: bool = False, face_ids: Sequence[str] | None = None,
                 request_hash: str | None = None, extra: Any = None,
                 actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.register(
            collection, model, dim, items, idempotency_key, create_collection,
            face_ids=face_ids, request_hash=request_hash, extra=extra, actor=actor))

    def replay_register(self, collection: str, idempotency_key: str,
                        request_hash: str) -> dict[str, Any] | None:
        return self._run(self.service.replay_register(collection, idempotency_key,
                                                      request_hash))

    def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                      person_ids: Sequence[str] | None = None,
                      create_collection: bool = False) -> dict[str, Any]:
        return self._run(self.service.register_bulk(collection, model, dim, embeddings,
                                                    person_ids, create_collection))

    def import_faces(self, collection: str, model: str, dim: int,
                     rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                     actor: Actor | None = None, copy: bool = False) -> dict[str, Any]:
        return self._run(self.service.import_faces(collection, model, dim, rows,
                                                   create_collection, actor, copy))

    def export_page(self, collection: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        return self._run(self.service.export_page(collection, after, limit))

    def search(self, collection: str, model: str, vectors: Any, k: int = 10,
               max_distance: float | None = None,
               actor: Actor | None = None) -> list[list[dict[str, Any]]]:
        return self._run(self.service.search(collection, model, vectors, k, max_distance,
                                             actor))

    def get_face(self, collection: str, face_id: str, with_embedding: bool = False,
                 actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.get_face(collection, face_id, with_embedding, actor))

    def thumbnail(self, collection: str, face_id: str, actor: Actor | None = None) -> bytes:
        return self._run(self.service.thumbnail(collection, face_id, actor))

    def delete_face(self, collection: str, face_id: str,
                    actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.delete_face(collection, face_id, actor))

    def delete_faces(self, collection: str, face_ids: Sequence[str],
                     actor: Actor | None = None) -> list[str]:
        return self._run(self.service.delete_faces(collection, face_ids, actor))

    def get_person(self, collection: str, person_id: str,
                   actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.get_person(collection, person_id, actor))

    def delete_person(self, collection: str, person_id: str,
                      actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.delete_person(collection, person_id, actor))

    def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                      actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.update_person(collection, person_id, changes, actor))

    def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                      actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.merge_persons(collection, person_id, sources, actor))

    def list_persons(self, collection: str, limit: int = 100, cursor: str | None = None,
                     actor: Actor | None = None, q: str | None = None) -> dict[str, Any]:
        return self._run(self.service.list_persons(collection, limit, cursor, actor, q))

    def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                   cursor: str | None = None, actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.service.list_faces(collection, person_id, limit, cursor, actor))

    def cluster(self, collection: str, threshold: float, scope: str = "unnamed",
                actor: Actor | None = None, job: bool = False) -> dict[str, Any]:
        return self._run(self.service.cluster(collection, threshold, scope, actor, job))

    def cluster_job(self, collection: str, job_id: str) -> dict[str, Any]:
        return self._run(self.service.cluster_job(collection, job_id))

    def record_read(self, action: AuditAction | str, collection: str, rows: int,
                    actor: Actor | None = None) -> None:
        self._run(self.service.record_read(action, collection, rows, actor))

    # -- state of the index
    def stats(self, collection: str) -> dict[str, Any]:
        return self._run(self.service.stats(collection))

    def verify(self, collection: str) -> dict[str, Any]:
        return self._run(self.service.verify(collection))

    def shard_info(self) -> list[dict[str, Any]]:
        return self._run(self.service.shard_info())

    def sync_shards(self) -> int:
        return self._run(self.service.sync_shards())

    # -- API keys and the audit trail (the access service)
    def create_key(self, key: KeyRecord, actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.access.create_key(key, actor))

    def revoke_key(self, key_id: str, actor: Actor | None = None) -> dict[str, Any]:
        return self._run(self.access.revoke_key(key_id, actor))

    def list_keys(self) -> list[dict[str, Any]]:
        return self._run(self.access.list_keys())

    def audit_entries(self, collection: str | None = None, action: str | None = None,
                      since: float | None = None, after_seq: int = 0,
                      limit: int = 100) -> list[dict[str, Any]]:
        return self._run(self.access.audit_entries(collection, action, since, after_seq,
                                                   limit))

    def prune_audit(self, now: float | None = None) -> int:
        return self._run(self.access.prune_audit(now))
