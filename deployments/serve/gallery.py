"""Ray layer of the gallery: ``IndexShard`` actors and the ``Gallery`` deployment.

Each ``IndexShard`` is a named, detached Ray actor wrapping one
``index.shard.ShardIndex``. It rebuilds from the store when it starts, so a
crashed shard restarts (``max_restarts=-1``) with every acknowledged face and
none of the forgotten ones, and calls in flight are retried on the restarted
actor (``max_task_retries=-1``; shard ops are safe to repeat). It catches up
from the store's change log on a gap and every ``index.sync_interval_s``, so a
face committed by a Gallery replica that died before updating the shards is
searchable within that period. Shards are shared by all replicas of
``Gallery`` (named actors, ``get_if_exists``); with ``index.shard_replicas``
> 1 each shard has several copies, every write goes to all of them and
searches spread over them. ``Gallery`` *is* ``index.gallery.GalleryService``
over those actors: it adds only the batching of concurrent searches
(``serve.batch``, one call per shard and collection) and the two methods that
take embedded images straight from the Embedder. The same deployment hosts the
access service (``index.access_service.AccessService``: API keys and the audit
trail) as a separate object over the same store, reached through explicit
methods, so the ingress's key checks do not go through the face code. With ``index.backend:
pgvector`` there are no shard actors: the deployment searches the database
(``index.pgvector_shards.SqlShards``), whose commits are the index.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray import serve

from pipelines.errors import Unavailable
from configs.settings import IndexSettings, Settings
from deployments.serve.metrics_board import Reporter, replica_metrics
from index.access_service import AccessService
from index.audit import Actor, AuditEntry
from index.gallery import GalleryService, Plan
from index.health import gallery_metrics
from index.merge import merge_topk
from index.shard import IndexConfig, ShardIndex
from index.store import KeyRecord, open_store
from pipelines.flow.gallery_side import identify_embedded, register_embedded

log = logging.getLogger(__name__)

NAMESPACE = "facefleet"
#: the least CPU a shard actor placed on a node reserves (``index.shard_num_cpus`` 0
#: included): with none, Ray places it anywhere whatever node it is asked to start on
MIN_SHARD_CPUS = 0.01
#: how often each Gallery replica deletes audit entries past their retention
AUDIT_PRUNE_INTERVAL_S = 3600.0


@ray.remote
class IndexShard:
    """One shard as a Ray actor; rebuilt from the store on (re)start, kept current
    by the writes it is sent and by catching up on the ones it missed."""

    def __init__(self, shard_no: int, nshards: int, store: dict[str, Any],
                 index: dict[str, Any], faiss_threads: int = 1,
                 sync_interval_s: float = 2.0) -> None:
        import faiss

        # tiny per-query matmuls: more threads only add contention on small machines
        faiss.omp_set_num_threads(max(1, faiss_threads))
        self._shard = ShardIndex(shard_no, nshards, IndexConfig(**index))
        self._store = open_store(**store)
        self._shard.rebuild(self._store)
        # calls run one at a time on the actor's thread; the periodic catch-up
        # runs on its own thread, so both take this lock
        self._lock = threading.Lock()
        self._interval = sync_interval_s
        threading.Thread(target=self._sync_forever, daemon=True, name="shard-sync").start()

    def _sync_forever(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a store outage: try again next period
                log.warning("shard %d catch-up failed", self._shard.shard_no, exc_info=True)

    def ready(self) -> dict[str, Any]:
        return {"shard": self._shard.shard_no, "pid": os.getpid(),
                "rebuild_seconds": self._shard.rebuild_seconds}

    def apply(self, ops: list[Any]) -> None:
        with self._lock:
            self._shard.apply(ops, self._store)

    def sync(self) -> int:
        with self._lock:
            return self._shard.sync(self._store)

    def search(self, cid: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._shard.search(cid, queries, k)

    def size(self, cid: int) -> int:
        with self._lock:
            return self._shard.size(cid)

    def ids(self, cid: int) -> np.ndarray:
        with self._lock:
            return self._shard.ids(cid)

    def info(self) -> dict[str, Any]:
        with self._lock:
            out = self._shard.info()
        out["pid"] = os.getpid()
        out["node_id"] = ray.get_runtime_context().get_node_id()
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


def pgvector_options(index: IndexSettings) -> dict[str, Any]:
    """The HNSW settings as ``PgvectorStore`` keyword arguments."""
    return {"hnsw_m": index.hnsw_m, "hnsw_ef_construction": index.hnsw_ef_construction,
            "hnsw_ef_search": index.hnsw_ef_search,
            "maintenance_work_mem": index.hnsw_maintenance_work_mem}


def shard_handles(s: Settings) -> list[list[Any]]:
    """Get or create the shard actors of this store + index configuration:
    ``[shard][copy]``, placed by :func:`shard_nodes`."""
    index: IndexSettings = s.index
    store = {"backend": index.backend, "database_url": index.database_url,
             "data_dir": str(s.data_dir.resolve()),
             # where the master keys are (never the keys): a shard opens sealed templates
             "encryption": s.encryption.model_dump()}
    icfg = {"index_type": index.index_type, "ivf_nlist": index.ivf_nlist,
            "ivf_nprobe": index.ivf_nprobe}
    # the name pins the store and index layout: another store never gets these shards
    key = hashlib.sha256(json.dumps([store, icfg, index.shards], sort_keys=True).encode())
    prefix = f"gallery-{key.hexdigest()[:12]}"
    nodes = shard_nodes(index.shards, index.shard_replicas, index.shard_num_cpus)
    num_cpus = index.shard_num_cpus
    if nodes[0][0] is not None:  # placed: Ray honours a soft node affinity only
        num_cpus = max(num_cpus, MIN_SHARD_CPUS)  # for an actor that reserves something
    return [[
        IndexShard.options(
            name=f"{prefix}-{i}of{index.shards}" + (f"-copy{r}" if r else ""),
            namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
            max_task_retries=-1, num_cpus=num_cpus,
            scheduling_strategy=_on_node(nodes[i][r]),
        ).remote(i, index.shards, store, icfg, index.faiss_threads, index.sync_interval_s)
        for r in range(index.shard_replicas)] for i in range(index.shards)]


def alive_nodes(min_cpus: float = 0.0) -> list[str]:
    """Ids of the cluster's alive nodes that can hold an actor needing ``min_cpus``
    (nodes with no CPU, such as a KubeRay head started with ``num-cpus: 0``, only
    when no other node is there), sorted, so every Gallery replica sees one order."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    fit = [n for n in alive if (cpus := n.get("Resources", {}).get("CPU", 0)) > 0
           and cpus >= min_cpus]
    return sorted(n["NodeID"] for n in (fit or alive))


def shard_nodes(nshards: int, copies: int, min_cpus: float = 0.0) -> list[list[str | None]]:
    """The node each copy of each shard starts on: shards round-robin over the alive
    nodes, and the copies of one shard on different nodes while there are enough,
    so that losing one node never takes every copy of a shard."""
    nodes = alive_nodes(min_cpus)
    if len(nodes) < 2:
        return [[None] * copies for _ in range(nshards)]
    return [[nodes[(i + r) % len(nodes)] for r in range(copies)] for i in range(nshards)]


def _on_node(node_id: str | None) -> Any:
    """Start on that node, but restart anywhere once it is gone (``soft``): a shard
    whose node died is rebuilt on a surviving node from the store and change log."""
    if node_id is None:
        return "DEFAULT"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=True)


def refuse_sqlite_on_a_cluster(index: IndexSettings) -> None:
    """SQLite keeps the gallery in one file on one node's disk: on a cluster of several
    nodes a Gallery replica or shard started on another node would open another file."""
    if index.backend != "sqlite":
        return
    nodes = alive_nodes()
    if len(nodes) > 1:
        raise RuntimeError(
            f"index.backend sqlite on a Ray cluster of {len(nodes)} nodes: the Gallery and "
            "its shards may run on any node, and each node would open its own SQLite file. "
            "Use PostgreSQL: index.backend postgres (or pgvector) with "
            "FACEFLEET_INDEX__DATABASE_URL=postgresql://..., reachable from every node")


class RayShards:
    """The shard set of ``index.gallery`` over shard actors (and their copies)."""

    def __init__(self, handles: list[list[Any]]) -> None:
        self.handles = handles
        self.nshards = len(handles)
        self._turn = itertools.count()

    @staticmethod
    async def _gather(calls: list[Any]) -> list[Any]:
        try:
            return list(await asyncio.gather(*calls))
        except ray.exceptions.RayActorError as e:
            # a committed write stays committed: a restarting shard rebuilds with it
            raise Unavailable(f"an index shard is unavailable: {e}") from e

    def _all(self, method: str, *args: Any) -> list[Any]:
        return [getattr(copy, method).remote(*args) for copies in self.handles for copy in copies]

    def _one_each(self, method: str, *args: Any) -> list[Any]:
        turn = next(self._turn)
        return [getattr(copies[turn % len(copies)], method).remote(*args)
                for copies in self.handles]

    async def apply(self, plan: Plan) -> None:
        await self._gather([copy.apply.remote(ops)
                            for copies, ops in zip(self.handles, plan, strict=True) if ops
                            for copy in copies])

    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(await self._gather(self._one_each("search", cid, queries, k)), k)

    async def sizes(self, cid: int) -> list[int]:
        return await self._gather(self._one_each("size", cid))

    async def ids(self, cid: int) -> np.ndarray:
        return np.concatenate(await self._gather(self._one_each("ids", cid)))

    async def info(self) -> list[dict[str, Any]]:
        return await self._gather(self._all("info"))

    async def sync(self) -> int:
        return sum(await self._gather(self._all("sync")))

    async def ready(self) -> None:
        await self._gather(self._all("ready"))


@serve.deployment(max_ongoing_requests=64)
class Gallery(GalleryService):
    """Register / identify / forget over sharded FAISS and the durable store."""

    def __init__(self, settings: dict[str, Any]) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        s = Settings.model_validate(settings)
        index = s.index
        self._index_type = index.index_type
        self._fault: str | None = None
        if index.backend == "pgvector":
            from index.pgvector_shards import SqlShards

            self._index_type = "pgvector-hnsw"
            store = open_store(index.backend, index.database_url, s.data_dir.resolve(),
                               pgvector=pgvector_options(index),
                               encryption=s.encryption.model_dump())
            shards: Any = SqlShards(store, search_threads=index.store_threads,  # type: ignore[arg-type]
                                    ef_search=index.hnsw_ef_search)
        else:
            refuse_sqlite_on_a_cluster(index)
            shards = RayShards(shard_handles(s))
            ray.get([c.ready.remote() for copies in shards.handles for c in copies])
            store = open_store(index.backend, index.database_url, s.data_dir.resolve(),
                               encryption=s.encryption.model_dump())
        # keys and the audit trail: a service of their own over the same store, with
        # a small pool of store threads, so key polls never queue behind face writes
        access = AccessService(store, retention_days=s.audit.retention_days)
        super().__init__(store, shards, store_threads=index.store_threads,
                         cache_ttl_s=index.sync_interval_s, audit_identify=s.audit.identify,
                         audit_reads=s.audit.reads, access=access,
                         cluster_sync_max_faces=index.cluster_sync_max_faces)
        self._search_batched.set_max_batch_size(index.search_batch_size)
        self._search_batched.set_batch_wait_timeout_s(index.search_batch_wait_s)
        metrics = replica_metrics()
        self._batches = metrics.batches(["search"])
        self._reporter = Reporter(metrics)
        if access.retention_days is not None:
            threading.Thread(target=self._prune_forever, daemon=True, name="audit-prune").start()

    def _prune_forever(self) -> None:
        """Apply the audit retention now and every hour, on a thread of its own (the
        store opens a connection per thread)."""
        while True:
            try:
                n = self.access.prune_expired()
                if n:
                    log.info("audit retention: %d entries older than %s days deleted", n,
                             self.access.retention_days)
            except Exception:  # noqa: BLE001 - the store is down: try again next period
                log.warning("audit retention pass failed", exc_info=True)
            time.sleep(AUDIT_PRUNE_INTERVAL_S)

    async def _search_shards(self, cid: int, queries: np.ndarray,
                             k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = await asyncio.gather(*[self._search_batched(cid, q, k) for q in queries])
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _search_batched(self, cids: list[int], queries: list[np.ndarray],
                              ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One query vector per call; concurrent ones go to each shard as one batch
        per collection."""
        self._batches.observe("search", len(cids))
        out: list[Any] = [None] * len(cids)
        groups: dict[int, list[int]] = {}
        for i, cid in enumerate(cids):
            groups.setdefault(cid, []).append(i)
        for cid, members in groups.items():
            k = max(ks[i] for i in members)
            scores, ids = await self.shards.search(cid, np.stack([queries[i] for i in members]),
                                                   k)
            for row, i in enumerate(members):
                out[i] = (scores[row, :ks[i]], ids[row, :ks[i]])
        return out

    async def _apply(self, plan: Plan) -> None:
        if self._fault == "exit_after_commit":
            # fault injection (tests): die between the commit and the shard update
            os._exit(1)
        if self._fault == "raise_after_commit":
            # fault injection (tests): a bug between the commit and the shard update,
            # once; the shards catch up from the change log
            self._fault = None
            raise RuntimeError("injected fault: raise_after_commit")
        await super()._apply(plan)

    async def inject_fault(self, fault: str | None) -> None:
        """Arm a fault in this replica, for fault-injection tests only: with
        ``"exit_after_commit"`` the next write is committed and the process exits
        before any shard hears of it; with ``"raise_after_commit"`` it raises there
        instead, once (an unexpected error: the request answers 500). Not reachable
        over HTTP."""
        if fault not in (None, "exit_after_commit", "raise_after_commit"):
            raise ValueError(f"unknown fault {fault!r}")
        self._fault = fault

    async def stats(self, collection: str) -> dict[str, Any]:
        out = await super().stats(collection)
        out["index_type"] = self._index_type
        return out

    # -- API keys and the audit trail: the access service's, called explicitly
    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None
                        ) -> tuple[int, list[KeyRecord] | None]:
        return await self.access.key_table(known_version, used)

    async def create_key(self, key: KeyRecord, actor: Actor | None = None) -> dict[str, Any]:
        return await self.access.create_key(key, actor)

    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> dict[str, Any]:
        return await self.access.revoke_key(key_id, actor)

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self.access.list_keys()

    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[dict[str, Any]]:
        return await self.access.audit_entries(collection, action, since, after_seq, limit)

    async def record(self, entry: AuditEntry) -> None:
        """Record an entry made outside the gallery (a sampled failed authentication)."""
        await self.access.record(entry)

    # -- straight from the Embedder (model composition; pipelines.flow.gallery_side)
    async def identify_embedded(self, embedded: Any, collection: str, k: int,
                                per_person: bool = False, actor: Actor | None = None,
                                max_distance: float | None = None,
                                model: str | None = None, enrol_unknown: bool | None = None,
                                threshold: float | None = None) -> Any:
        return await identify_embedded(self, embedded, collection, k, per_person, actor,
                                       max_distance, model, enrol_unknown, threshold)

    async def register_embedded(self, collection: str, metas: Sequence[dict[str, Any]],
                                idempotency_key: str | None, actor: Actor | None,
                                *embedded: Any, request_hash: str | None = None,
                                create: bool = True, every_face: bool = False,
                                model: str | None = None) -> Any:
        return await register_embedded(self, collection, metas, idempotency_key, embedded,
                                       actor, request_hash, create, every_face, model)

    async def ready(self) -> bool:
        """Readiness probe: every shard answers (and has rebuilt from the store), and
        the store answers."""
        await self.shards.ready()
        await self._db(self.store.collection_seqs)
        return True

    async def metrics(self) -> dict[str, Any]:
        """Faces per collection, store and shard health, replication lag
        (``index.health.gallery_report``); the same from any replica. With pgvector
        there are no shard actors to ask: the store is the index."""
        return await gallery_metrics(self.store, self._db, [
            [lambda c=c: _answer(c.info.remote(), 2.0) for c in copies]
            for copies in getattr(self.shards, "handles", [])])

    async def shutdown_shards(self) -> None:
        """Kill the shard actors (they are detached: deleting the app leaves them)."""
        for copies in getattr(self.shards, "handles", []):
            for copy in copies:
                ray.kill(copy, no_restart=True)


async def _answer(ref: Any, timeout_s: float) -> Any:
    """A shard copy's answer, or None when it is down or does not answer in time."""
    try:
        return await asyncio.wait_for(ref, timeout_s)
    except (asyncio.TimeoutError, ray.exceptions.RayError):
        return None


__all__ = ["Gallery", "IndexShard", "RayShards", "shard_handles"]
