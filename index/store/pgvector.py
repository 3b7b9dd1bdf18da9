"""The gallery store on PostgreSQL with pgvector: vectors searched in SQL.

Layout. The schema is the PostgreSQL backend's (``index.store.schema``: collections,
persons, faces, idempotency keys, the change log and its tombstones), except
that ``faces.embedding`` is a pgvector ``vector`` of no fixed dimension, since
collections bound to different models live in one table. Each collection
gets, in the transaction that creates it:

- ``faces_hnsw_<collection id>``: a partial HNSW index on
  ``(embedding::vector(dim)) vector_cosine_ops WHERE collection_id = <id>``, so
  every collection has an index of its own dimension over its own faces only
  (no filtering after the graph walk, so no lost results);
- a view in the shape of the "customer-owned face search" recipe,
  ``face_embeddings_<name>`` (``face_embeddings_c<id>`` when the name is not a
  plain lowercase SQL identifier of up to 47 characters or the name is taken):
  ``id uuid, person_id text, label text, embedding vector(dim), metadata jsonb,
  created_at timestamptz``, where ``label`` is the person's name and
  ``metadata`` the person's labels. Nearest faces by ``<=>`` on that view use
  the collection's HNSW index.

``pgvector_collections`` records each collection's index and view names and
HNSW build parameters. Searches are one statement per batch of queries (a
``LATERAL`` join, one index scan per query) with ``hnsw.ef_search`` set for the
transaction only. Writes, forgets and the change log are the shared SQL of
``index.store`` unchanged: a commit is the index update, so an acknowledged
face is searchable at once and a forgotten one is gone at once.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np

from index.errors import StoreUnavailable
from index.store.postgres import PostgresStore
from index.store.records import CollectionInfo

log = logging.getLogger(__name__)

#: a collection name that can be a view name's suffix without quoting
_PLAIN_NAME = re.compile(r"^[a-z0-9_]{1,47}$")
VIEW_PREFIX = "face_embeddings_"

#: made with the schema (pgvector's variant of migration 1 adds nothing else)
_CATALOG = """CREATE TABLE IF NOT EXISTS pgvector_collections (
    collection_id BIGINT PRIMARY KEY, index_name TEXT NOT NULL, view_name TEXT NOT NULL,
    m INTEGER NOT NULL, ef_construction INTEGER NOT NULL)"""


class PgvectorStore(PostgresStore):
    """PostgreSQL + pgvector store whose collections are searched by their HNSW index.

    ``hnsw_m`` / ``hnsw_ef_construction`` apply to the indexes built from now on;
    ``hnsw_ef_search`` to every search (raised to ``k`` when ``k`` is larger, as
    HNSW returns at most ``ef_search`` rows); ``maintenance_work_mem`` and
    ``build_workers`` to :meth:`build_vector_index`.
    """

    backend = "pgvector"
    _EMB_TYPE = "vector"
    # the binary form of a vector: uint16 dim, uint16 unused, big-endian float32s
    _EMB = "vector_send(embedding)"

    def __init__(self, url: str, connect_timeout_s: float = 10.0, *, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 64, hnsw_ef_search: int = 40,
                 maintenance_work_mem: str = "1GB", build_workers: int = 2) -> None:
        try:
            from pgvector import Vector
            from pgvector.psycopg import register_vector
        except ImportError as e:  # pragma: no cover - pgvector is a dependency
            raise StoreUnavailable("the pgvector backend needs the pgvector package") from e
        self._Vector = Vector
        self._register = register_vector
        self.m = int(hnsw_m)
        self.ef_construction = int(hnsw_ef_construction)
        self.ef_search = int(hnsw_ef_search)
        if not re.fullmatch(r"\d+\s*(kB|MB|GB)", maintenance_work_mem):
            raise ValueError("maintenance_work_mem is a size such as '1GB'")
        self.maintenance_work_mem = maintenance_work_mem
        self.build_workers = int(build_workers)
        super().__init__(url, connect_timeout_s)

    # -- connections and schema
    def _migrate(self) -> None:
        # the extension must exist before any connection registers the vector type
        try:
            with self._psycopg.connect(self.url, autocommit=True,
                                       connect_timeout=int(self._timeout)) as conn:
                conn.execute("SELECT pg_advisory_lock(7270015)")
                try:
                    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'"
                                    ).fetchone() is None:
                        conn.execute("CREATE EXTENSION vector")
                finally:
                    conn.execute("SELECT pg_advisory_unlock(7270015)")
        except self._psycopg.errors.FeatureNotSupported as e:
            raise StoreUnavailable(f"the pgvector extension is not installed: {e}") from e
        except self._psycopg.errors.UndefinedFile as e:
            raise StoreUnavailable(
                f"the server has no pgvector extension (vector.so): {e}") from e
        except self._psycopg.errors.InsufficientPrivilege as e:
            raise StoreUnavailable(
                "the pgvector extension is not installed in this database and this user "
                f"may not install it (CREATE EXTENSION vector as a superuser): {e}") from e
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot connect to the pgvector store: {e}") from e
        super()._migrate()
        with self._tx(write=True) as cur:
            self._migration_lock(cur)
            cur.execute(_CATALOG)

    def _connect(self) -> Any:
        conn = super()._connect()
        self._register(conn)
        return conn

    # -- embeddings in and out
    def _encode(self, vector: np.ndarray) -> Any:
        return self._Vector(vector)

    def _decode(self, values: list[Any], dim: int) -> np.ndarray:
        if not values:
            return np.empty((0, dim), dtype=np.float32)
        # each value is 4 header bytes + dim floats: read as rows of dim + 1 floats
        rows = np.frombuffer(b"".join(bytes(v) for v in values), dtype=">f4")
        return rows.reshape(len(values), dim + 1)[:, 1:].astype(np.float32)

    def _decode_one(self, value: Any) -> np.ndarray:
        return np.frombuffer(bytes(value), dtype=">f4")[1:].astype(np.float32)

    def _insert_faces(self, cur: Any, rows: list[tuple]) -> None:
        # binary COPY: no text formatting of 128+ floats per face
        with cur.copy("COPY faces (id, face_id, collection_id, person_id, bucket, embedding,"
                      " created_at, seq) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "int8", "text", "int4", "vector", "float8",
                            "int8"])
            for row in rows:
                copy.write_row(row)

    # -- per-collection index and view
    @staticmethod
    def index_name(cid: int) -> str:
        return f"faces_hnsw_{int(cid)}"

    def _index_sql(self, info: CollectionInfo, m: int, ef_construction: int) -> str:
        return (f"CREATE INDEX {self.index_name(info.id)} ON faces USING hnsw "
                f"((embedding::vector({int(info.dim)})) vector_cosine_ops) "
                f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
                f"WHERE collection_id = {int(info.id)}")

    def _collection_created(self, cur: Any, info: CollectionInfo) -> None:
        # Building an index takes a SHARE lock on faces; taking the self-exclusive
        # SHARE ROW EXCLUSIVE first makes concurrent creators queue instead of
        # deadlocking on each other's inserts.
        cur.execute("LOCK TABLE faces IN SHARE ROW EXCLUSIVE MODE")
        cur.execute(self._index_sql(info, self.m, self.ef_construction))
        view = VIEW_PREFIX + info.name if _PLAIN_NAME.match(info.name) else ""
        if view:
            cur.execute("SELECT to_regclass(%s)", (view,))
            if cur.fetchone()[0] is not None:
                view = ""  # a table or view of that name exists already: not ours
        view = view or f"{VIEW_PREFIX}c{int(info.id)}"
        d, c = int(info.dim), int(info.id)
        cur.execute(
            f"CREATE VIEW {view} AS SELECT f.face_id::uuid AS id, f.person_id, "
            "p.name AS label, "
            f"f.embedding::vector({d}) AS embedding, "
            "COALESCE(p.labels::jsonb, '{}'::jsonb) AS metadata, "
            "to_timestamp(f.created_at) AS created_at "
            "FROM faces f JOIN persons p ON p.collection_id = f.collection_id "
            f"AND p.person_id = f.person_id WHERE f.collection_id = {c}")
        cur.execute("INSERT INTO pgvector_collections (collection_id, index_name, view_name, m, "
                    "ef_construction) VALUES (%s, %s, %s, %s, %s)",
                    (c, self.index_name(c), view, self.m, self.ef_construction))

    def _collection_dropped(self, cur: Any, info: CollectionInfo) -> None:
        cur.execute("DELETE FROM pgvector_collections WHERE collection_id = %s "
                    "RETURNING index_name, view_name", (info.id,))
        row = cur.fetchone()
        if row is not None:
            cur.execute(f"DROP VIEW IF EXISTS {row[1]}")
            cur.execute(f"DROP INDEX IF EXISTS {row[0]}")

    def sql_view(self, info: CollectionInfo) -> str | None:
        """The name of the collection's recipe-shaped view."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT view_name FROM pgvector_collections WHERE collection_id = %s",
                        (info.id,))
            row = cur.fetchone()
        return row[0] if row else None

    def drop_vector_index(self, info: CollectionInfo) -> None:
        """Drop a collection's HNSW index (before a bulk load; searches are exact
        meanwhile, and slow on large collections)."""
        with self._tx(write=True) as cur:
            cur.execute(f"DROP INDEX IF EXISTS {self.index_name(info.id)}")

    def build_vector_index(self, info: CollectionInfo) -> float:
        """(Re)build a collection's HNSW index from its rows, the way pgvector builds
        fastest: in one pass with the graph in ``maintenance_work_mem`` and parallel
        workers. Writes to the faces table wait meanwhile. Returns the seconds taken."""
        t0 = time.perf_counter()
        with self._tx(write=True) as cur:
            cur.execute(f"SET LOCAL maintenance_work_mem = '{self.maintenance_work_mem}'")
            cur.execute(f"SET LOCAL max_parallel_maintenance_workers = {self.build_workers}")
            cur.execute(f"DROP INDEX IF EXISTS {self.index_name(info.id)}")
            cur.execute(self._index_sql(info, self.m, self.ef_construction))
            cur.execute("UPDATE pgvector_collections SET m = %s, ef_construction = %s "
                        "WHERE collection_id = %s", (self.m, self.ef_construction, info.id))
            # fresh statistics, so queries through the view join persons by key
            cur.execute("ANALYZE faces")
            cur.execute("ANALYZE persons")
        seconds = time.perf_counter() - t0
        log.info("HNSW index of collection %s built in %.1fs", info.name, seconds)
        return seconds

    def index_info(self) -> list[dict[str, Any]]:
        """Each collection's index: name, view, parameters, size on disk, rows."""
        with self._tx(write=False) as cur:
            cur.execute(
                "SELECT v.collection_id, v.index_name, v.view_name, v.m, v.ef_construction, "
                "pg_relation_size(to_regclass(v.index_name)) FROM pgvector_collections v "
                "ORDER BY v.collection_id")
            return [{"collection_id": int(r[0]), "index": r[1], "view": r[2], "m": int(r[3]),
                     "ef_construction": int(r[4]), "ef_search": self.ef_search,
                     "index_bytes": None if r[5] is None else int(r[5])}
                    for r in cur.fetchall()]

    # -- search
    def nearest(self, cid: int, queries: np.ndarray, k: int,
                ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` faces of collection ``cid`` for each query by cosine distance:
        ``(similarities, internal ids)`` of shape ``(nq, k)``, padded with ``-inf`` / -1.

        ``queries`` are unit vectors of the collection's dimension (the gallery
        checks both). Ties are broken by the smaller id, as the FAISS merge does.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nq, dim = queries.shape
        ef = max(int(ef_search or self.ef_search), int(k))
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        # the collection id and dimension are literals: the planner must see them to
        # pick the collection's partial index (a generic plan could not)
        expr = f"f.embedding::vector({int(dim)})"
        sql = (f"SELECT q.n, h.id, h.d FROM unnest(%s::vector({int(dim)})[]) WITH ORDINALITY "
               f"AS q(v, n) CROSS JOIN LATERAL (SELECT f.id, {expr} <=> q.v AS d FROM faces f "
               f"WHERE f.collection_id = {int(cid)} ORDER BY {expr} <=> q.v "
               f"LIMIT {int(k)}) h")
        with self._tx(write=False) as cur:
            cur.execute(f"SET LOCAL hnsw.ef_search = {ef}")
            # faces forgotten but not yet vacuumed are skipped by the scan: keep walking
            # the graph until k live ones are found, in exact distance order
            cur.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            cur.execute(sql, ([self._Vector(q) for q in queries],))
            rows = cur.fetchall()
        per: dict[int, list[tuple[float, int]]] = {}
        for n, fid, d in rows:
            per.setdefault(int(n) - 1, []).append((float(d), int(fid)))
        for qi, hits in per.items():
            hits.sort()
            for j, (d, fid) in enumerate(hits[:k]):
                scores[qi, j] = 1.0 - d
                ids[qi, j] = fid
        return scores, ids
