"""The embedded SQLite backend: one file in WAL mode, shared safely by processes
(``BEGIN IMMEDIATE`` and a busy timeout), with a bounded write-ahead log."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index import erasure
from index.store.sql import SqlStore


def _lower(value: object) -> object:
    """SQL ``LOWER`` with Python's Unicode case mapping (NULL and non-text unchanged)."""
    return value.lower() if isinstance(value, str) else value


class SqliteStore(SqlStore):
    """Embedded store: one SQLite file in WAL mode, shared safely by processes."""

    backend = "sqlite"
    _integrity = (sqlite3.IntegrityError,)

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0,
                 synchronous: str = "FULL") -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # made 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        # main file's mode, so templates never sit in a file others may read
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            erasure.private_file(f"{self.path}{suffix}")
        self.erasure_key = erasure.server_secret(self.path.parent)
        self._busy = busy_timeout_s
        # "database is locked" after the busy timeout, a missing or read-only file
        self._unreachable = (sqlite3.OperationalError,)
        self._sync = synchronous
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before register / forget are acknowledged
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA foreign_keys=ON")
        # deleted rows are overwritten with zeros, not left in free pages
        conn.execute("PRAGMA secure_delete=ON")
        # give the WAL file back after checkpoints instead of keeping its peak size
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy * 1000)}")
        # SQLite's own LOWER folds ASCII letters only; the persons search folds
        # every letter (as PostgreSQL does under a UTF-8 locale), so 'élodie' finds
        # 'Élodie'. Replacing the built-in is what SQLite's ICU extension does too.
        conn.create_function("LOWER", 1, _lower, deterministic=True)
        return conn

    @contextmanager
    def _tx(self, write: bool, snapshot: bool = False) -> Iterator[sqlite3.Cursor]:
        conn = self._conn()
        cur = conn.cursor()
        # IMMEDIATE takes the write lock up front: a deferred transaction that
        # upgrades later can fail with SQLITE_BUSY without waiting. A read
        # transaction in WAL mode is one snapshot already.
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()
        if write:
            self._bound_wal(conn)

    def checkpoint(self) -> str | None:
        """Copy the WAL into the main file and truncate it to 0 bytes: the frames of
        the pages a forget changed still held the removed bytes. Waits (busy timeout)
        for readers of older snapshots; ``"busy"`` if they outlast it (the next
        forget, or the next truncating checkpoint, empties it)."""
        try:
            busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:
            return "busy"
        return "truncated" if busy == 0 else "busy"

    #: WAL size that triggers a truncating checkpoint after a write
    WAL_LIMIT = 256 * 1024 * 1024

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """Keep the WAL from growing without bound under continuous writes.

        SQLite's automatic checkpoints are passive: while writes keep coming
        they never get to reset the log, and bulk enrolment of a million faces
        left a 3.8 GB WAL beside an 836 MB database. A truncating checkpoint
        once the log passes WAL_LIMIT waits (busy timeout) for the writers in
        flight and gives the space back.
        """
        try:
            size = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if size > self.WAL_LIMIT:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # busy: the next write tries again
                pass

    def _next_ids(self, cur: sqlite3.Cursor, n: int) -> np.ndarray:
        cur.execute("UPDATE sequences SET value = value + ? WHERE name = 'faces' RETURNING value",
                    (n,))
        last = int(cur.fetchone()[0])
        return np.arange(last - n + 1, last + 1, dtype=np.int64)

    def _insert_faces(self, cur: sqlite3.Cursor, rows: list[tuple]) -> None:
        cur.executemany(
            "INSERT INTO faces (id, face_id, collection_id, person_id, bucket, embedding,"
            " created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

