"""Photos as phones send them, and what is around the API: phone-size photos cross
every hop between deployments, a 500 is logged with its traceback and request id,
and no process of the service listens beyond loopback."""

from __future__ import annotations

import ipaddress
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from configs.settings import ImageLimits
from tests.app.photos import b64, check_phone_photos

pytestmark = pytest.mark.app


def test_phone_size_photos_in_the_separate_topology(api, phone_photos):
    # the photos travel Ingress -> Detector over Serve's gRPC (4 MiB by default)
    check_phone_photos(api, phone_photos, ImageLimits().max_bytes)


def test_a_500_is_logged_with_its_traceback_and_request_id(api, faces):
    from ray import serve

    from deployments import local

    gallery = serve.get_deployment_handle("Gallery", "facefleet")
    # on a thread of its own: the browser tests' Playwright keeps an event loop running in
    # this one for the rest of the session, and a handle refuses a blocking wait there
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: gallery.inject_fault.remote("raise_after_commit").result()).result()
    r = api.post("/v1/collections/error-log/faces",
                 json={"img": b64(faces / "deepface/img1.jpg"), "person_id": "p1"})
    assert r.status_code == 500, r.text
    rid = r.json()["error"]["request_id"]
    assert rid and r.headers["x-request-id"] == rid
    logs = Path(local.ray_logs_dir()) / "serve"
    deadline = time.monotonic() + 10
    while True:  # written and flushed as it happens, not when a buffer fills
        hits = [p for p in logs.glob("replica_facefleet_Ingress_*.log")
                if rid in p.read_text(errors="replace")]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert hits, f"request id {rid} in no Ingress log under {logs}"
    line = next(x for x in hits[0].read_text(errors="replace").splitlines() if rid in x)
    assert "ERROR" in line and "Traceback" in line and "injected fault" in line, line
    # the write was committed before the fault: the gallery still answers it
    assert api.get("/v1/collections/error-log/persons/p1").status_code == 200
    assert api.delete("/v1/collections/error-log").status_code in (200, 204)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def test_no_process_of_the_service_listens_beyond_loopback(api):
    assert api.get("/ready").status_code == 200
    me = psutil.Process(os.getpid())
    procs = [me, *me.children(recursive=True)]  # Ray, its workers, the replicas, HAProxy
    names = {p.name() for p in procs if p.is_running()}
    assert any("ServeReplica" in n or "ServeRepli" in n for n in names), names
    listening, outside = 0, []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening += 1
                if not _loopback(c.laddr.ip):
                    outside.append((p.pid, p.name(), f"{c.laddr.ip}:{c.laddr.port}"))
    assert listening >= 6, listening  # HTTP, GCS, raylet, replicas' gRPC ...
    assert outside == [], outside
