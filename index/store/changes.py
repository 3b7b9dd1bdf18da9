"""The change log as shards read it: per-collection sequence numbers, the
tombstones of forgotten faces (pruned after :data:`TOMBSTONE_RETENTION_S`),
a shard's changes since a sequence, and the snapshot scan a shard rebuilds from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from index.store.base import SqlBase, guarded
from index.store.records import Changes, DeletedFace

#: tombstones are kept this long; a shard that stays behind for longer reloads its part
TOMBSTONE_RETENTION_S = 24 * 3600.0


class ChangeLogMixin(SqlBase):
    """Tombstones, catch-up reads and rebuild scans."""

    def _tombstone(self, cur: Any, cid: int, seq: int, deleted: list[DeletedFace]) -> None:
        now = time.time()
        if deleted:
            cur.executemany(self._q(
                "INSERT INTO face_tombstones (collection_id, seq, id, bucket, deleted_at) "
                "VALUES (?, ?, ?, ?, ?)"), [(cid, seq, d.id, d.bucket, now) for d in deleted])
        # prune what every live shard has long applied; remember how far, so a shard
        # behind that point reloads its part instead of missing a forget
        cur.execute(self._q(
            "SELECT MAX(seq) FROM face_tombstones WHERE collection_id = ? AND deleted_at < ?"),
            (cid, now - TOMBSTONE_RETENTION_S))
        horizon = cur.fetchone()[0]
        if horizon is not None:
            cur.execute(self._q(
                "DELETE FROM face_tombstones WHERE collection_id = ? AND seq <= ?"), (cid, horizon))
            cur.execute(self._q(
                "UPDATE collections SET pruned_seq = ? WHERE id = ?"), (int(horizon), cid))

    # -- the change log, as shards read it
    @guarded
    def collection_seqs(self) -> dict[int, tuple[int, int]]:
        """``{collection id: (dim, last_seq)}`` of every collection."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT id, dim, last_seq FROM collections")
            return {int(r[0]): (int(r[1]), int(r[2])) for r in cur.fetchall()}

    @guarded
    def changes_since(self, cid: int, after_seq: int, shard: int, nshards: int) -> Changes:
        """One shard's faces added and removed after ``after_seq``, read in one snapshot
        together with the sequence they bring the shard to."""
        with self._tx(write=False, snapshot=True) as cur:
            cur.execute(self._q(
                "SELECT dim, last_seq, pruned_seq FROM collections WHERE id = ?"), (cid,))
            row = cur.fetchone()
            empty = np.empty(0, np.int64)
            if row is None:
                return Changes(cid, 0, 0, empty, np.empty((0, 0), np.float32), empty,
                               exists=False)
            dim, last, pruned = int(row[0]), int(row[1]), int(row[2])
            full = after_seq < pruned
            since = 0 if full else after_seq
            cur.execute(self._q(
                f"SELECT id, {self._EMB} FROM faces WHERE collection_id = ? AND seq > ? "
                "AND bucket % ? = ? ORDER BY id"), (cid, since, nshards, shard))
            rows = cur.fetchall()
            removed = empty
            if not full:
                cur.execute(self._q(
                    "SELECT id FROM face_tombstones WHERE collection_id = ? AND seq > ? "
                    "AND bucket % ? = ?"), (cid, after_seq, nshards, shard))
                removed = np.array([r[0] for r in cur.fetchall()], dtype=np.int64)
            ids = [int(r[0]) for r in rows]
            vectors = self._open(self._sealer_of(cur, cid), ids, [r[1] for r in rows], dim)
        return Changes(cid, dim, last, np.array(ids, dtype=np.int64), vectors, removed, full)

    # -- rebuild
    def iter_shard(self, shard: int, nshards: int, chunk: int = 20000,
                   seqs: dict[int, tuple[int, int]] | None = None,
                   ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Yield ``(collection_id, dim, ids, vectors)`` chunks of one shard's faces.

        The scan is one snapshot; ``seqs`` (when given) is filled first, in the same
        snapshot, with ``{collection id: (dim, last_seq)}``, so a rebuilt shard
        knows exactly which changes it already holds.
        """
        with self._tx(write=False, snapshot=True) as cur:
            cur.execute("SELECT id, dim, last_seq FROM collections")
            found = {int(r[0]): (int(r[1]), int(r[2])) for r in cur.fetchall()}
            if seqs is not None:
                seqs.update(found)
            dims = {cid: dim for cid, (dim, _) in found.items()}
            # each collection's sealer before the scan: a scan cursor may hold the connection
            for cid in found:
                self._sealer_of(cur, cid)
            yield from self._scan_shard(cur, dims, shard, nshards, chunk)

    def _scan_cursor(self, cur: Any) -> Any:
        return cur

    def _scan_shard(self, cur: Any, dims: dict[int, int], shard: int, nshards: int,
                    chunk: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        scan = self._scan_cursor(cur)
        try:
            scan.execute(self._q(
                f"SELECT collection_id, id, {self._EMB} FROM faces WHERE bucket % ? = ?"),
                (nshards, shard))
            yield from self._group_rows(scan, dims, chunk)
        finally:
            if scan is not cur:
                scan.close()

    def _group_rows(self, scan: Any, dims: dict[int, int],
                    chunk: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        while True:
            rows = scan.fetchmany(chunk)
            if not rows:
                break
            groups: dict[int, tuple[list[int], list[bytes]]] = {}
            for cid, fid, blob in rows:
                g = groups.setdefault(int(cid), ([], []))
                g[0].append(fid)
                g[1].append(blob)
            for cid, (ids, blobs) in groups.items():
                if cid in dims:
                    yield (cid, dims[cid], np.array(ids, dtype=np.int64),
                           self._open(self._sealers.get(cid), ids, blobs, dims[cid]))

