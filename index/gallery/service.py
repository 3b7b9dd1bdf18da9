"""The gallery service: every gallery operation, store first and then a
:class:`~index.gallery.shards.ShardSet` (the in-process ``LocalShards``, the SQL
search of ``index.pgvector_shards``, or the shard actors of the Ray deployment in
``deployments/serve/gallery.py``, which *is* this service with Ray shards), so there is
one implementation of the gallery, not two. Every write is committed to the
store before any shard sees it, and a call returns only after the shards applied
it; a shard that missed it catches up from the store's change log. Identify and
read entries of the audit trail are recorded through the access service
(:class:`index.access_service.AccessService`), which also owns the API keys.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipelines.errors import ModelMismatch, NotFound
from index.access_service import AccessService
from index.audit import Actor, AuditAction
from index.gallery.checks import check_collection_name
from index.gallery.clusters import ClusterService
from index.gallery.core import GalleryCore, collection_dict
from index.gallery.shards import Plan, ShardSet, verify_ids
from index.store import CollectionInfo, Store


class GalleryService:
    """Every gallery operation: validate, commit to the store, update the shards.

    Store calls block (sqlite3 / psycopg), so they run on a small pool of
    threads of their own (each keeps its own connection). The collections a
    search names are cached for ``cache_ttl_s`` (the same period in which
    shards catch up on changes they missed), so an identify reads the store
    once, to resolve its hits; this replica's own drops invalidate at once.
    """

    def __init__(self, store: Store, shards: ShardSet, store_threads: int = 8,
                 cache_ttl_s: float = 2.0, audit_identify: bool = True,
                 audit_reads: bool = True, access: AccessService | None = None,
                 cluster_sync_max_faces: int = 10_000) -> None:
        self.store = store
        self.shards = shards
        self.core = GalleryCore(store, shards.nshards)
        self._db_pool = ThreadPoolExecutor(max_workers=store_threads,
                                           thread_name_prefix="store")
        self._ttl = cache_ttl_s
        self._infos: dict[str, tuple[float, CollectionInfo]] = {}
        self.audit_identify = audit_identify
        self.audit_reads = audit_reads
        #: where identify and read entries are recorded (the audit trail's service);
        #: by default one over the same store and threads
        self.access = access if access is not None else AccessService(store, self._db_pool)
        #: clustering runs and jobs over the same store threads
        self.clusters = ClusterService(store, self._db, cluster_sync_max_faces)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def _info(self, name: str) -> CollectionInfo:
        hit = self._infos.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        info = await self._db(self.core.collection, name)
        self._infos[name] = (time.monotonic(), info)
        return info

    def _forget_info(self, name: str) -> None:
        self._infos.pop(name, None)

    async def _apply(self, plan: Plan) -> None:
        """Send a committed write's ops to the shards."""
        await self.shards.apply(plan)

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                                actor: Actor | None = None) -> dict[str, Any]:
        return await self._db(self.core.create_collection, name, model, dim, exist_ok, actor)

    async def update_collection(self, name: str, changes: Mapping[str, Any],
                                actor: Actor | None = None) -> dict[str, Any]:
        self._forget_info(name)
        out = await self._db(self.core.update_collection, name, changes, actor)
        self._forget_info(name)
        return out

    async def collection_settings(self, name: str) -> dict[str, Any]:
        """The collection's settings as a search sees them (cached for the sync interval)."""
        return collection_dict(await self._info(check_collection_name(name)))

    async def get_collection(self, name: str) -> dict[str, Any]:
        # the same cached row identify resolves with: a cold identify reads it once
        return collection_dict(await self._info(name))

    async def list_collections(self) -> list[dict[str, Any]]:
        return await self._db(self.core.list_collections)

    async def drop_collection(self, name: str, actor: Actor | None = None) -> dict[str, Any]:
        self._forget_info(name)
        result, plan = await self._db(self.core.drop_collection, name, actor)
        await self._apply(plan)
        return result

    # -- faces
    async def register(self, collection: str, model: str, dim: int,
                       items: Sequence[Mapping[str, Any]], idempotency_key: str | None = None,
                       create_collection: bool = False,
                       face_ids: Sequence[str] | None = None, request_hash: str | None = None,
                       extra: Any = None, actor: Actor | None = None,
                       action: AuditAction | str = AuditAction.FACE_REGISTER
                       ) -> dict[str, Any]:
        result, plan = await self._db(functools.partial(
            self.core.register, collection, model, dim, items, idempotency_key,
            create_collection, face_ids=face_ids, request_hash=request_hash, extra=extra,
            actor=actor, action=action))
        await self._apply(plan)
        return result

    async def replay_register(self, collection: str, idempotency_key: str,
                              request_hash: str) -> dict[str, Any] | None:
        """The first answer of a register made under ``idempotency_key`` (its faces
        re-sent to the shards, as any replay does), or None when none was committed."""
        result, plan = await self._db(self.core.replay_register, collection,
                                      idempotency_key, request_hash)
        if result is not None:
            await self._apply(plan)
        return result

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                           actor: Actor | None = None, copy: bool = False) -> dict[str, Any]:
        result, plan = await self._db(self.core.import_faces, collection, model, dim, rows,
                                      create_collection, actor, copy)
        await self._apply(plan)
        return result

    async def export_page(self, collection: str, after: int = 0,
                          limit: int = 1000) -> dict[str, Any]:
        return await self._db(self.core.export_page, collection, after, limit)

    async def list_persons(self, collection: str, limit: int = 100,
                           cursor: str | None = None, actor: Actor | None = None,
                           q: str | None = None) -> dict[str, Any]:
        out = await self._db(self.core.list_persons, collection, limit, cursor, q)
        await self.record_read(AuditAction.PERSONS_LIST, collection, len(out["persons"]), actor)
        return out

    async def list_faces(self, collection: str, person_id: str | None = None,
                         limit: int = 100, cursor: str | None = None,
                         actor: Actor | None = None) -> dict[str, Any]:
        out = await self._db(self.core.list_faces, collection, person_id, limit, cursor)
        await self.record_read(AuditAction.FACES_LIST, collection, len(out["faces"]), actor)
        return out

    async def record_read(self, action: AuditAction | str, collection: str, rows: int,
                          actor: Actor | None = None) -> None:
        """Record that ``actor`` read ``rows`` rows of ``collection`` (``audit.reads``);
        durable before the caller answers, so no read leaves unrecorded."""
        if actor is None or not self.audit_reads:
            return
        entry = actor.entry(AuditAction(action), collection)
        entry.rows = int(rows)
        await self.access.record(entry)

    async def cluster(self, collection: str, threshold: float, scope: str = "unnamed",
                      actor: Actor | None = None, job: bool = False) -> dict[str, Any]:
        """The collection's faces in scope grouped into candidate people (or a job
        started for a large collection): :class:`ClusterService`."""
        out = await self.clusters.cluster(await self._info(collection), threshold, scope, job)
        await self.record_read(AuditAction.CLUSTERS, collection, out.get("faces", 0), actor)
        return out

    async def cluster_job(self, collection: str, job_id: str) -> dict[str, Any]:
        return await self.clusters.job(await self._info(collection), job_id)

    async def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                            actor: Actor | None = None) -> dict[str, Any]:
        return await self._db(self.core.update_person, collection, person_id, changes, actor)

    async def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                            actor: Actor | None = None) -> dict[str, Any]:
        return await self._db(self.core.merge_persons, collection, person_id, sources, actor)

    async def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                            person_ids: Sequence[str] | None = None,
                            create_collection: bool = False) -> dict[str, Any]:
        result, plan = await self._db(self.core.register_bulk, collection, model, dim,
                                      embeddings, person_ids, create_collection)
        await self._apply(plan)
        return result

    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None,
                     actor: Actor | None = None) -> list[list[dict[str, Any]]]:
        """The nearest faces of each query vector; with an ``actor`` (and
        ``audit_identify``) the search is recorded before it is answered."""
        info = await self._info(check_collection_name(collection))
        try:
            queries = self.core.check_search(info, model, vectors, k)
        except ModelMismatch:
            self._forget_info(collection)  # perhaps dropped and made again with another model
            info = await self._info(collection)
            queries = self.core.check_search(info, model, vectors, k)
        scores, ids = await self._search_shards(info.id, queries, int(k))
        hits = await self._db(self.core.resolve, info, scores, ids, max_distance)
        if actor is not None and self.audit_identify:
            entry = actor.entry(AuditAction.IDENTIFY, info.name)
            entry.matches = [row[0]["face_id"] if row else None for row in hits]
            await self.access.record(entry)
        return hits

    async def _search_shards(self, cid: int, queries: np.ndarray,
                             k: int) -> tuple[np.ndarray, np.ndarray]:
        """The merged top-k of every shard (the Ray deployment batches this)."""
        return await self.shards.search(cid, queries, k)

    async def get_face(self, collection: str, face_id: str,
                       with_embedding: bool = False, actor: Actor | None = None
                       ) -> dict[str, Any]:
        out = await self._db(self.core.get_face, collection, face_id, with_embedding)
        await self.record_read(AuditAction.FACE_READ, collection, 1, actor)
        return out

    async def thumbnail(self, collection: str, face_id: str,
                        actor: Actor | None = None) -> bytes:
        """The face's JPEG thumbnail (a read of stored data: recorded, without it)."""
        out = await self._db(self.core.thumbnail, collection, face_id)
        await self.record_read(AuditAction.FACE_READ, collection, 1, actor)
        return out

    async def delete_face(self, collection: str, face_id: str,
                          actor: Actor | None = None) -> dict[str, Any]:
        deleted = await self.delete_faces(collection, [face_id], actor)
        if not deleted:
            raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
        return {"face_id": face_id, "collection": collection, "deleted": True}

    async def delete_faces(self, collection: str, face_ids: Sequence[str],
                           actor: Actor | None = None) -> list[str]:
        deleted, plan = await self._db(self.core.delete_faces, collection, face_ids, actor)
        await self._apply(plan)
        return deleted

    async def get_person(self, collection: str, person_id: str,
                         actor: Actor | None = None) -> dict[str, Any]:
        out = await self._db(self.core.get_person, collection, person_id)
        await self.record_read(AuditAction.PERSON_READ, collection, len(out["faces"]), actor)
        return out

    async def delete_person(self, collection: str, person_id: str,
                            actor: Actor | None = None) -> dict[str, Any]:
        result, plan = await self._db(self.core.delete_person, collection, person_id, actor)
        await self._apply(plan)
        return result

    async def stats(self, collection: str) -> dict[str, Any]:
        info, out = await self._db(self.core.stats, collection)
        out["shard_sizes"] = await self.shards.sizes(info.id)
        return out

    async def verify(self, collection: str) -> dict[str, Any]:
        """Store vs index ids of a collection (an admin / test check)."""
        info = await self._db(self.core.collection, collection)
        index_ids = await self.shards.ids(info.id)
        return verify_ids(await self._db(self.store.face_ids_internal, info.id), index_ids)

    async def shard_info(self) -> list[dict[str, Any]]:
        return await self.shards.info()

    async def sync_shards(self) -> int:
        """Make every shard catch up on changes it missed now (they also do on a timer)."""
        return await self.shards.sync()
