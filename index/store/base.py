"""The plumbing every SQL store shares: per-thread connections, transactions,
the placeholder dialect, embedding encoding, the retry of transient conflicts
(:func:`guarded`) and the schema migration at open time. The backends
(``sqlite``, ``postgres``, ``pgvector``) fill in the parts marked "to implement";
the responsibility modules (collections, faces, listings, changes, audit_log,
keys) add their statements over these helpers.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.errors import SchemaTooNew, StoreUnavailable
from index.sealing import MasterKey, Sealer, WrappedKey
from index.store.schema import LATEST_VERSION, MIGRATIONS

log = logging.getLogger("index.store")

#: SQLite caps the number of ``?`` per statement; stay well under it.
IN_CHUNK = 500


def labels_out(text: str | None) -> dict[str, str]:
    return json.loads(text) if text else {}


def labels_in(labels: dict[str, str] | None) -> str | None:
    return None if labels is None else json.dumps(labels, sort_keys=True)


def vectors_of(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(
        np.float32, copy=False)


def guarded(fn: Any) -> Any:
    """Retry transient conflicts (deadlock, serialisation) and map a store that
    cannot be reached to :class:`StoreUnavailable` instead of a driver error."""

    @functools.wraps(fn)
    def wrapper(self: SqlBase, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(5):
            try:
                return fn(self, *args, **kwargs)
            except self._transient as e:
                if attempt == 4:
                    raise StoreUnavailable(f"the {self.backend} store is too busy: {e}") from e
                log.info("retrying %s after a transient conflict: %s", fn.__name__, e)
                time.sleep(0.01 * 2**attempt)
            except self._unreachable as e:
                raise StoreUnavailable(f"the {self.backend} store failed: {e}") from e
        raise AssertionError("unreachable")

    return wrapper


class SqlBase:
    """Connections, transactions and dialect helpers; the backends supply connections
    and dialect, the responsibility mixins the statements."""

    #: errors after which the whole transaction is simply run again
    _transient: tuple[type[BaseException], ...] = ()
    #: errors that mean the store cannot serve (locked for too long, down)
    _unreachable: tuple[type[BaseException], ...] = ()
    #: a unique constraint violated (an import racing another over the same face ids)
    _integrity: tuple[type[BaseException], ...] = ()

    backend = "sql"
    #: placeholder of the driver ("?" or "%s"); statements below are written with "?"
    _ph = "?"
    #: how statements read a face's embedding (decoded by :meth:`_decode`)
    _EMB = "embedding"

    def __init__(self) -> None:
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        #: key of the audit trail's pseudonyms of forgotten persons (index.erasure);
        #: open_store sets the server secret, a store opened bare uses its own
        self.erasure_key = secrets.token_bytes(32)
        #: master keys (index.sealing), the current one first: new collections seal their
        #: templates under it; the others only open collections not yet re-wrapped.
        #: Empty: new collections store their templates plain.
        self.masters: list[MasterKey] = []
        #: collection id -> its sealer, or None for a plain collection. Ids are never
        #: reused and a data key never changes (rotation re-wraps it), so entries stay true.
        self._sealers: dict[int, Sealer | None] = {}

    def checkpoint(self) -> str | None:
        """After a forget or a drop: fold the write-ahead log into the main file and
        empty it (SQLite); what happened, or None where the backend has no such step."""
        return None

    # -- to implement
    def _connect(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def _tx(self, write: bool, snapshot: bool = False) -> Iterator[Any]:
        """A transaction; ``snapshot`` makes every statement of a read see one snapshot."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _next_ids(self, cur: Any, n: int) -> np.ndarray:
        raise NotImplementedError

    def _insert_faces(self, cur: Any, rows: list[tuple]) -> None:
        raise NotImplementedError

    def _encode(self, vector: np.ndarray) -> Any:
        """One embedding as the value written to ``faces.embedding``."""
        return vector.tobytes()

    def _decode(self, values: list[Any], dim: int) -> np.ndarray:
        """Embeddings read with :attr:`_EMB` as an ``(n, dim)`` float32 array."""
        return vectors_of([bytes(v) for v in values], dim)

    def _decode_one(self, value: Any) -> np.ndarray:
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)

    # -- templates sealed at rest (index.sealing)
    def _sealer_of(self, cur: Any, cid: int) -> Sealer | None:
        """The sealer of collection ``cid`` (None: its templates are plain)."""
        if cid in self._sealers:
            return self._sealers[cid]
        cur.execute(self._q("SELECT data_key, master_key_id FROM collections WHERE id = ?"),
                    (cid,))
        row = cur.fetchone()
        sealer = None
        if row is not None and row[0] is not None:
            sealer = Sealer.unwrapped(cid, WrappedKey(bytes(row[0]), row[1]), self.masters)
        if row is not None:
            self._sealers[cid] = sealer
        return sealer

    def _seal(self, sealer: Sealer | None, face_no: int, vector: np.ndarray) -> Any:
        """One template as written to ``faces.embedding``."""
        if sealer is None:
            return self._encode(vector)
        return sealer.seal(face_no, np.ascontiguousarray(vector, dtype="<f4").tobytes())

    def _open(self, sealer: Sealer | None, face_nos: Sequence[int], values: list[Any],
              dim: int) -> np.ndarray:
        """Templates read with :attr:`_EMB` as an ``(n, dim)`` float32 array."""
        if sealer is None:
            return self._decode(values, dim)
        return sealer.open_vectors(face_nos, values, dim)

    def _open_one(self, sealer: Sealer | None, face_no: int, value: Any) -> np.ndarray:
        if sealer is None:
            return self._decode_one(value)
        return np.frombuffer(sealer.open(face_no, bytes(value)), dtype="<f4").astype(
            np.float32)

    def _any(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` (or ``= ANY``), as SQL text and parameters."""
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    # -- helpers
    def _q(self, sql: str) -> str:
        if self._ph == "?":
            return sql
        # psycopg reads "%" as the start of a placeholder
        return sql.replace("%", "%%").replace("?", self._ph)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing a connection another thread owns may fail
                log.debug("closing a store connection failed", exc_info=True)
        self._local = threading.local()

    def _migrate(self) -> None:
        with self._tx(write=True) as cur:
            self._migration_lock(cur)
            cur.execute(self._q(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at "
                + ("REAL" if self._ph == "?" else "DOUBLE PRECISION") + " NOT NULL)"))
            cur.execute("SELECT version FROM schema_migrations")
            applied = {int(r[0]) for r in cur.fetchall()}
            if applied and max(applied) > LATEST_VERSION:
                raise SchemaTooNew(
                    f"the {self.backend} store has schema version {max(applied)}, "
                    f"this facefleet knows up to {LATEST_VERSION}",
                    {"schema_version": max(applied), "known": LATEST_VERSION})
            for m in MIGRATIONS:
                if m.version in applied:
                    continue
                for stmt in m.statements(self.backend):
                    cur.execute(stmt)
                cur.execute(self._q(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"),
                    (m.version, m.name, time.time()))
                log.info("store migrated to schema version %d (%s)", m.version, m.name)

    def _migration_lock(self, cur: Any) -> None:
        """Serialise concurrent first opens (SQLite's write lock already does)."""

    @guarded
    def schema_version(self) -> int:
        with self._tx(write=False) as cur:
            cur.execute("SELECT MAX(version) FROM schema_migrations")
            return int(cur.fetchone()[0] or 0)

