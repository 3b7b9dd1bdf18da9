"""Clusters of a collection's unnamed faces, answered at once or run as a job.

:class:`ClusterService` sits beside the gallery service, over the same store and
store threads. A run reads the faces in scope (by default those of persons without
a name: every face enrolled without a ``person_id``; ``scope="all"``: every face)
with their templates, groups them (:class:`index.clustering.FaceClusterer`) at the
cut the collection's identify threshold gives, and suggests for each group the
nearest *named* person within that threshold.

Up to ``sync_max_faces`` faces in scope the answer comes at once; above, the run is a
job: its row in the store (``cluster_jobs``) carries status, progress and result,
so any replica answers for it. A re-run keeps the clustering of the last run of this
replica and only adds the faces enrolled since (``FaceClusterer.extend``), so it costs
in proportion to the new faces; a face gone, renamed or moved to another person since
(a forget, a PATCH naming a person, a merge) makes it a full run again, as does a
restart. A cluster's id is the id of its earliest enrolled face: faces added later never
change it, and it holds while that face stays in the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.clustering import ClusterResult, FaceClusterer, NamedPeople
from index.store import CollectionInfo, Store
from pipelines.errors import FacefleetError, NotFound, ValidationError

log = logging.getLogger(__name__)

SCOPES = ("unnamed", "all")
#: faces read from the store per page
PAGE = 5000


@dataclass
class _Faces:
    """The faces of one collection as the last run saw them (rows in internal-id order)."""

    ids: np.ndarray                 # internal ids
    face_ids: list[str]
    person_ids: list[str]
    named: np.ndarray               # bool: the face's person has a name


@dataclass
class _State:
    """What a replica keeps between runs of one collection and scope."""

    seen: _Faces
    rows: np.ndarray                # rows of ``seen`` in the clustering, in its order
    clusterer: FaceClusterer
    threshold: float
    at: float = field(default_factory=time.monotonic)


class ClusterService:
    """Clustering runs and jobs of the collections of one store."""

    def __init__(self, store: Store, db: Callable[..., Awaitable[Any]],
                 sync_max_faces: int = 10_000) -> None:
        self.store = store
        self._db = db
        self.sync_max_faces = sync_max_faces
        self._state: dict[tuple[int, str], _State] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._jobs: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ reading
    def _read_meta(self, cid: int) -> tuple[_Faces, dict[str, str | None]]:
        """Every face of the collection without its template (internal id order), and
        the name of each person."""
        ids: list[int] = []
        face_ids: list[str] = []
        persons: list[str] = []
        names: dict[str, str | None] = {}
        after = 0
        while True:
            page = self.store.list_faces(cid, None, after, PAGE, with_embedding=False)
            for f in page:
                ids.append(f.id)
                face_ids.append(f.face_id)
                persons.append(f.person_id)
                names[f.person_id] = f.name
            if len(page) < PAGE:
                break
            after = page[-1].id
        named = np.array([names[p] is not None for p in persons], dtype=bool)
        return _Faces(np.array(ids, dtype=np.int64), face_ids, persons, named), names

    def _read_vectors(self, cid: int, dim: int, wanted: np.ndarray) -> np.ndarray:
        """The templates of the faces with internal ids ``wanted`` (sorted), in that order."""
        out = np.empty((len(wanted), dim), dtype=np.float32)
        if not len(wanted):
            return out
        pos = {int(i): k for k, i in enumerate(wanted)}
        after = int(wanted[0]) - 1
        last = int(wanted[-1])
        while after < last:
            page = self.store.list_faces(cid, None, after, PAGE, with_embedding=True)
            if not page:
                break
            for f in page:
                k = pos.get(f.id)
                if k is not None:
                    out[k] = f.embedding
            after = page[-1].id
        return out

    # ------------------------------------------------------------------ running
    def _run(self, info: CollectionInfo, threshold: float, scope: str,
             progress: Callable[[float], None]) -> dict[str, Any]:
        t0 = time.perf_counter()
        faces, names = self._read_meta(info.id)
        progress(0.1)
        in_scope = ~faces.named if scope == "unnamed" else np.ones(len(faces.ids), dtype=bool)
        key = (info.id, scope)
        state = self._state.get(key)
        rows = np.flatnonzero(in_scope)
        incremental = False
        if state is not None and state.threshold == threshold and self._still_valid(
                state, faces, in_scope):
            new_rows = rows[faces.ids[rows] > (state.seen.ids.max() if len(state.seen.ids)
                                                else -1)]
            vectors = self._read_vectors(info.id, info.dim, faces.ids[new_rows])
            progress(0.5)
            result = state.clusterer.extend(vectors) if len(new_rows) else None
            clustered_ids = np.concatenate([state.seen.ids[state.rows], faces.ids[new_rows]])
            incremental = True
            clusterer = state.clusterer
            if result is None:  # nothing new: the last run's clusters
                result = ClusterResult.from_labels(clusterer.labels)
        else:
            clusterer = FaceClusterer(threshold)
            vectors = self._read_vectors(info.id, info.dim, faces.ids[rows])
            progress(0.5)
            result = clusterer.fit(vectors) if len(rows) else None
            clustered_ids = faces.ids[rows]
            if result is None:  # no face in scope
                result = ClusterResult.from_labels(np.empty(0, dtype=np.int64))
        progress(0.8)
        # rows of the clustering -> rows of ``faces`` (internal ids are unique and sorted)
        at = np.searchsorted(faces.ids, clustered_ids)
        self._state[key] = _State(faces, at, clusterer, threshold)
        named_rows = np.flatnonzero(faces.named)
        people = None
        if len(named_rows):
            people = NamedPeople(self._read_vectors(info.id, info.dim, faces.ids[named_rows]),
                                 [faces.person_ids[r] for r in named_rows])
        clusters = []
        for members in result.clusters:
            fr = np.sort(at[members])  # enrolment order
            fids = [faces.face_ids[r] for r in fr]
            pids = list(dict.fromkeys(faces.person_ids[r] for r in fr))
            suggested = None
            if people is not None:
                s = people.suggest(clusterer.x[members], threshold)
                if s is not None:
                    suggested = {"person_id": s.person_id, "name": names.get(s.person_id),
                                 "distance": round(s.distance, 4)}
            # the id of its earliest enrolled face: new faces never change it
            clusters.append({"cluster_id": fids[0], "size": len(fids),
                             "face_ids": fids, "person_ids": pids, "suggested": suggested})
        progress(1.0)
        return {"collection": info.name, "model": info.model, "scope": scope,
                "threshold": threshold, "faces": int(len(rows)), "clusters": clusters,
                "unclustered": len(result.unclustered), "incremental": incremental,
                "seconds": round(time.perf_counter() - t0, 3)}

    @staticmethod
    def _still_valid(state: _State, faces: _Faces, in_scope: np.ndarray) -> bool:
        """The last run's faces are all still here, in scope, with the same persons; and
        no face older than the last run's newest came into scope meanwhile."""
        old = state.seen
        clustered = old.ids[state.rows]
        where = np.searchsorted(faces.ids, clustered)
        if len(clustered) and (where.max() >= len(faces.ids)
                               or not np.array_equal(faces.ids[where], clustered)):
            return False  # a face was forgotten
        if not in_scope[where].all():
            return False  # a person was named
        if any(faces.person_ids[w] != old.person_ids[r] for w, r in zip(where, state.rows,
                                                                        strict=True)):
            return False  # a merge moved faces
        newest = old.ids.max() if len(old.ids) else -1
        older_in_scope = np.flatnonzero(in_scope & (faces.ids <= newest))
        return len(older_in_scope) == len(clustered)

    # ------------------------------------------------------------------ API
    async def cluster(self, info: CollectionInfo, threshold: float, scope: str = "unnamed",
                      job: bool = False) -> dict[str, Any]:
        """The clusters at once (``{"clusters": ...}``), or a job started (``{"job_id"}``)
        when more faces than ``sync_max_faces`` are in scope, or when ``job`` asks."""
        if scope not in SCOPES:
            raise ValidationError(f"scope is one of {', '.join(SCOPES)}", {"scope": scope})
        faces, _ = await self._db(self._read_meta, info.id)
        count = int((~faces.named).sum()) if scope == "unnamed" else len(faces.ids)
        if count <= self.sync_max_faces and not job:
            async with self._locks.setdefault(info.id, asyncio.Lock()):
                return await self._db(self._run, info, threshold, scope, lambda p: None)
        job_id = secrets.token_hex(8)
        await self._db(self.store.create_cluster_job, info.id, job_id,
                       {"scope": scope, "threshold": threshold, "faces": count})
        task = asyncio.get_running_loop().create_task(self._job(info, threshold, scope, job_id))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return {"job_id": job_id, "status": "running", "faces": count}

    async def _job(self, info: CollectionInfo, threshold: float, scope: str,
                   job_id: str) -> None:
        last = [0.0]

        def progress(p: float) -> None:  # on the run's store thread: write it from there
            if p - last[0] >= 0.1 or p >= 1.0:
                last[0] = p
                self.store.update_cluster_job(info.id, job_id, progress=p)

        try:
            async with self._locks.setdefault(info.id, asyncio.Lock()):
                result = await self._db(self._run, info, threshold, scope, progress)
            await self._db(lambda: self.store.update_cluster_job(
                info.id, job_id, status="done", progress=1.0, result=result))
        except Exception as exc:  # the job's answer, not a crash of the replica
            log.exception("clustering job %s of collection %s failed", job_id, info.name)
            err = {"code": exc.code.value, "message": exc.message} if isinstance(
                exc, FacefleetError) else {
                "code": "internal_error", "message": "the clustering job failed; see the "
                "Gallery replica's log"}
            await self._db(lambda: self.store.update_cluster_job(info.id, job_id,
                                                                 status="failed", error=err))

    async def job(self, info: CollectionInfo, job_id: str) -> dict[str, Any]:
        row = await self._db(self.store.get_cluster_job, info.id, str(job_id)[:64])
        if row is None:
            raise NotFound(f"clustering job {job_id!r} of collection {info.name!r} does not "
                           "exist (a forget or a drop in the collection deletes its jobs)",
                           {"job_id": str(job_id)[:64]})
        return {"job_id": row["job_id"], "status": row["status"], "progress": row["progress"],
                "result": row["result"], "error": row["error"]}
