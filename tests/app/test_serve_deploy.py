"""The cluster path of the README: ``ray start --head``, then ``serve deploy``.

A Ray cluster is started as an operator starts one (``ray start --head --block``,
its environment from ``python -m deployments.local --cluster-env``, everything
on 127.0.0.1), and the app is deployed with Serve's own CLI from a copy of
``serve_config.yaml`` (data in a temp dir). Then, while 4 clients embed photos,
a second ``serve deploy`` changes the batch sizes (``user_config``) and the
replica counts: every request of the rollout must succeed, and Serve must show
the new settings. ``serve shutdown`` removes the app, and stopping the cluster
(SIGTERM to ``ray start --block``, what ``ray stop`` does to one machine's
cluster) must leave no process and no listener behind.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from deployments import local
from deployments.local import ports
from deployments.local.launcher import processes_with_env

pytestmark = pytest.mark.app

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
MARK = "FACEFLEET_CLUSTER_TEST"


def _marked(marker: str) -> list[int]:
    """Every process whose environment carries ``MARK=marker``."""
    return processes_with_env(MARK, marker)


def _cluster_env(temp_dir: Path, marker: str) -> dict[str, str]:
    """This process's environment without its own Serve instance's settings, plus
    what ``--cluster-env`` prints (run as the README runs it)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_SERVE_", "FACEFLEET_", "RAY_ADDRESS"))}
    out = subprocess.run([sys.executable, "-m", "deployments.local", "--cluster-env",
                          str(temp_dir)], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for line in out.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v.strip("'")
    env[MARK] = marker
    return env


def _serve(env: dict, *args: str, timeout: float = 120) -> str:
    r = subprocess.run([str(BIN / "serve"), *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"serve {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r.stdout


def _deployments(dash: str) -> dict:
    apps = httpx.get(f"{dash}/api/serve/applications/", timeout=30).json()["applications"]
    return apps["facefleet"]["deployments"] if "facefleet" in apps else {}


def _rolled_out(dash: str, config: dict) -> bool:
    """Serve runs ``config``'s replica counts and user_config, every replica up."""
    deps = _deployments(dash)
    for want in config["applications"][0]["deployments"]:
        got = deps.get(want["name"])
        if got is None or got["status"] != "HEALTHY":
            return False
        running = [r for r in got["replicas"] if r["state"] == "RUNNING"]
        if len(running) != want["num_replicas"] or len(got["replicas"]) != want["num_replicas"]:
            return False
        if "user_config" in want and got["deployment_config"]["user_config"] != want[
                "user_config"]:
            return False
    return True


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"not {what} after {timeout}s")


def test_serve_deploy_on_ray_start_rolls_out_under_load_and_stops_clean(tmp_path, faces):
    temp = Path(tempfile.mkdtemp(prefix="ff-rc-", dir="/tmp"))  # short: unix socket paths
    gcs, dash_port, http = ports.reserve_port(), ports.reserve_port(), ports.reserve_port()
    dash = f"http://127.0.0.1:{dash_port}"
    base = f"http://127.0.0.1:{http}"
    marker = uuid.uuid4().hex
    env = _cluster_env(temp, marker)
    first = local.load_config(REPO / "serve_config.yaml", {"settings": {
        "data_dir": str(tmp_path / "data"), "model_dir": str(REPO / "data" / "models")}}, http)
    second = yaml.safe_load(yaml.safe_dump(first))
    changed = {"Ingress": (2, None), "Embedder": (2, {"max_batch_size": 16}),
               "Detector": (1, {"max_batch_size": 4})}
    for d in second["applications"][0]["deployments"]:
        if d["name"] in changed:
            n, user = changed[d["name"]]
            d["num_replicas"] = n
            if user:
                d["user_config"] = {**d["user_config"], **user}
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    log = (tmp_path / "ray.log").open("wb")
    cluster = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         f"--temp-dir={temp}", "--num-cpus=4", f"--object-store-memory={512 * 1024 * 1024}",
         "--disable-usage-stats"],
        cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    body = base64.b64encode((faces / "deepface/img1.jpg").read_bytes()).decode()
    try:
        _wait(lambda: httpx.get(f"{dash}/api/version", timeout=5).status_code == 200, 180,
              "the dashboard answering")
        _serve(env, "deploy", str(tmp_path / "first.yaml"), "--address", dash)
        _wait(lambda: "RUNNING" in yaml.safe_load(_serve(env, "status", "--address", dash))
              ["applications"]["facefleet"]["status"], 420, "RUNNING")
        _wait(lambda: httpx.get(f"{base}/ready", timeout=10).status_code == 200, 120, "ready")
        r = httpx.post(f"{base}/v1/embed", json={"img": body}, timeout=60)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text

        stop = threading.Event()
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                while not stop.is_set():
                    try:
                        resp = c.post("/v1/embed", json={"img": body})
                        outcome = (resp.status_code, resp.text[:200])
                    except httpx.HTTPError as e:
                        outcome = (0, repr(e))
                    with lock:
                        results.append(outcome)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            _serve(env, "deploy", str(tmp_path / "second.yaml"), "--address", dash)
            _wait(lambda: _rolled_out(dash, second), 300, "rolled out")
            time.sleep(3)  # and a little load on the new replicas
        finally:
            stop.set()
            for t in threads:
                t.join(90)
        failed = [x for x in results if x[0] != 200]
        print(f"rollout under load: {len(results)} requests, {len(failed)} failed")
        assert len(results) >= 20, len(results)
        assert not failed, failed[:5]

        _serve(env, "shutdown", "--address", dash, "--yes")
        _wait(lambda: not _deployments(dash), 120, "shut down")
    finally:
        if cluster.poll() is None:
            os.kill(cluster.pid, signal.SIGTERM)  # `ray start --block` stops its cluster
            try:
                cluster.wait(120)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 30
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [f"{pid} {ports.process_name(pid)}" for pid in _marked(marker)]
        open_ports = [p for p in (gcs, dash_port, http) if _accepts(p)]
        for pid in _marked(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
    assert cluster.returncode is not None
    assert not left, f"left after the cluster stopped: {left}"
    assert not open_ports, f"still accepting connections: {open_ports}"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
