"""Clustering jobs of a collection: their status, progress and result, in the store so
that any Gallery replica answers for a job any other one runs, and a restart keeps the
results. A result names faces and persons (never templates); a forget in the
collection deletes its jobs with the faces (a forgotten person's id must not outlive
it), and so does a drop (the rows reference the collection)."""

from __future__ import annotations

import json
import time
from typing import Any

from index.store.base import SqlBase, guarded

#: job rows kept per collection: older finished ones are deleted when a new job starts
KEEP_JOBS = 20


class ClusterJobsMixin(SqlBase):
    """The ``cluster_jobs`` table."""

    @guarded
    def create_cluster_job(self, cid: int, job_id: str, params: dict[str, Any]) -> None:
        now = time.time()
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                "DELETE FROM cluster_jobs WHERE collection_id = ? AND status <> 'running' AND "
                "job_id NOT IN (SELECT job_id FROM cluster_jobs WHERE collection_id = ? "
                "ORDER BY created_at DESC LIMIT ?)"), (cid, cid, KEEP_JOBS - 1))
            cur.execute(self._q(
                "INSERT INTO cluster_jobs (job_id, collection_id, status, progress, params, "
                "created_at, updated_at) VALUES (?, ?, 'running', 0, ?, ?, ?)"),
                (job_id, cid, json.dumps(params), now, now))

    @guarded
    def update_cluster_job(self, cid: int, job_id: str, *, progress: float | None = None,
                           status: str | None = None, result: dict[str, Any] | None = None,
                           error: dict[str, Any] | None = None) -> None:
        sets, params = ["updated_at = ?"], [time.time()]
        for column, value in (("progress", progress), ("status", status),
                              ("result", None if result is None else json.dumps(result)),
                              ("error", None if error is None else json.dumps(error))):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        with self._tx(write=True) as cur:
            cur.execute(self._q(f"UPDATE cluster_jobs SET {', '.join(sets)} "
                                "WHERE collection_id = ? AND job_id = ?"), [*params, cid, job_id])

    @guarded
    def get_cluster_job(self, cid: int, job_id: str) -> dict[str, Any] | None:
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT job_id, status, progress, params, result, error, created_at, updated_at "
                "FROM cluster_jobs WHERE collection_id = ? AND job_id = ?"), (cid, job_id))
            row = cur.fetchone()
        if row is None:
            return None
        return {"job_id": row[0], "status": row[1], "progress": float(row[2]),
                "params": json.loads(row[3]), "result": json.loads(row[4]) if row[4] else None,
                "error": json.loads(row[5]) if row[5] else None,
                "created_at": float(row[6]), "updated_at": float(row[7])}

    def _forget_cluster_jobs(self, cur: Any, cid: int) -> int:
        """In a forget's transaction: the collection's job results may name what it forgets."""
        cur.execute(self._q("DELETE FROM cluster_jobs WHERE collection_id = ?"), (cid,))
        return max(cur.rowcount or 0, 0)
