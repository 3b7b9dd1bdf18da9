"""kill -9 of the whole service under concurrent enrolment and forgetting.

The service runs as ``make serve`` runs it (``python -m deployments.local``, its
own Ray, gallery on SQLite under a temp dir), in a process session of its own.
Clients enrol LFW photos and forget some of the faces they were acknowledged
for; then every process of that service (driver, Ray's daemons, replicas and
shard actors) is killed with SIGKILL at once, and the service is started again
on the same data. Every acknowledged face must be found, and no face whose
forget was acknowledged may come back, by id or in an identify answer.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from deployments import local
from deployments.local.launcher import processes_with_env

pytestmark = pytest.mark.app

REPO = Path(__file__).resolve().parent.parent.parent
MARK = "FACEFLEET_CRASH_TEST"


#: side listeners of this process's own Serve instance (the session's app, which
#: deployments.local put in os.environ): the service under test picks its own
_OWN_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
              "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def _start(config_path: Path, marker: str, log: Path) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k not in _OWN_PORTS}, MARK: marker}
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.local", "--config", str(config_path),
         "--no-dashboard"], cwd=REPO, env=env, start_new_session=True,
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(base + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the service did not become ready")


def _marked(marker: str) -> list[int]:
    """Every process whose environment carries ``MARK=marker``."""
    return processes_with_env(MARK, marker)


def _kill_all(proc: subprocess.Popen, marker: str) -> None:
    victims = set(_marked(marker))
    assert len(victims) > 3, "expected the driver, Ray's daemons and the replicas"
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    deadline = time.monotonic() + 30
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, marker: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            pass
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_of_the_whole_service_loses_no_acknowledged_write(tmp_path, faces):
    port = local.free_port()
    base = f"http://127.0.0.1:{port}"
    config = local.load_config(
        REPO / "configs" / "serve_config.fused.yaml",
        {"gallery": True, "settings": {"data_dir": str(tmp_path / "data"),
                                       "model_dir": str(REPO / "data" / "models")}}, port)
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    photos = sorted((faces / "lfw-dev" / "images").glob("*/*.jpg"))[:400]
    bodies = [base64.b64encode(p.read_bytes()).decode() for p in photos]
    marker = uuid.uuid4().hex
    log = tmp_path / "service.log"
    proc = _start(config_path, marker, log)
    acked: dict[str, int] = {}      # face id -> photo index
    forgotten: set[str] = set()
    unsure: set[str] = set()        # a forget sent without an answer: either way is right
    lock = threading.Lock()
    stop = threading.Event()
    try:
        _wait_ready(base, proc)

        def enrol(worker: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                for i in range(worker, len(bodies), 4):
                    if stop.is_set():
                        return
                    try:
                        r = c.post("/v1/collections/crash/faces",
                                   json={"img": bodies[i], "person_id": f"p{i}"})
                    except httpx.HTTPError:
                        continue  # in flight at the kill: neither promised nor refused
                    if r.status_code == 201:
                        with lock:
                            acked[r.json()["id"]] = i

        def forget() -> None:
            rnd = random.Random(7)
            with httpx.Client(base_url=base, timeout=30) as c:
                while not stop.is_set():
                    with lock:
                        live = sorted(set(acked) - forgotten)
                    if len(live) < 4:
                        time.sleep(0.05)
                        continue
                    face = rnd.choice(live)
                    with lock:
                        unsure.add(face)
                    try:
                        r = c.delete(f"/v1/collections/crash/faces/{face}")
                    except httpx.HTTPError:
                        return  # the service is gone
                    if r.status_code == 204:
                        with lock:
                            forgotten.add(face)
                            unsure.discard(face)
                    time.sleep(0.1)

        threads = [threading.Thread(target=enrol, args=(w,)) for w in range(4)]
        threads.append(threading.Thread(target=forget))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(acked) < 60 or len(forgotten) < 10):
            time.sleep(0.2)
        _kill_all(proc, marker)  # mid-traffic: requests are in flight
        stop.set()
        for t in threads:
            t.join(60)
        assert len(acked) >= 60 and len(forgotten) >= 10, (len(acked), len(forgotten))

        proc = _start(config_path, marker, log)
        _wait_ready(base, proc)
        with httpx.Client(base_url=base, timeout=60) as c:
            kept = set(acked) - forgotten - unsure
            lost = [f for f in kept
                    if c.get(f"/v1/collections/crash/faces/{f}").status_code != 200]
            back = [f for f in forgotten
                    if c.get(f"/v1/collections/crash/faces/{f}").status_code != 404]
            assert not lost and not back, (lost, back)
            # and the index agrees with the store: a forgotten face is never a match
            for face in sorted(forgotten)[:10]:
                r = c.post("/v1/collections/crash/identify",
                           json={"img": bodies[acked[face]], "top_k": 10})
                assert r.status_code == 200, r.text
                ids = {m["id"] for f in r.json()["faces"] for m in f["matches"]}
                assert face not in ids
            for face in sorted(kept)[:10]:
                r = c.post("/v1/collections/crash/identify",
                           json={"img": bodies[acked[face]], "top_k": 3})
                assert face in {m["id"] for f in r.json()["faces"] for m in f["matches"]}
            stats = c.get("/v1/collections/crash").json()
            # writes in flight at the kill may have committed without an answer
            assert len(kept) <= stats["faces"] <= len(kept) + len(unsure) + 4
            assert stats["faces"] == sum(stats["shard_sizes"])
    finally:
        stop.set()
        _stop(proc, marker)
