"""Open (and migrate) the configured store backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index import erasure
from index.errors import StoreUnavailable
from index.sealing import MasterKey, SealingError, load_master_key
from index.store.postgres import PostgresStore
from index.store.protocols import Store
from index.store.sqlite import SqliteStore


def open_store(backend: str = "sqlite", database_url: str | None = None,
               data_dir: str | Path = "data", pgvector: dict[str, Any] | None = None,
               encryption: dict[str, Any] | None = None) -> Store:
    """Open (and migrate) the configured store.

    SQLite: ``database_url`` is a file path or ``sqlite:///path``; by default
    ``DATA_DIR/gallery.sqlite3``. PostgreSQL and pgvector: ``database_url`` is
    required; ``pgvector`` holds the HNSW options of the latter
    (:class:`index.store.pgvector.PgvectorStore`). ``encryption`` says where the master
    keys are (:func:`master_keys`): names of files and variables, never the keys, so it
    may travel to shard actors as it is.
    """
    masters = master_keys(**(encryption or {}))
    if masters and backend == "pgvector":
        raise StoreUnavailable(
            "templates cannot be sealed on the pgvector backend: PostgreSQL must read the "
            "vectors to search them. Leave encryption.master_key_file and $"
            f"{(encryption or {}).get('master_key_env') or 'FACEFLEET_MASTER_KEY'} unset and "
            "encrypt the database's disk instead (docs/security.md)")
    store = _open(backend, database_url, data_dir, pgvector)
    store.masters = masters  # type: ignore[attr-defined]
    return store


def master_keys(master_key_file: str | None = None,
                master_key_env: str | None = "FACEFLEET_MASTER_KEY",
                previous_master_key_file: str | None = None) -> list[MasterKey]:
    """The configured master keys, the current one first; none when no key is set."""
    current = load_master_key(master_key_file, master_key_env)
    previous = load_master_key(previous_master_key_file, None)
    if previous is not None and current is None:
        raise SealingError("encryption.previous_master_key_file is set without a current "
                           "master key (encryption.master_key_file or $"
                           f"{master_key_env or 'FACEFLEET_MASTER_KEY'})")
    return [k for k in (current, previous) if k is not None]


def _open(backend: str, database_url: str | None, data_dir: str | Path,
          pgvector: dict[str, Any] | None) -> Store:
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
