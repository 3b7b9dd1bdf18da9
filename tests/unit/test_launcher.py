"""What a local start does before Ray starts: ports, a second start, a crashed run.

``python -m deployments.local`` is run for real (no Ray starts in these cases:
each is refused, or cleared, before that), and real processes stand in for a
crashed run's leftovers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from deployments.local import launcher, ports
from deployments import local

REPO = Path(__file__).resolve().parent.parent.parent


def _config(tmp_path: Path) -> Path:
    config = local.load_config(REPO / "serve_config.yaml",
                               {"settings": {"data_dir": str(tmp_path / "data")}})
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(config: Path, port: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (launcher.ENV_LAUNCHER, launcher.ENV_INSTANCE)}
    return subprocess.run([sys.executable, "-m", "deployments.local", "--config", str(config),
                           "--port", str(port), "--no-dashboard"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_reserved_ports_are_outside_the_kernels_and_rays_ranges():
    lo, hi = ports.ephemeral_range()
    got = {ports.reserve_port() for _ in range(20)}
    assert len(got) == 20
    for port in got:
        assert not lo <= port <= hi and port not in ports.RAY_WORKER_PORTS
        with socket.socket() as s:  # free for its owner to bind
            s.bind(("127.0.0.1", port))


def test_a_reserved_port_is_not_handed_to_another_process():
    held = {ports.reserve_port() for _ in range(5)}
    code = ("from deployments.local import ports; "
            "print(' '.join(str(ports.reserve_port()) for _ in range(200)))")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, check=True, timeout=60)
    assert not held & {int(p) for p in other.stdout.split()}


def test_a_port_in_use_is_named_with_its_holder_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _launch(_config(tmp_path), port)
    assert r.returncode == 1
    line = [x for x in r.stderr.splitlines() if f"port {port}" in x]
    assert len(line) == 1, r.stderr
    assert f"pid {os.getpid()} (" in line[0] and f"kill {os.getpid()}" in line[0], line
    assert "--port" in line[0]


def test_a_second_start_on_the_same_data_is_refused_naming_the_first(tmp_path):
    config = _config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    state = launcher._State(data)
    assert state.lock()
    state.write({"instance": "x", "launcher_pid": 4242, "port": 18199})
    try:
        r = _launch(config, ports.reserve_port())
    finally:
        state.close()
    assert r.returncode == 1
    assert "already running" in r.stderr and "pid 4242" in r.stderr and "kill 4242" in r.stderr


def test_a_start_after_a_crash_clears_what_that_run_left(tmp_path, monkeypatch):
    """A run killed with its launcher leaves its state file (unlocked) and, here, a
    process of its own: the next start stops it before starting anything."""
    instance = uuid.uuid4().hex
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                env={**os.environ, launcher.ENV_INSTANCE: instance})
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / launcher.STATE_FILE).write_text(json.dumps(
            {"instance": instance, "launcher_pid": 999999, "port": 1}))
        assert launcher.instance_processes(instance) == [leftover.pid]
        monkeypatch.setattr(launcher, "GRACE_S", 1.0)
        t0 = time.monotonic()
        launcher._clear_earlier_run(launcher._State(data).read())
        assert leftover.wait(10) == -9 and time.monotonic() - t0 < 10
        assert launcher.instance_processes(instance) == []
    finally:
        if leftover.poll() is None:
            leftover.kill()
