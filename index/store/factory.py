"""Open (and migrate) the configured store backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index import erasure
from index.errors import StoreUnavailable
from index.store.postgres import PostgresStore
from index.store.protocols import Store
from index.store.sqlite import SqliteStore


def open_store(backend: str = "sqlite", database_url: str | None = None,
               data_dir: str | Path = "data", pgvector: dict[str, Any] | None = None) -> Store:
    """Open (and migrate) the configured store.

    SQLite: ``database_url`` is a file path or ``sqlite:///path``; by default
    ``DATA_DIR/gallery.sqlite3``. PostgreSQL and pgvector: ``database_url`` is
    required; ``pgvector`` holds the HNSW options of the latter
    (:class:`index.store.pgvector.PgvectorStore`).
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
            from index.store.pgvector import PgvectorStore

            store: Store = PgvectorStore(database_url, **(pgvector or {}))
        else:
            store = PostgresStore(database_url)
        # the audit pseudonyms' key: the data dir's secret, shared by every process
        store.erasure_key = erasure.server_secret(  # type: ignore[attr-defined]
            erasure.private_dir(data_dir))
        return store
    raise StoreUnavailable(f"unknown index backend {backend!r}")
