"""Ray layer of the gallery: ``IndexShard`` actors and the ``Gallery`` deployment.

Each ``IndexShard`` is a named, detached Ray actor wrapping one
``index.shard.ShardIndex``; it rebuilds its FAISS indexes from the store when
it starts, so a crashed shard restarts (``max_restarts=-1``) with every
acknowledged face and none of the forgotten ones, and calls in flight are
retried on the restarted actor (``max_task_retries=-1``; shard ops are safe to
repeat). Shards are shared by all replicas of ``Gallery`` (named actors,
``get_if_exists``), never duplicated per replica. ``Gallery`` commits every
write to the store first (``index.gallery.GalleryCore``, in a worker thread),
then awaits the shard updates, then acknowledges. Concurrent searches are
batched (``serve.batch``) into one call per shard and collection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from configs.settings import IndexSettings
from index.gallery import GalleryCore, Plan, collection_dict, verify_ids
from index.merge import merge_topk
from index.shard import IndexConfig, ShardIndex
from index.store import open_store
from configs.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

NAMESPACE = "facefleet"


@ray.remote
class IndexShard:
    """One shard as a Ray actor; its state is rebuilt from the store on (re)start."""

    def __init__(self, shard_no: int, nshards: int, store: dict[str, Any],
                 index: dict[str, Any], faiss_threads: int = 1) -> None:
        import faiss

        # tiny per-query matmuls: more threads only add contention on small machines
        faiss.omp_set_num_threads(max(1, faiss_threads))
        self._shard = ShardIndex(shard_no, nshards, IndexConfig(**index))
        st = open_store(**store)
        try:
            self._shard.rebuild(st)
        finally:
            st.close()  # the store is only read at start; keep no idle connections

    def ready(self) -> dict[str, Any]:
        return {"shard": self._shard.shard_no, "pid": os.getpid(),
                "rebuild_seconds": self._shard.rebuild_seconds}

    def apply(self, ops: list[Any]) -> None:
        self._shard.apply(ops)

    def search(self, cid: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._shard.search(cid, queries, k)

    def size(self, cid: int) -> int:
        return self._shard.size(cid)

    def ids(self, cid: int) -> np.ndarray:
        return self._shard.ids(cid)

    def info(self) -> dict[str, Any]:
        out = self._shard.info()
        out["pid"] = os.getpid()
        out["rss_bytes"] = _rss_bytes()
        return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The deployment's constructor dict: ``IndexSettings`` fields plus ``data_dir``
    and a few Ray knobs (``shard_num_cpus``, ``faiss_threads``, ``search_batch_size``,
    ``search_batch_wait_s``)."""
    known = set(IndexSettings.model_fields)
    index = IndexSettings(**{k: v for k, v in settings.items() if k in known})
    return {
        "index": index,
        "data_dir": str(Path(settings.get("data_dir", "data")).resolve()),
        "shard_num_cpus": float(settings.get("shard_num_cpus", 0.0)),
        "faiss_threads": int(settings.get("faiss_threads", 1)),
        "search_batch_size": int(settings.get("search_batch_size", 32)),
        "search_batch_wait_s": float(settings.get("search_batch_wait_s", 0.002)),
    }


def shard_handles(cfg: dict[str, Any]) -> list[Any]:
    """Get or create the shard actors of this store + index configuration."""
    index: IndexSettings = cfg["index"]
    store = {"backend": index.backend, "database_url": index.database_url,
             "data_dir": cfg["data_dir"]}
    icfg = {"index_type": index.index_type, "ivf_nlist": index.ivf_nlist,
            "ivf_nprobe": index.ivf_nprobe}
    # the name pins the store and index layout: another store never gets these shards
    key = hashlib.sha256(json.dumps([store, icfg, index.shards], sort_keys=True).encode())
    prefix = f"gallery-{key.hexdigest()[:12]}"
    return [
        IndexShard.options(
            name=f"{prefix}-{i}of{index.shards}", namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, max_restarts=-1, max_task_retries=-1,
            num_cpus=cfg["shard_num_cpus"],
        ).remote(i, index.shards, store, icfg, cfg["faiss_threads"])
        for i in range(index.shards)
    ]


@serve.deployment(max_ongoing_requests=64)
class Gallery:
    """Register / identify / forget over sharded FAISS and the durable store."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        cfg = parse_settings(settings)
        index: IndexSettings = cfg["index"]
        self._store = open_store(index.backend, index.database_url, cfg["data_dir"])
        self._core = GalleryCore(self._store, index.shards)
        self._index_type = index.index_type
        self._shards = shard_handles(cfg)
        ray.get([s.ready.remote() for s in self._shards])  # rebuilt before serving
        self._search_batched.set_max_batch_size(cfg["search_batch_size"])
        self._search_batched.set_batch_wait_timeout_s(cfg["search_batch_wait_s"])

    # -- plumbing
    @staticmethod
    async def _store_call(fn: Any, *args: Any) -> Any:
        # store calls block (sqlite3 / psycopg): keep them off the event loop
        return await asyncio.to_thread(fn, *args)

    async def _shards_call(self, method: str, *args: Any) -> list[Any]:
        try:
            return await asyncio.gather(*[getattr(s, method).remote(*args) for s in self._shards])
        except ray.exceptions.RayActorError as e:
            raise Unavailable(f"an index shard is unavailable: {e}") from e

    async def _apply(self, plan: Plan) -> None:
        try:
            await asyncio.gather(*[s.apply.remote(ops)
                                   for s, ops in zip(self._shards, plan, strict=True) if ops])
        except ray.exceptions.RayActorError as e:
            # committed, so a restarting shard will hold it; the caller may retry
            raise Unavailable(f"an index shard is unavailable: {e}") from e

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int,
                                exist_ok: bool = False) -> dict[str, Any]:
        return await self._store_call(self._core.create_collection, name, model, dim, exist_ok)

    async def get_collection(self, name: str) -> dict[str, Any]:
        return collection_dict(await self._store_call(self._core.collection, name))

    async def list_collections(self) -> list[dict[str, Any]]:
        return await self._store_call(self._core.list_collections)

    async def drop_collection(self, name: str) -> dict[str, Any]:
        result, plan = await self._store_call(self._core.drop_collection, name)
        await self._apply(plan)
        return result

    # -- faces
    async def register(self, collection: str, model: str, dim: int,
                       items: Sequence[Mapping[str, Any]], idempotency_key: str | None = None,
                       create_collection: bool = False) -> dict[str, Any]:
        result, plan = await self._store_call(self._core.register, collection, model, dim,
                                              items, idempotency_key, create_collection)
        await self._apply(plan)
        return result

    async def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                            person_ids: Sequence[str] | None = None,
                            create_collection: bool = False) -> dict[str, Any]:
        result, plan = await self._store_call(self._core.register_bulk, collection, model, dim,
                                              embeddings, person_ids, create_collection)
        await self._apply(plan)
        return result

    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None) -> list[list[dict[str, Any]]]:
        info, queries = await self._store_call(self._core.prepare_search, collection, model,
                                               vectors, k)
        rows = await asyncio.gather(*[self._search_batched((info.id, q, int(k)))
                                      for q in queries])
        scores = np.stack([r[0] for r in rows])
        ids = np.stack([r[1] for r in rows])
        return await self._store_call(self._core.resolve, info, scores, ids, max_distance)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _search_batched(self, requests: list[tuple[int, np.ndarray, int]]
                              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One ``(collection id, query vector, k)`` per call; concurrent ones go to
        each shard as one batch per collection."""
        cids = [r[0] for r in requests]
        queries = [r[1] for r in requests]
        ks = [r[2] for r in requests]
        out: list[Any] = [None] * len(cids)
        groups: dict[int, list[int]] = {}
        for i, cid in enumerate(cids):
            groups.setdefault(cid, []).append(i)
        for cid, members in groups.items():
            k = max(ks[i] for i in members)
            batch = np.stack([queries[i] for i in members])
            parts = await self._shards_call("search", cid, batch, k)
            scores, ids = merge_topk(parts, k)
            for row, i in enumerate(members):
                out[i] = (scores[row, :ks[i]], ids[row, :ks[i]])
        return out

    async def get_face(self, collection: str, face_id: str,
                       with_embedding: bool = False) -> dict[str, Any]:
        return await self._store_call(self._core.get_face, collection, face_id, with_embedding)

    async def delete_face(self, collection: str, face_id: str) -> dict[str, Any]:
        deleted = await self.delete_faces(collection, [face_id])
        if not deleted:
            raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
        return {"face_id": face_id, "collection": collection, "deleted": True}

    async def delete_faces(self, collection: str, face_ids: Sequence[str]) -> list[str]:
        deleted, plan = await self._store_call(self._core.delete_faces, collection, face_ids)
        await self._apply(plan)
        return deleted

    async def get_person(self, collection: str, person_id: str) -> dict[str, Any]:
        return await self._store_call(self._core.get_person, collection, person_id)

    async def delete_person(self, collection: str, person_id: str) -> dict[str, Any]:
        result, plan = await self._store_call(self._core.delete_person, collection, person_id)
        await self._apply(plan)
        return result

    async def stats(self, collection: str) -> dict[str, Any]:
        info, out = await self._store_call(self._core.stats, collection)
        out["shard_sizes"] = await self._shards_call("size", info.id)
        out["index_type"] = self._index_type
        return out

    async def verify(self, collection: str) -> dict[str, Any]:
        """Store vs index ids of a collection (an admin / test check)."""
        info = await self._store_call(self._core.collection, collection)
        index_ids = np.concatenate(await self._shards_call("ids", info.id))
        store_ids = await self._store_call(self._store.face_ids_internal, info.id)
        return verify_ids(store_ids, index_ids)

    async def ready(self) -> bool:
        """Readiness probe: every shard answers (and has rebuilt from the store)."""
        await self._shards_call("ready")
        return True

    async def shard_info(self) -> list[dict[str, Any]]:
        return await self._shards_call("info")

    async def shutdown_shards(self) -> None:
        """Kill the shard actors (they are detached: deleting the app leaves them)."""
        for s in self._shards:
            ray.kill(s, no_restart=True)


__all__ = ["Gallery", "IndexShard", "parse_settings", "shard_handles"]
