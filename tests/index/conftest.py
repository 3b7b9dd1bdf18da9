"""Fixtures of the gallery tests: a real PostgreSQL server for the session, and a
fresh store of either backend per test.

The server is initialised in a temporary directory and listens on a unix
socket there and on 127.0.0.1 at a free port. ``initdb`` refuses to run as
root, so as root it runs as the ``postgres`` system user. Tests that need it
are skipped only when the server binaries are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.local import free_port

from index.store import PostgresStore, SqliteStore, Store

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    # also declared in pyproject.toml; repeated so this folder runs on its own
    config.addinivalue_line("markers", "ray: starts a local Ray / Serve instance")


def _pg_bindir() -> Path | None:
    for cand in [os.environ.get("PG_BINDIR", ""),
                 *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="ffpg-"))
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.dir / "pg"), "-A", "trust",
                  "-U", "postgres", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "pg"), "-w", "-l",
                  str(self.dir / "log"), "-o",
                  f"-k {self.dir} -h 127.0.0.1 -p {self.port} -c fsync=off "
                  "-c shared_buffers=64MB -c max_connections=100", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "pg"), "-m", "fast",
                      "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres", tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.dir)
        return f"postgresql://postgres@/{db}?host={host}&port={self.port}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database (over the unix socket)."""
    return pg_server.url(pg_server.new_database())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """``open()`` gives a new connection set to the same fresh store of one backend."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "gallery.sqlite3"

        def open_() -> Store:
            opened.append(SqliteStore(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_url")

        def open_() -> Store:
            opened.append(PostgresStore(url))
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
