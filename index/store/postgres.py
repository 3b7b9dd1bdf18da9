"""The PostgreSQL backend (psycopg 3): one connection per thread, ``COPY`` for
inserts, a server-side cursor for shard rebuilds."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.errors import StoreUnavailable
from index.store.sql import SqlStore



class PostgresStore(SqlStore):
    """Production store on PostgreSQL (psycopg 3); one connection per thread."""

    backend = "postgres"
    _ph = "%s"

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - psycopg is a dependency
            raise StoreUnavailable("the postgres backend needs psycopg installed") from e
        self._psycopg = psycopg
        self._transient = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        self._integrity = (psycopg.errors.UniqueViolation,)
        self._unreachable = (psycopg.OperationalError,)
        self.url = url
        self._timeout = connect_timeout_s
        self._migrate()
        self._check_layout()

    #: the type of ``faces.embedding`` this backend reads and writes
    _EMB_TYPE = "bytea"

    def _check_layout(self) -> None:
        """Refuse a database laid out for the other PostgreSQL backend (the embedding
        column is ``bytea`` for ``postgres``, ``vector`` for ``pgvector``)."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'faces'::regclass AND attname = 'embedding'")
            found = cur.fetchone()[0]
        if found != self._EMB_TYPE:
            other = "pgvector" if found == "vector" else "postgres"
            raise StoreUnavailable(
                f"this database holds the {other} backend's layout (faces.embedding is "
                f"{found}); open it with index.backend: {other}",
                {"embedding_type": found, "backend": self.backend})

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=int(self._timeout))
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot connect to the postgres store: {e}") from e

    @contextmanager
    def _tx(self, write: bool, snapshot: bool = False) -> Iterator[Any]:
        conn = self._conn()
        if conn.closed or conn.broken:
            self._local.conn = None
            conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            if snapshot:  # READ COMMITTED takes a new snapshot per statement
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield cur

    def _migration_lock(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7270014)")

    def _any(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _next_ids(self, cur: Any, n: int) -> np.ndarray:
        cur.execute("SELECT nextval('face_ids') FROM generate_series(1, %s)", (n,))
        return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)

    def _insert_faces(self, cur: Any, rows: list[tuple]) -> None:
        with cur.copy("COPY faces (id, face_id, collection_id, person_id, bucket, embedding,"
                      " created_at, seq) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _scan_cursor(self, cur: Any) -> Any:
        # a server-side cursor streams the shard instead of loading it whole
        return cur.connection.cursor(name=f"shard_scan_{threading.get_ident()}")

    def _scan_shard(self, cur: Any, dims: dict[int, int], shard: int, nshards: int,
                    chunk: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        cur.execute("SET LOCAL work_mem = '64MB'")
        yield from super()._scan_shard(cur, dims, shard, nshards, chunk)


