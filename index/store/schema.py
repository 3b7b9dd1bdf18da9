"""The store's schema: the migrations applied in order at open time, per backend
(SQLite, PostgreSQL, and pgvector where its statements differ)."""

from __future__ import annotations

from dataclasses import dataclass

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
        # (index.store.pgvector)
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
    Migration(
        7,
        "templates sealed at rest: a collection's data key, wrapped by a master key",
        # NULL: a collection whose templates are stored plain (made without a master key)
        sqlite=("ALTER TABLE collections ADD COLUMN data_key BLOB",
                "ALTER TABLE collections ADD COLUMN master_key_id TEXT"),
        postgres=("ALTER TABLE collections ADD COLUMN data_key BYTEA",
                  "ALTER TABLE collections ADD COLUMN master_key_id TEXT"),
    ),
    Migration(
        8,
        "per-collection settings (identify enrols unknown faces, thumbnails are kept); "
        "faces copied from another collection remember the id they were copied from; "
        "a small JPEG per face, deleted with it",
        # 0/1: SQLite has no boolean; the same integer on PostgreSQL keeps one reader
        sqlite=("ALTER TABLE collections ADD COLUMN enrol_unknown INTEGER NOT NULL DEFAULT 0",
                "ALTER TABLE collections ADD COLUMN thumbnails INTEGER NOT NULL DEFAULT 1",
                "ALTER TABLE faces ADD COLUMN origin TEXT",
                "CREATE INDEX faces_by_origin ON faces (collection_id, origin)",
                """CREATE TABLE face_thumbnails (
                    id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
                    jpeg BLOB NOT NULL)"""),
        postgres=("ALTER TABLE collections ADD COLUMN enrol_unknown INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE collections ADD COLUMN thumbnails INTEGER NOT NULL DEFAULT 1",
                  "ALTER TABLE faces ADD COLUMN origin TEXT",
                  "CREATE INDEX faces_by_origin ON faces (collection_id, origin)",
                  """CREATE TABLE face_thumbnails (
                      id BIGINT PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
                      jpeg BYTEA NOT NULL)"""),
    ),
    Migration(
        9,
        "clustering jobs: status, progress and result of each run of a collection",
        sqlite=("""CREATE TABLE cluster_jobs (
                job_id TEXT PRIMARY KEY,
                collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                status TEXT NOT NULL, progress REAL NOT NULL, params TEXT, result TEXT,
                error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
                "CREATE INDEX cluster_jobs_by_collection ON cluster_jobs (collection_id, created_at)"),
        postgres=("""CREATE TABLE cluster_jobs (
                job_id TEXT PRIMARY KEY,
                collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
                status TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL, params TEXT,
                result TEXT, error TEXT, created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL)""",
                  "CREATE INDEX cluster_jobs_by_collection ON cluster_jobs (collection_id, created_at)"),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
