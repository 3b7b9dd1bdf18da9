"""A plain closed-loop HTTP load client, run as its own process.

    .venv/bin/python -m bench.http_load --url http://127.0.0.1:8000 --path /v1/embed \
        --photos lfw:300 --concurrency 32 [--requests 300] [--new-connections]

What a user measures with their own client: N threads, each with one request in
flight, each request one JSON body with a base64 photo (``{"img": ...}``), sent
with the standard library's ``http.client`` over one keep-alive connection per
thread (or a new connection per request with ``--new-connections``). Bodies are
encoded before the clock starts, so the client's own cost per request is the
HTTP exchange. Prints one JSON object: images/s, latency percentiles, status
counts, and the client's own CPU seconds. Benchmarks import :func:`run` to
start it as a subprocess, so the client never shares a process (or its GIL)
with the service it measures.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "faces"


def photos(spec: str) -> list[Path]:
    """``lfw:N`` (N LFW dev photos spread over people) or ``camera:N`` (deepface/ photos)."""
    kind, _, n = spec.partition(":")
    count = int(n or 0)
    if kind == "lfw":
        every = sorted((FACES / "lfw-dev" / "images").glob("*/*.jpg"))
        step = max(len(every) // max(count, 1), 1)
        return every[::step][:count]
    if kind == "camera":
        every = sorted((FACES / "deepface").glob("*.jpg"))
        return (every * (count // max(len(every), 1) + 1))[:count]
    raise SystemExit(f"unknown photo set {spec!r}: lfw:N or camera:N")


def _bodies(paths: list[Path], extra: dict, data_uri: bool = False) -> list[bytes]:
    prefix = "data:image/jpeg;base64," if data_uri else ""
    return [json.dumps({"img": prefix + base64.b64encode(p.read_bytes()).decode(),
                        **extra}).encode() for p in paths]


def closed_loop(url: str, path: str, bodies: list[bytes], concurrency: int, total: int,
                keepalive: bool = True, timeout: float = 120.0) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lock = threading.Lock()
    next_i = [0]
    lat: list[float] = []
    status: Counter[str] = Counter()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        while True:
            with lock:
                i = next_i[0]
                if i >= total:
                    break
                next_i[0] += 1
            body = bodies[i % len(bodies)]
            t = time.perf_counter()
            try:
                if not keepalive:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                code = str(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                code = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                status[code] += 1
        conn.close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort()
    ok = status.get("200", 0)
    return {
        "requests": total, "concurrency": concurrency, "keepalive": keepalive,
        "seconds": round(elapsed, 2), "ok": ok, "req_s": round(total / elapsed, 2),
        "ok_s": round(ok / elapsed, 2),
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1) if lat else None,
        "status": dict(status),
        "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
    }


def run(url: str, path: str, photo_spec: str, concurrency: int, requests: int | None = None,
        new_connections: bool = False, extra: dict | None = None, warmup: int = 0,
        data_uri: bool = False) -> dict:
    """Run the client in a subprocess and return its result."""
    cmd = [sys.executable, "-m", "bench.http_load", "--url", url, "--path", path,
           "--photos", photo_spec, "--concurrency", str(concurrency),
           "--warmup", str(warmup)]
    if requests:
        cmd += ["--requests", str(requests)]
    if new_connections:
        cmd.append("--new-connections")
    if extra:
        cmd += ["--extra", json.dumps(extra)]
    if data_uri:
        cmd.append("--data-uri")
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--path", default="/v1/embed")
    p.add_argument("--photos", default="lfw:300")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=None, help="default: one per photo")
    p.add_argument("--warmup", type=int, default=0, help="requests sent before the clock")
    p.add_argument("--new-connections", action="store_true")
    p.add_argument("--extra", default="{}", help="JSON fields added to every body")
    p.add_argument("--data-uri", action="store_true",
                   help="send each photo as a data: URI (DeepFace reads bare base64 as a path)")
    a = p.parse_args(argv)
    paths = photos(a.photos)
    bodies = _bodies(paths, json.loads(a.extra), a.data_uri)
    if a.warmup:
        closed_loop(a.url, a.path, bodies, min(a.concurrency, a.warmup), a.warmup)
    res = closed_loop(a.url, a.path, bodies, a.concurrency, a.requests or len(bodies),
                      keepalive=not a.new_connections)
    res["photos"] = a.photos
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
