"""Two revisions of the service side by side, for the before / after benches.

:func:`worktree` checks an earlier revision out in a detached git worktree (the
shared photos found beside it, as beside this checkout); :func:`service` starts
either checkout's service from that checkout's own code and configuration, as
``make serve`` does (``python -m deployments.local``), with its data in a temp
directory and this checkout's converted models, and stops its whole process
group afterwards. Both sides are then driven by the same client from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.head_to_head import stop_tree, wait_ready

REPO = Path(__file__).resolve().parent.parent


def short(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached checkout of ``rev``, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="ff-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "repo"), short(rev)],
                   cwd=REPO, check=True, capture_output=True)
    # the photos are found beside the checkout (../shared/faces), as in this one
    (tmp / "shared").symlink_to(REPO.parent / "shared")
    try:
        yield tmp / "repo"
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "repo")], cwd=REPO,
                       capture_output=True)


def env(repo: Path) -> dict[str, str]:
    """The environment of a side: none of this process's Ray or service settings, its own
    code first on the path, one native thread per process (as ``make serve`` runs)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FACEFLEET_"))}
    return {**clean, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(repo: Path, config: str, data: Path, settings: dict[str, Any] | None = None,
            start_timeout: float = 900, app_args: dict[str, Any] | None = None
            ) -> Iterator[str]:
    """``repo``'s service from its own ``config`` (a path inside ``repo``), its data in
    ``data``, ``settings`` and ``app_args`` laid over the application's arguments;
    yields its base URL. The log stays in ``data/service.log`` and its tail is
    printed when the start fails."""
    cfg = yaml.safe_load((repo / config).read_text())
    app = cfg["applications"][0]
    app["args"].update(app_args or {})
    app["args"].setdefault("settings", {}).update(
        {"data_dir": str(data), "model_dir": str(REPO / "data" / "models"),
         **(settings or {})})
    port = free_port()
    cfg.setdefault("http_options", {})["port"] = port
    path = data / "serve_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    base = f"http://127.0.0.1:{port}"
    log_path = data / "service.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.local", "--config", str(path),
             "--port", str(port)],
            cwd=repo, env=env(repo), start_new_session=True, stdout=log, stderr=log)
        try:
            wait_ready(base + "/ready", proc, start_timeout)
            yield base
        except Exception:
            log.flush()
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            stop_tree(proc)
