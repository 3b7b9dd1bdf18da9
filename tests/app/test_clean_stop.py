"""A clean stop prints nothing that looks like an error: Serve and Ray started and
stopped by ``deployments.local`` in a process of their own, whose whole output is
read (Ray's "(raylet) Task ServeController.graceful_shutdown failed ..." line came
on every stop), and Serve's controller is really gone before Ray stops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parent.parent.parent

SCRIPT = textwrap.dedent("""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.config import ProxyLocation
    from deployments import local

    local.init_ray(num_cpus=1)
    serve_api.serve_start(http_options={"host": "127.0.0.1", "port": local.free_port()},
                          proxy_location=ProxyLocation("HeadOnly"))
    ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)  # it is running
    local._stop_serve(60)
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        print("CONTROLLER STILL THERE")
    except ValueError:
        print("CONTROLLER GONE")
    ray.shutdown()
    print("STOPPED")
""")


def test_a_clean_stop_prints_no_error_looking_line(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                       text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "CONTROLLER GONE" in out and "STOPPED" in out, out[-3000:]
    for bad in ("failed", "Traceback", "ERROR", "(raylet)"):
        assert bad not in out, out[-3000:]
