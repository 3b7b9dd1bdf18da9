"""The gallery's source of truth: collections, persons and face embeddings in a
real database.

Three backends share one schema and one set of statements: SQLite in WAL mode
(the embedded default, one file under the data directory, safe for several
processes thanks to ``BEGIN IMMEDIATE`` and a busy timeout), PostgreSQL
(production), and PostgreSQL with pgvector (``index.pgvector_store``: the
embedding column is a pgvector ``vector`` searched in SQL). Embeddings are
otherwise stored as little-endian float32 bytes. Each face
has a public string id (random, unguessable) and an int64 internal id taken
from a counter that never hands out a value twice, which is what FAISS stores:
shards rely on "never reused" to ignore late or repeated updates. A face's
``bucket`` is a stable hash of its public id; its shard is ``bucket % N``.
The schema is versioned; :data:`MIGRATIONS` is applied in order at open time.

Listings and exports read keyset pages (persons by id, faces by internal id,
one statement each), so a client paging through while others write sees every
row that existed throughout exactly once. Imports keep the face ids they are
given and skip the ones already held, so they can be run again. A register
made under an idempotency key stores its answer, which a retry gets back
(:meth:`replay`) instead of writing twice.

The store is the single source of truth, with an ordered change log per
collection: every committed register or forget takes the next number of its
collection's ``last_seq`` in the same transaction (the row update also
serialises the collection's writers, so numbers are committed in order). Added
faces carry their ``seq``; a forget leaves a tombstone (id, bucket, seq). A
shard that knows the last sequence it applied catches up with
:meth:`changes_since`; one that restarts rebuilds from a consistent snapshot
(:meth:`iter_shard`), which also gives each collection's sequence.

The store also keeps the API keys made through ``/v1/keys`` (hashed, never in
clear, with a version counter that every key change bumps so ingress
replicas can poll it cheaply) and the audit trail. Every write method takes
an optional :class:`index.audit.AuditEntry` and inserts it as the last
statement of its own transaction: the change and its entry commit together
or not at all. Entries take their ``seq`` from one counter row, updated last
so its lock is held only while the transaction commits; that keeps ``seq``
in commit order, which is what makes a cursor over ``seq`` stable (a reader
never sees seq N+1 before N is committed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index import erasure
from index.audit import AuditAction, AuditEntry
from index.errors import SchemaTooNew, StoreUnavailable
from configs.errors import CollectionNotFound, Conflict, ModelMismatch, NotFound

log = logging.getLogger(__name__)

#: SQLite caps the number of ``?`` per statement; stay well under it.
_IN_CHUNK = 500
_BUCKET_MASK = 0x7FFFFFFF


def face_bucket(face_id: str) -> int:
    """Stable 31-bit hash of a public face id (same on every machine and run)."""
    digest = hashlib.blake2b(face_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & _BUCKET_MASK


def shard_of(bucket: int, nshards: int) -> int:
    return bucket % nshards


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    id: int
    name: str
    model: str
    dim: int
    created_at: float
    #: sequence number of the collection's last committed change
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class PersonUpsert:
    """A person to create, or to update where ``name`` / ``labels`` are not None."""

    person_id: str
    name: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class FaceRecord:
    id: int
    face_id: str
    person_id: str
    bucket: int
    created_at: float
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class PersonRecord:
    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: list[FaceRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HitInfo:
    face_id: str
    person_id: str
    name: str | None
    labels: dict[str, str]


@dataclass(slots=True)
class AddResult:
    """What a register committed (or had committed, for a replayed key).

    ``ids``/``buckets``/``embeddings`` are the rows the shards must hold and
    ``seq`` the change that added them; on a replay they are re-read (with
    their original ``seq``) so a retry also repairs shards that missed the add.
    ``persons`` holds each person's name and labels after the write, so the
    answer needs no read-back.
    """

    collection: CollectionInfo
    face_ids: list[str]
    person_ids: list[str]
    ids: np.ndarray
    buckets: np.ndarray
    embeddings: np.ndarray
    seq: int = 0
    created_at: float = 0.0
    persons: dict[str, tuple[str | None, dict[str, str]]] = field(default_factory=dict)
    replayed: bool = False
    #: what the caller stored beside the key with the first write (``idempotency[2]``)
    extra: Any = None
    #: the write created the collection (a replay: the first write did)
    collection_created: bool = False


@dataclass(frozen=True, slots=True)
class PersonSummary:
    """A person as a listing shows it: its record and how many faces it has."""

    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: int


@dataclass(frozen=True, slots=True)
class ListedFace:
    """A face as a listing or an export shows it, with its person's name and labels."""

    id: int
    face_id: str
    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class ImportResult:
    """What an import chunk committed: the faces added (``added``, as a register's
    result, for the shards) and the ids left out because the collection holds them
    already (``skipped``) or another collection does (``elsewhere``)."""

    added: AddResult
    skipped: list[str]
    elsewhere: list[str]


#: "leave this field as it is" in :meth:`_SqlStore.update_person`
KEEP: Any = object()


@dataclass(frozen=True, slots=True)
class DeletedFace:
    id: int
    face_id: str
    bucket: int


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a forget committed: the faces removed and the change's sequence number."""

    faces: list[DeletedFace]
    seq: int
    #: idempotency rows removed with the faces they created (index.erasure)
    idempotency_keys: int = 0
    #: audit entries whose person id was replaced by its keyed hash
    audit_pseudonymised: int = 0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key made through ``/v1/keys``: its public id and the SHA-256 of its secret."""

    id: str
    name: str
    key_sha256: str
    scopes: tuple[str, ...]
    #: None: every collection; else only these (exact names)
    collections: tuple[str, ...] | None
    created_at: float
    last_used_at: float | None = None
    #: Unix time after which the key is refused; None: never
    expires_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The key as ``GET /v1/keys`` shows it: everything but the hash."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "scopes": list(self.scopes),
                               "collections": (None if self.collections is None
                                               else list(self.collections)),
                               "created_at": self.created_at}
        if self.last_used_at is not None:
            out["last_used_at"] = self.last_used_at
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        return out


@dataclass(slots=True)
class Changes:
    """One shard's share of a collection's changes after some sequence number.

    ``full`` means the tombstones no longer reach back that far, so ``ids`` /
    ``vectors`` hold every face of the shard and the shard must replace its
    part instead of patching it. ``exists`` is False when the collection was
    dropped.
    """

    cid: int
    dim: int
    last_seq: int
    ids: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray
    full: bool = False
    exists: bool = True


class Store(Protocol):
    """What the gallery needs from a durable store (both backends implement it)."""

    backend: str

    def schema_version(self) -> int: ...
    def create_collection(self, name: str, model: str, dim: int,
                          audit: AuditEntry | None = None) -> CollectionInfo: ...
    def get_collection(self, name: str) -> CollectionInfo: ...
    def list_collections(self) -> list[CollectionInfo]: ...
    def drop_collection(self, name: str, audit: AuditEntry | None = None) -> CollectionInfo: ...
    def add_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                  person_ids: Sequence[str], embeddings: np.ndarray,
                  persons: Sequence[PersonUpsert], *, create: bool = False,
                  idempotency: tuple[Any, ...] | None = None,
                  audit: AuditEntry | None = None) -> AddResult: ...
    def get_face(self, cid: int, face_id: str, with_embedding: bool = False) -> FaceRecord: ...
    def delete_faces(self, cid: int, face_ids: Sequence[str],
                     audit: AuditEntry | None = None) -> Deleted: ...
    def get_person(self, cid: int, person_id: str) -> PersonRecord: ...
    def delete_person(self, cid: int, person_id: str,
                      audit: AuditEntry | None = None) -> tuple[PersonRecord, Deleted]: ...
    def lookup(self, cid: int, ids: Sequence[int]) -> dict[int, HitInfo]: ...
    def counts(self, cid: int) -> tuple[int, int]: ...
    def existing_face_ids(self, cid: int, face_ids: Sequence[str]) -> set[str]: ...
    def face_ids_internal(self, cid: int) -> np.ndarray: ...
    def iter_shard(self, shard: int, nshards: int, chunk: int = 20000,
                   seqs: dict[int, tuple[int, int]] | None = None,
                   ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]: ...
    def collection_seqs(self) -> dict[int, tuple[int, int]]: ...
    def changes_since(self, cid: int, after_seq: int, shard: int, nshards: int) -> Changes: ...
    def list_persons(self, cid: int, after: str = "", limit: int = 100
                     ) -> list[PersonSummary]: ...
    def list_faces(self, cid: int, person_id: str | None = None, after: int = 0,
                   limit: int = 100, with_embedding: bool = False) -> list[ListedFace]: ...
    def update_person(self, cid: int, person_id: str, name: Any = KEEP,
                      labels: Any = KEEP, audit: AuditEntry | None = None) -> PersonRecord: ...
    def import_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                     person_ids: Sequence[str], embeddings: np.ndarray,
                     created_at: Sequence[float], persons: Sequence[PersonUpsert], *,
                     create: bool = False, audit: AuditEntry | None = None) -> ImportResult: ...
    def replay(self, collection: str, key: str, request_hash: str) -> AddResult | None: ...
    def append_audit(self, entries: Sequence[AuditEntry]) -> None: ...
    def audit_entries(self, *, collection: str | None = None, action: str | None = None,
                      since: float | None = None, after_seq: int = 0,
                      limit: int = 100) -> list[AuditEntry]: ...
    def prune_audit(self, before: float) -> int: ...
    def create_key(self, key: KeyRecord, audit: AuditEntry | None = None) -> KeyRecord: ...
    def revoke_key(self, key_id: str, audit: AuditEntry | None = None) -> KeyRecord: ...
    def list_keys(self) -> list[KeyRecord]: ...
    def keys_version(self) -> int: ...
    def key_table(self) -> tuple[int, list[KeyRecord]]: ...
    def touch_keys(self, used: dict[str, float]) -> None: ...
    def checkpoint(self) -> str | None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]
    #: the pgvector backend's statements where they differ from ``postgres``
    pgvector: tuple[str, ...] | None = None

    def statements(self, backend: str) -> tuple[str, ...]:
        if backend == "sqlite":
            return self.sqlite
        if backend == "pgvector" and self.pgvector is not None:
            return self.pgvector
        return self.postgres


_PG_V1 = (
    """CREATE TABLE collections (
                id BIGSERIAL PRIMARY KEY,
                name TEXT NOT NULL UNIQUE, model TEXT NOT NULL, dim INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE persons (
                collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                person_id TEXT NOT NULL, name TEXT, labels TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (collection_id, person_id))""",
    "CREATE SEQUENCE face_ids",
    """CREATE TABLE faces (
                id BIGINT PRIMARY KEY, face_id TEXT NOT NULL UNIQUE,
                collection_id BIGINT NOT NULL, person_id TEXT NOT NULL,
                bucket INTEGER NOT NULL, embedding BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                FOREIGN KEY (collection_id, person_id)
                    REFERENCES persons (collection_id, person_id) ON DELETE CASCADE)""",
    "CREATE INDEX faces_by_person ON faces (collection_id, person_id)",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "collections, persons, faces",
        sqlite=(
            """CREATE TABLE collections (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE, model TEXT NOT NULL, dim INTEGER NOT NULL,
                created_at REAL NOT NULL)""",
            """CREATE TABLE persons (
                collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                person_id TEXT NOT NULL, name TEXT, labels TEXT, created_at REAL NOT NULL,
                PRIMARY KEY (collection_id, person_id))""",
            """CREATE TABLE faces (
                id INTEGER PRIMARY KEY, face_id TEXT NOT NULL UNIQUE,
                collection_id INTEGER NOT NULL, person_id TEXT NOT NULL,
                bucket INTEGER NOT NULL, embedding BLOB NOT NULL, created_at REAL NOT NULL,
                FOREIGN KEY (collection_id, person_id)
                    REFERENCES persons (collection_id, person_id) ON DELETE CASCADE)""",
            "CREATE INDEX faces_by_person ON faces (collection_id, person_id)",
            # AUTOINCREMENT-like counter for face ids that survives deleting the max row
            "CREATE TABLE sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "INSERT INTO sequences (name, value) VALUES ('faces', 0)",
        ),
        postgres=_PG_V1,
        # pgvector: the same table with the embedding as a pgvector column of no fixed
        # dimension; each collection gets an HNSW index of its own dimension
        # (index.pgvector_store)
        pgvector=tuple(st.replace("embedding BYTEA", "embedding vector") for st in _PG_V1),
    ),
    Migration(
        2,
        "idempotency keys for register",
        sqlite=(
            """CREATE TABLE idempotency_keys (
                collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                key TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT,
                created_at REAL NOT NULL, PRIMARY KEY (collection_id, key))""",
        ),
        postgres=(
            """CREATE TABLE idempotency_keys (
                collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                key TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT,
                created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (collection_id, key))""",
        ),
    ),
    Migration(
        3,
        "change log: sequence numbers per collection, tombstones of forgotten faces",
        sqlite=(
            "ALTER TABLE collections ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0",
            # tombstones up to this sequence were pruned: a shard further behind reloads
            "ALTER TABLE collections ADD COLUMN pruned_seq INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE faces ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX faces_by_seq ON faces (collection_id, seq)",
            """CREATE TABLE face_tombstones (
                collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                seq INTEGER NOT NULL, id INTEGER NOT NULL, bucket INTEGER NOT NULL,
                deleted_at REAL NOT NULL)""",
            "CREATE INDEX tombstones_by_seq ON face_tombstones (collection_id, seq)",
        ),
        postgres=(
            "ALTER TABLE collections ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE collections ADD COLUMN pruned_seq BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE faces ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX faces_by_seq ON faces (collection_id, seq)",
            """CREATE TABLE face_tombstones (
                collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                seq BIGINT NOT NULL, id BIGINT NOT NULL, bucket INTEGER NOT NULL,
                deleted_at DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX tombstones_by_seq ON face_tombstones (collection_id, seq)",
        ),
    ),
    Migration(
        4,
        "API keys and the audit trail",
        sqlite=(
            # 'audit': the last audit seq; 'api_keys': the key table's version
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "INSERT INTO counters (name, value) VALUES ('audit', 0), ('api_keys', 0)",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, key_sha256 TEXT NOT NULL UNIQUE,
                scopes TEXT NOT NULL, collections TEXT, created_at REAL NOT NULL,
                last_used_at REAL, revoked_at REAL)""",
            # no foreign keys: an entry outlives the collection, face or key it names
            """CREATE TABLE audit_log (
                seq INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL,
                collection TEXT, person_id TEXT, key_id TEXT, request_id TEXT,
                status TEXT NOT NULL, details TEXT)""",
            "CREATE INDEX audit_by_collection ON audit_log (collection, seq)",
            "CREATE INDEX audit_by_action ON audit_log (action, seq)",
            "CREATE INDEX audit_by_time ON audit_log (at)",
        ),
        postgres=(
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO counters (name, value) VALUES ('audit', 0), ('api_keys', 0)",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, key_sha256 TEXT NOT NULL UNIQUE,
                scopes TEXT NOT NULL, collections TEXT, created_at DOUBLE PRECISION NOT NULL,
                last_used_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)""",
            """CREATE TABLE audit_log (
                seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, action TEXT NOT NULL,
                collection TEXT, person_id TEXT, key_id TEXT, request_id TEXT,
                status TEXT NOT NULL, details TEXT)""",
            "CREATE INDEX audit_by_collection ON audit_log (collection, seq)",
            "CREATE INDEX audit_by_action ON audit_log (action, seq)",
            "CREATE INDEX audit_by_time ON audit_log (at)",
        ),
    ),
    Migration(
        5,
        "faces in enrolment order per collection: keyset pages of listings and exports",
        sqlite=("CREATE INDEX faces_by_collection ON faces (collection_id, id)",),
        postgres=("CREATE INDEX faces_by_collection ON faces (collection_id, id)",),
    ),
    Migration(
        6,
        "API keys that expire",
        sqlite=("ALTER TABLE api_keys ADD COLUMN expires_at REAL",),
        postgres=("ALTER TABLE api_keys ADD COLUMN expires_at DOUBLE PRECISION",),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
#: tombstones are kept this long; a shard that stays behind for longer reloads its part
TOMBSTONE_RETENTION_S = 24 * 3600.0


# --------------------------------------------------------------------------- shared SQL


def _labels_out(text: str | None) -> dict[str, str]:
    return json.loads(text) if text else {}


def _labels_in(labels: dict[str, str] | None) -> str | None:
    return None if labels is None else json.dumps(labels, sort_keys=True)


def _vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(
        np.float32, copy=False)


def _guarded(fn: Any) -> Any:
    """Retry transient conflicts (deadlock, serialisation) and map a store that
    cannot be reached to :class:`StoreUnavailable` instead of a driver error."""

    @functools.wraps(fn)
    def wrapper(self: _SqlStore, *args: Any, **kwargs: Any) -> Any:
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


class _SqlStore:
    """Everything both backends share; subclasses supply connections and dialect."""

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
        return _vectors([bytes(v) for v in values], dim)

    def _decode_one(self, value: Any) -> np.ndarray:
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)

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

    @_guarded
    def schema_version(self) -> int:
        with self._tx(write=False) as cur:
            cur.execute("SELECT MAX(version) FROM schema_migrations")
            return int(cur.fetchone()[0] or 0)

    # -- collections
    _COLL = "id, name, model, dim, created_at, last_seq"

    @staticmethod
    def _coll(row: Sequence[Any]) -> CollectionInfo:
        return CollectionInfo(int(row[0]), row[1], row[2], int(row[3]), float(row[4]),
                              int(row[5]))

    def _upsert_persons(self, cur: Any, info: CollectionInfo, persons: Sequence[PersonUpsert],
                        now: float) -> dict[str, tuple[str | None, dict[str, str]]]:
        """Create or update the persons a write names; ``{person_id: (name, labels)}``
        as stored (a field the write leaves out keeps its stored value)."""
        stored: dict[str, tuple[str | None, dict[str, str]]] = {}
        # sorted: concurrent writes lock persons in one order (no deadlock)
        for p in sorted(persons, key=lambda p: p.person_id):
            cur.execute(self._q(
                "INSERT INTO persons (collection_id, person_id, name, labels, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection_id, person_id) DO UPDATE "
                "SET name = COALESCE(excluded.name, persons.name), "
                "labels = COALESCE(excluded.labels, persons.labels) "
                "RETURNING person_id, name, labels"),
                (info.id, p.person_id, p.name, _labels_in(p.labels), now))
            row = cur.fetchone()
            stored[row[0]] = (row[1], _labels_out(row[2]))
        return stored

    def _collection_for_write(self, cur: Any, collection: str, model: str, dim: int,
                              create: bool) -> tuple[CollectionInfo, bool]:
        """The collection a write goes to, made first when ``create`` allows it,
        and whether this transaction made it; bound to ``model`` and ``dim``."""
        info = self._find_collection(cur, collection)
        created = False
        if info is None:
            if not create:
                raise CollectionNotFound(f"collection {collection!r} does not exist",
                                         {"collection": collection})
            # two first writes may race here: the loser finds the winner's row
            info = self._create_collection(cur, collection, model, dim)
            created = info is not None
            info = info or self._find_collection(cur, collection)
            if info is None:  # created and dropped again meanwhile
                raise CollectionNotFound(f"collection {collection!r} does not exist",
                                         {"collection": collection})
        if info.model != model or info.dim != dim:
            raise ModelMismatch(
                f"collection {collection!r} holds {info.model} ({info.dim}-d) embeddings, "
                f"not {model} ({dim}-d)",
                {"collection": collection, "collection_model": info.model,
                 "collection_dim": info.dim, "model": model, "dim": dim})
        return info, created

    def _find_collection(self, cur: Any, name: str) -> CollectionInfo | None:
        cur.execute(self._q(f"SELECT {self._COLL} FROM collections WHERE name = ?"), (name,))
        row = cur.fetchone()
        return self._coll(row) if row else None

    @_guarded
    def create_collection(self, name: str, model: str, dim: int,
                          audit: AuditEntry | None = None) -> CollectionInfo:
        with self._tx(write=True) as cur:
            info = self._create_collection(cur, name, model, dim)
            if info is None:
                raise Conflict(f"collection {name!r} already exists", {"collection": name})
            self._audit(cur, audit)
        return info

    def _create_collection(self, cur: Any, name: str, model: str,
                           dim: int) -> CollectionInfo | None:
        """Insert a collection; None when one of that name exists (or was just made by a
        concurrent transaction: ON CONFLICT waits for it instead of failing)."""
        cur.execute(self._q(
            "INSERT INTO collections (name, model, dim, created_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {self._COLL}"),
            (name, model, int(dim), time.time()))
        row = cur.fetchone()
        if row is None:
            return None
        info = self._coll(row)
        self._collection_created(cur, info)
        return info

    def _collection_created(self, cur: Any, info: CollectionInfo) -> None:
        """Per-collection objects a backend keeps (pgvector: its index and view),
        made in the creating transaction."""

    def _collection_dropped(self, cur: Any, info: CollectionInfo) -> None:
        """Remove what :meth:`_collection_created` made, in the dropping transaction."""

    @_guarded
    def get_collection(self, name: str) -> CollectionInfo:
        with self._tx(write=False) as cur:
            info = self._find_collection(cur, name)
        if info is None:
            raise CollectionNotFound(f"collection {name!r} does not exist", {"collection": name})
        return info

    @_guarded
    def list_collections(self) -> list[CollectionInfo]:
        with self._tx(write=False) as cur:
            cur.execute(f"SELECT {self._COLL} FROM collections ORDER BY name")
            return [self._coll(r) for r in cur.fetchall()]

    @_guarded
    def drop_collection(self, name: str, audit: AuditEntry | None = None) -> CollectionInfo:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                f"DELETE FROM collections WHERE name = ? RETURNING {self._COLL}"), (name,))
            row = cur.fetchone()
            if row is None:
                raise CollectionNotFound(f"collection {name!r} does not exist",
                                         {"collection": name})
            self._collection_dropped(cur, self._coll(row))
            # every person of the collection is forgotten with it
            erasure.pseudonymise_audit(cur, self._q, self.erasure_key, name)
            self._audit(cur, audit)
        return self._coll(row)

    def _next_seq(self, cur: Any, cid: int) -> int:
        """Take the collection's next change number. The row update is also the
        collection's write lock: its writers commit one at a time, in sequence
        order, and a collection dropped meanwhile is noticed here."""
        cur.execute(self._q(
            "UPDATE collections SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq"),
            (cid,))
        row = cur.fetchone()
        if row is None:
            raise CollectionNotFound("the collection was dropped during the request",
                                     {"collection_id": cid})
        return int(row[0])

    # -- register
    @_guarded
    def add_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                  person_ids: Sequence[str], embeddings: np.ndarray,
                  persons: Sequence[PersonUpsert], *, create: bool = False,
                  idempotency: tuple[Any, ...] | None = None,
                  audit: AuditEntry | None = None) -> AddResult:
        """Commit new faces (and upsert their persons) as one change, with its audit
        entry.

        ``idempotency`` is ``(key, request hash)`` or ``(key, request hash, extra)``:
        the first write under a key stores its answer (and ``extra``, any JSON value),
        a repeat with the same hash gets it back (``replayed``), another request
        under the same key a :class:`Conflict`.
        """
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        n = len(face_ids)
        if emb.shape != (n, dim) or len(person_ids) != n:
            raise ValueError("face_ids, person_ids and embeddings must have matching lengths")
        with self._tx(write=True) as cur:
            info, created = self._collection_for_write(cur, collection, model, dim, create)
            if idempotency is not None:
                replay = self._claim_key(cur, info, idempotency)
                if replay is not None:
                    return replay
            seq = self._next_seq(cur, info.id)
            now = time.time()
            stored = self._upsert_persons(cur, info, persons, now)
            ids = self._next_ids(cur, n)
            buckets = np.fromiter((face_bucket(f) for f in face_ids), dtype=np.int64, count=n)
            row_bytes = emb.reshape(n, dim)
            self._insert_faces(cur, [
                (int(ids[i]), face_ids[i], info.id, person_ids[i], int(buckets[i]),
                 self._encode(row_bytes[i]), now, seq) for i in range(n)])
            if idempotency is not None:
                # [faces, persons, extra, created]: a replay is the first answer, whether
                # this write created the collection included (older rows hold 2-3 items)
                extra = idempotency[2] if len(idempotency) > 2 else None
                answer = [list(face_ids), list(person_ids), extra, created]
                cur.execute(self._q(
                    "UPDATE idempotency_keys SET response = ? WHERE collection_id = ? AND key = ?"),
                    (json.dumps(answer), info.id, idempotency[0]))
            if audit is not None:
                if created:
                    self._audit(cur, AuditEntry(
                        AuditAction.COLLECTION_CREATE.value, collection, key_id=audit.key_id,
                        request_id=audit.request_id))
                audit.face_ids = list(face_ids)
                distinct = list(dict.fromkeys(person_ids))
                audit.person_id = distinct[0] if len(distinct) == 1 else None
                audit.person_ids = None if len(distinct) == 1 else list(person_ids)
                self._audit(cur, audit)
        return AddResult(info, list(face_ids), list(person_ids), ids, buckets, emb, seq, now,
                         stored, collection_created=created)

    def _claim_key(self, cur: Any, info: CollectionInfo,
                   idempotency: tuple[str, ...]) -> AddResult | None:
        key, request_hash = idempotency[0], idempotency[1]
        # Inserting first makes a concurrent retry with the same key wait for this
        # transaction (unique index), then find the stored response.
        cur.execute(self._q(
            "INSERT INTO idempotency_keys (collection_id, key, request_hash, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (collection_id, key) DO NOTHING RETURNING key"),
            (info.id, key, request_hash, time.time()))
        if cur.fetchone() is not None:
            return None
        cur.execute(self._q(
            "SELECT request_hash, response FROM idempotency_keys "
            "WHERE collection_id = ? AND key = ?"), (info.id, key))
        stored_hash, response = cur.fetchone()
        if stored_hash != request_hash or response is None:
            raise Conflict(f"idempotency key {key!r} was used with a different request",
                           {"idempotency_key": key})
        return self._replayed(cur, info, response)

    def _replayed(self, cur: Any, info: CollectionInfo, response: str) -> AddResult:
        """The result of the write whose stored answer is ``response``, re-read."""
        face_ids, person_ids, *rest = json.loads(response)
        rows = self._faces_by_public_id(cur, info.id, face_ids)
        # faces forgotten since the first answer stay forgotten: only the rest are re-sent
        seq = max((int(r[3]) for r in rows), default=0)
        created = min((float(r[4]) for r in rows), default=0.0)
        persons: dict[str, tuple[str | None, dict[str, str]]] = {}
        for pid in dict.fromkeys(person_ids):
            cur.execute(self._q("SELECT name, labels FROM persons WHERE collection_id = ? "
                                "AND person_id = ?"), (info.id, pid))
            row = cur.fetchone()
            persons[pid] = (row[0], _labels_out(row[1])) if row else (None, {})
        return AddResult(
            info, face_ids, person_ids,
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            self._decode([r[2] for r in rows], info.dim), seq, created, persons,
            replayed=True, extra=rest[0] if rest else None,
            collection_created=bool(rest[1]) if len(rest) > 1 else False)

    def _faces_by_public_id(self, cur: Any, cid: int, face_ids: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        for i in range(0, len(face_ids), _IN_CHUNK):
            cond, params = self._any("face_id", face_ids[i:i + _IN_CHUNK])
            cur.execute(self._q(
                f"SELECT id, bucket, {self._EMB}, seq, created_at FROM faces "
                f"WHERE collection_id = ? AND {cond}"), [cid, *params])
            rows.extend(cur.fetchall())
        return rows

    # -- faces and persons
    def _face(self, row: Sequence[Any], with_embedding: bool = False) -> FaceRecord:
        emb = self._decode_one(row[5]) if with_embedding and len(row) > 5 else None
        return FaceRecord(int(row[0]), row[1], row[2], int(row[3]), float(row[4]), emb)

    @_guarded
    def get_face(self, cid: int, face_id: str, with_embedding: bool = False) -> FaceRecord:
        cols = "id, face_id, person_id, bucket, created_at"
        if with_embedding:
            cols += f", {self._EMB}"
        with self._tx(write=False) as cur:
            cur.execute(self._q(f"SELECT {cols} FROM faces WHERE collection_id = ? AND face_id = ?"),
                        (cid, face_id))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
        return self._face(row, with_embedding)

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

    @_guarded
    def delete_faces(self, cid: int, face_ids: Sequence[str],
                     audit: AuditEntry | None = None) -> Deleted:
        out: list[DeletedFace] = []
        with self._tx(write=True) as cur:
            seq = self._next_seq(cur, cid)
            for i in range(0, len(face_ids), _IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + _IN_CHUNK])
                cur.execute(self._q(
                    f"DELETE FROM faces WHERE collection_id = ? AND {cond} "
                    "RETURNING id, face_id, bucket"), [cid, *params])
                out.extend(DeletedFace(int(r[0]), r[1], int(r[2])) for r in cur.fetchall())
            self._tombstone(cur, cid, seq, out)
            idem = erasure.forget_idempotency(cur, self._q, cid, [d.face_id for d in out])
            if audit is not None and out:  # nothing forgotten, nothing to record
                audit.face_ids = [d.face_id for d in out]
                self._audit(cur, audit)
        return Deleted(out, seq, idem)

    def _person(self, cur: Any, cid: int, person_id: str) -> PersonRecord:
        cur.execute(self._q(
            "SELECT person_id, name, labels, created_at FROM persons "
            "WHERE collection_id = ? AND person_id = ?"), (cid, person_id))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"person {person_id!r} does not exist", {"person_id": person_id})
        person = PersonRecord(row[0], row[1], _labels_out(row[2]), float(row[3]))
        cur.execute(self._q(
            "SELECT id, face_id, person_id, bucket, created_at FROM faces "
            "WHERE collection_id = ? AND person_id = ? ORDER BY id"), (cid, person_id))
        person.faces = [self._face(r) for r in cur.fetchall()]
        return person

    @_guarded
    def get_person(self, cid: int, person_id: str) -> PersonRecord:
        with self._tx(write=False) as cur:
            return self._person(cur, cid, person_id)

    @_guarded
    def delete_person(self, cid: int, person_id: str,
                      audit: AuditEntry | None = None) -> tuple[PersonRecord, Deleted]:
        with self._tx(write=True) as cur:
            seq = self._next_seq(cur, cid)
            person = self._person(cur, cid, person_id)
            cur.execute(self._q(
                "DELETE FROM faces WHERE collection_id = ? AND person_id = ? "
                "RETURNING id, face_id, bucket"), (cid, person_id))
            deleted = [DeletedFace(int(r[0]), r[1], int(r[2])) for r in cur.fetchall()]
            cur.execute(self._q(
                "DELETE FROM persons WHERE collection_id = ? AND person_id = ?"), (cid, person_id))
            self._tombstone(cur, cid, seq, deleted)
            idem = erasure.forget_idempotency(cur, self._q, cid, [d.face_id for d in deleted])
            cur.execute(self._q("SELECT name FROM collections WHERE id = ?"), (cid,))
            cname = cur.fetchone()[0]
            hidden = erasure.pseudonymise_audit(cur, self._q, self.erasure_key, cname,
                                                [person_id])
            if audit is not None:
                # the forget's own entry names the person by its keyed hash too
                audit.person_id = erasure.pseudonym(self.erasure_key, cname, person_id)
                audit.face_ids = [d.face_id for d in deleted]
                self._audit(cur, audit)
        return person, Deleted(deleted, seq, idem, hidden)

    @_guarded
    def lookup(self, cid: int, ids: Sequence[int]) -> dict[int, HitInfo]:
        ids = sorted({int(i) for i in ids})
        out: dict[int, HitInfo] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(ids), _IN_CHUNK):
                cond, params = self._any("f.id", ids[i:i + _IN_CHUNK])
                # by primary key only: with "f.collection_id = ?" in the WHERE, SQLite
                # may walk the (collection_id, person_id) index over the whole collection
                cur.execute(self._q(
                    "SELECT f.id, f.face_id, f.person_id, p.name, p.labels, f.collection_id "
                    "FROM faces f JOIN persons p ON p.collection_id = f.collection_id "
                    f"AND p.person_id = f.person_id WHERE {cond}"), params)
                for r in cur.fetchall():
                    if int(r[5]) == cid:
                        out[int(r[0])] = HitInfo(r[1], r[2], r[3], _labels_out(r[4]))
        return out

    @_guarded
    def existing_face_ids(self, cid: int, face_ids: Sequence[str]) -> set[str]:
        """Which of ``face_ids`` the collection holds (imports skip those)."""
        found: set[str] = set()
        with self._tx(write=False) as cur:
            for i in range(0, len(face_ids), _IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + _IN_CHUNK])
                cur.execute(self._q(f"SELECT face_id FROM faces WHERE collection_id = ? AND {cond}"),
                            [cid, *params])
                found.update(r[0] for r in cur.fetchall())
        return found

    @_guarded
    def counts(self, cid: int) -> tuple[int, int]:
        with self._tx(write=False) as cur:
            cur.execute(self._q("SELECT COUNT(*) FROM faces WHERE collection_id = ?"), (cid,))
            faces = int(cur.fetchone()[0])
            cur.execute(self._q("SELECT COUNT(*) FROM persons WHERE collection_id = ?"), (cid,))
            return faces, int(cur.fetchone()[0])

    @_guarded
    def face_ids_internal(self, cid: int) -> np.ndarray:
        with self._tx(write=False) as cur:
            cur.execute(self._q("SELECT id FROM faces WHERE collection_id = ? ORDER BY id"), (cid,))
            return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)

    # -- listings and exports: keyset pages, one statement (one snapshot) each
    @_guarded
    def list_persons(self, cid: int, after: str = "", limit: int = 100) -> list[PersonSummary]:
        """Up to ``limit`` persons with ids after ``after``, in person-id order, each
        with its face count. Keyset pages: a person that exists while a client
        pages through is on exactly one page, whatever is written meanwhile."""
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT p.person_id, p.name, p.labels, p.created_at, "
                "(SELECT COUNT(*) FROM faces f WHERE f.collection_id = p.collection_id "
                "AND f.person_id = p.person_id) FROM persons p "
                "WHERE p.collection_id = ? AND p.person_id > ? ORDER BY p.person_id LIMIT ?"),
                (cid, after, int(limit)))
            return [PersonSummary(r[0], r[1], _labels_out(r[2]), float(r[3]), int(r[4]))
                    for r in cur.fetchall()]

    @_guarded
    def list_faces(self, cid: int, person_id: str | None = None, after: int = 0,
                   limit: int = 100, with_embedding: bool = False) -> list[ListedFace]:
        """Up to ``limit`` faces with internal ids after ``after`` (of one person when
        ``person_id`` is given), in enrolment order (internal ids are never reused),
        with their persons' names and labels and, for exports, their embeddings."""
        cols = "f.id, f.face_id, f.person_id, p.name, p.labels, f.created_at"
        if with_embedding:
            cols += ", " + self._EMB.replace("embedding", "f.embedding")
        where, params = "f.collection_id = ? AND f.id > ?", [cid, int(after)]
        if person_id is not None:
            where += " AND f.person_id = ?"
            params.append(person_id)
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                f"SELECT {cols} FROM faces f JOIN persons p ON p.collection_id = f.collection_id "
                f"AND p.person_id = f.person_id WHERE {where} ORDER BY f.id LIMIT ?"),
                [*params, int(limit)])
            rows = cur.fetchall()
        return [ListedFace(int(r[0]), r[1], r[2], r[3], _labels_out(r[4]), float(r[5]),
                           self._decode_one(r[6]) if with_embedding else None) for r in rows]

    # -- persons
    @_guarded
    def update_person(self, cid: int, person_id: str, name: Any = KEEP,
                      labels: Any = KEEP, audit: AuditEntry | None = None) -> PersonRecord:
        """Rename (``name``, None clears it) or relabel (``labels`` replaces the map)
        a person; fields left at :data:`KEEP` stay. Names and labels live in the
        person's row only (hits are resolved through it), so no index changes;
        ``audit`` is recorded in the same transaction."""
        sets: list[str] = []
        params: list[Any] = []
        if name is not KEEP:
            sets.append("name = ?")
            params.append(name)
        if labels is not KEEP:
            sets.append("labels = ?")
            params.append(_labels_in(labels or {}))
        with self._tx(write=True) as cur:
            if sets:
                cur.execute(self._q(
                    f"UPDATE persons SET {', '.join(sets)} WHERE collection_id = ? "
                    "AND person_id = ?"), [*params, cid, person_id])
            person = self._person(cur, cid, person_id)
            if audit is not None:
                audit.person_id = person_id
                self._audit(cur, audit)
            return person

    # -- imports
    @_guarded
    def import_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                     person_ids: Sequence[str], embeddings: np.ndarray,
                     created_at: Sequence[float], persons: Sequence[PersonUpsert], *,
                     create: bool = False, audit: AuditEntry | None = None) -> ImportResult:
        """Add faces that keep the ids (and enrolment times) they had elsewhere, as one
        change; ids the collection already holds are skipped, so an import runs again
        safely, and ids another collection holds are left out (``elsewhere``).
        ``audit`` is recorded in the same transaction, with the faces added."""
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        n = len(face_ids)
        if emb.shape != (n, dim) or len(person_ids) != n or len(created_at) != n:
            raise ValueError("face_ids, person_ids, embeddings and created_at must match")
        for attempt in range(2):
            try:
                return self._import(collection, model, dim, face_ids, person_ids, emb,
                                    created_at, persons, create, audit)
            except self._integrity as e:
                # the same ids committed by a concurrent import into another
                # collection after the check: the second look sees them
                if attempt:
                    raise Conflict("face ids were imported concurrently elsewhere; retry",
                                   {"collection": collection}) from e
        raise AssertionError("unreachable")

    def _import(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                person_ids: Sequence[str], emb: np.ndarray, created_at: Sequence[float],
                persons: Sequence[PersonUpsert], create: bool,
                audit: AuditEntry | None) -> ImportResult:
        with self._tx(write=True) as cur:
            info, created = self._collection_for_write(cur, collection, model, dim, create)
            # the collection's write lock first: a concurrent import of the same
            # ids into this collection waits here, then finds them below
            seq = self._next_seq(cur, info.id)
            n = len(face_ids)
            where: dict[str, int] = {}
            for i in range(0, n, _IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + _IN_CHUNK])
                cur.execute(self._q(f"SELECT face_id, collection_id FROM faces WHERE {cond}"),
                            params)
                where.update((r[0], int(r[1])) for r in cur.fetchall())
            keep = [i for i in range(n) if face_ids[i] not in where]
            skipped = [f for f in face_ids if where.get(f) == info.id]
            elsewhere = [f for f in face_ids if f in where and where[f] != info.id]
            now = time.time()
            wanted = {person_ids[i] for i in keep}
            stored = self._upsert_persons(
                cur, info, [p for p in persons if p.person_id in wanted], now)
            k = len(keep)
            ids = self._next_ids(cur, k) if k else np.empty(0, np.int64)
            kept_ids = [face_ids[i] for i in keep]
            buckets = np.fromiter((face_bucket(f) for f in kept_ids), dtype=np.int64, count=k)
            kept_emb = emb[keep].reshape(k, dim)
            if k:
                self._insert_faces(cur, [
                    (int(ids[j]), kept_ids[j], info.id, person_ids[i], int(buckets[j]),
                     self._encode(kept_emb[j]), float(created_at[i]), seq)
                    for j, i in enumerate(keep)])
            if audit is not None:
                if created:
                    self._audit(cur, AuditEntry(
                        AuditAction.COLLECTION_CREATE.value, collection, key_id=audit.key_id,
                        request_id=audit.request_id))
                audit.face_ids = kept_ids
                self._audit(cur, audit)
        added = AddResult(info, kept_ids, [person_ids[i] for i in keep], ids, buckets,
                          kept_emb, seq, now, stored, collection_created=created)
        return ImportResult(added, skipped, elsewhere)

    # -- idempotency keys
    @_guarded
    def replay(self, collection: str, key: str, request_hash: str) -> AddResult | None:
        """The stored result of the register made under ``key`` (re-read, as a replay),
        or None when no write under that key was committed; a :class:`Conflict`
        when the key was used with another request."""
        with self._tx(write=False) as cur:
            info = self._find_collection(cur, collection)
            if info is None:
                return None
            cur.execute(self._q(
                "SELECT request_hash, response FROM idempotency_keys "
                "WHERE collection_id = ? AND key = ?"), (info.id, key))
            row = cur.fetchone()
            if row is None or row[1] is None:
                return None
            if row[0] != request_hash:
                raise Conflict(f"idempotency key {key!r} was used with a different request",
                               {"idempotency_key": key})
            return self._replayed(cur, info, row[1])

    # -- the change log, as shards read it
    @_guarded
    def collection_seqs(self) -> dict[int, tuple[int, int]]:
        """``{collection id: (dim, last_seq)}`` of every collection."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT id, dim, last_seq FROM collections")
            return {int(r[0]): (int(r[1]), int(r[2])) for r in cur.fetchall()}

    @_guarded
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
        return Changes(cid, dim, last, np.array([r[0] for r in rows], dtype=np.int64),
                       self._decode([r[1] for r in rows], dim), removed, full)

    # -- the audit trail
    def _audit(self, cur: Any, entry: AuditEntry | None) -> None:
        """Insert ``entry`` in the transaction of ``cur``. Call it last: the counter
        row it updates is locked until the transaction ends (see the module doc)."""
        if entry is None:
            return
        cur.execute("UPDATE counters SET value = value + 1 WHERE name = 'audit' RETURNING value")
        entry.seq = int(cur.fetchone()[0])
        entry.at = time.time()
        cur.execute(self._q(
            "INSERT INTO audit_log (seq, at, action, collection, person_id, key_id, request_id,"
            " status, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (entry.seq, entry.at, entry.action, entry.collection, entry.person_id, entry.key_id,
             entry.request_id, entry.status, entry.details_json()))

    @_guarded
    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Record entries that go with no change of their own (identify), in one
        transaction."""
        if not entries:
            return
        with self._tx(write=True) as cur:
            for entry in entries:
                self._audit(cur, entry)

    @_guarded
    def audit_entries(self, *, collection: str | None = None, action: str | None = None,
                      since: float | None = None, after_seq: int = 0,
                      limit: int = 100) -> list[AuditEntry]:
        """Entries after ``after_seq``, oldest first, filtered."""
        where, params = ["seq > ?"], [int(after_seq)]
        if collection is not None:
            where.append("collection = ?")
            params.append(collection)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if since is not None:
            where.append("at >= ?")
            params.append(float(since))
        params.append(int(limit))
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT seq, at, action, collection, person_id, key_id, request_id, status, "
                f"details FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"),
                params)
            return [AuditEntry.from_row(*r) for r in cur.fetchall()]

    @_guarded
    def prune_audit(self, before: float) -> int:
        """Delete the entries recorded before ``before`` (epoch seconds); their seqs are
        never reused, so cursors stay valid."""
        with self._tx(write=True) as cur:
            cur.execute(self._q("DELETE FROM audit_log WHERE at < ?"), (float(before),))
            return max(0, int(cur.rowcount or 0))

    # -- API keys
    _KEY = "id, name, key_sha256, scopes, collections, created_at, last_used_at, expires_at"

    @staticmethod
    def _key(row: Sequence[Any]) -> KeyRecord:
        colls = json.loads(row[4]) if row[4] is not None else None
        return KeyRecord(row[0], row[1], row[2], tuple(json.loads(row[3])),
                         None if colls is None else tuple(colls), float(row[5]),
                         None if row[6] is None else float(row[6]),
                         None if row[7] is None else float(row[7]))

    def _bump_keys(self, cur: Any) -> None:
        cur.execute("UPDATE counters SET value = value + 1 WHERE name = 'api_keys'")

    @_guarded
    def create_key(self, key: KeyRecord, audit: AuditEntry | None = None) -> KeyRecord:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                "INSERT INTO api_keys (id, name, key_sha256, scopes, collections, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                (key.id, key.name, key.key_sha256, json.dumps(list(key.scopes)),
                 None if key.collections is None else json.dumps(list(key.collections)),
                 key.created_at, key.expires_at))
            self._bump_keys(cur)
            if audit is not None:
                audit.target_key_id = key.id
                self._audit(cur, audit)
        return key

    @_guarded
    def revoke_key(self, key_id: str, audit: AuditEntry | None = None) -> KeyRecord:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
                f"RETURNING {self._KEY}"), (time.time(), key_id))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"API key {key_id!r} does not exist", {"key_id": key_id})
            self._bump_keys(cur)
            if audit is not None:
                audit.target_key_id = key_id
                self._audit(cur, audit)
        return self._key(row)

    @_guarded
    def list_keys(self) -> list[KeyRecord]:
        return self.key_table()[1]

    @_guarded
    def keys_version(self) -> int:
        """Bumped by every key created or revoked: a cheap "has the table changed?"."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT value FROM counters WHERE name = 'api_keys'")
            return int(cur.fetchone()[0])

    @_guarded
    def key_table(self) -> tuple[int, list[KeyRecord]]:
        """The version and every live key, read in one snapshot."""
        with self._tx(write=False, snapshot=True) as cur:
            cur.execute("SELECT value FROM counters WHERE name = 'api_keys'")
            version = int(cur.fetchone()[0])
            cur.execute(f"SELECT {self._KEY} FROM api_keys WHERE revoked_at IS NULL "
                        "ORDER BY created_at, id")
            return version, [self._key(r) for r in cur.fetchall()]

    @_guarded
    def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (batched by the ingress replicas)."""
        if not used:
            return
        with self._tx(write=True) as cur:
            # sorted: concurrent touches lock rows in one order
            cur.executemany(self._q(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? "
                "AND (last_used_at IS NULL OR last_used_at < ?)"),
                [(at, kid, at) for kid, at in sorted(used.items())])

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
                           self._decode(blobs, dims[cid]))


# --------------------------------------------------------------------------- SQLite


class SqliteStore(_SqlStore):
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


# --------------------------------------------------------------------------- PostgreSQL


class PostgresStore(_SqlStore):
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


# --------------------------------------------------------------------------- opening


def open_store(backend: str = "sqlite", database_url: str | None = None,
               data_dir: str | Path = "data", pgvector: dict[str, Any] | None = None) -> Store:
    """Open (and migrate) the configured store.

    SQLite: ``database_url`` is a file path or ``sqlite:///path``; by default
    ``DATA_DIR/gallery.sqlite3``. PostgreSQL and pgvector: ``database_url`` is
    required; ``pgvector`` holds the HNSW options of the latter
    (:class:`index.pgvector_store.PgvectorStore`).
    """
    if backend == "sqlite":
        erasure.private_dir(data_dir)
        path: str | Path = Path(data_dir) / "gallery.sqlite3"
        if database_url:
            path = database_url.removeprefix("sqlite:///") if database_url.startswith(
                "sqlite:///") else database_url
        return SqliteStore(path)
    if backend in ("postgres", "pgvector"):
        if not database_url:
            raise StoreUnavailable(
                f"index.backend is {backend} but index.database_url is not set")
        if backend == "pgvector":
            from index.pgvector_store import PgvectorStore

            store: Store = PgvectorStore(database_url, **(pgvector or {}))
        else:
            store = PostgresStore(database_url)
        # the audit pseudonyms' key: the data dir's secret, shared by every process
        store.erasure_key = erasure.server_secret(  # type: ignore[attr-defined]
            erasure.private_dir(data_dir))
        return store
    raise StoreUnavailable(f"unknown index backend {backend!r}")
