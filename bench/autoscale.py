"""Replica autoscaling under a step load, on three Ray nodes, as a timeline.

    .venv/bin/python -m bench.autoscale [--low-s 30] [--high-s 60] [--idle-s 45]

Starts a Ray cluster of three nodes on this machine (``deployments.local.cluster``)
and deploys ``configs/serve_config.autoscale.yaml`` (an ``autoscaling_config`` on
the Ingress and each model deployment; the gallery on PostgreSQL, as on any
cluster). A closed-loop client sends ``/v1/embed`` with LFW photos over HTTP at 2
concurrent requests for ``--low-s``, then 32 for ``--high-s``, then none for
``--idle-s``. Every 3 s it records the RUNNING replicas of each deployment (from
``serve status``, as the dashboard's Serve tab shows them), and the requests/s and
p99 latency of the requests finished in that window. Prints the timeline and
writes it to ``bench/results/autoscale.md``; exits non-zero unless the model
deployments grew under the high load and shrank back to their minimum after it.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

from deployments import local  # noqa: E402
from deployments.local.cluster import LocalCluster  # noqa: E402
from index.local_pg import PgServer, debian_bindir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"
RESULTS = REPO / "bench" / "results" / "autoscale.md"
DEPLOYMENTS = ("Ingress", "Detector", "Embedder", "Analyzer")
WINDOW_S = 3.0


class StepLoad:
    """``level`` of ``max_level`` client threads each keep one request in flight."""

    def __init__(self, base_url: str, bodies: list[dict], max_level: int) -> None:
        self.base, self.bodies = base_url, bodies
        self.level = 0
        self.done: list[tuple[float, float, int]] = []  # (finished at, latency, status)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(max_level)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=130) as c:
            n = i
            while not self.stop.is_set():
                if i >= self.level:
                    time.sleep(0.1)
                    continue
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/embed", json=self.bodies[n % len(self.bodies)])
                    status = r.status_code
                    if status != 200:
                        self.errors.append(f"{status} {r.text[:120]}")
                except httpx.HTTPError as e:
                    status = 0
                    self.errors.append(f"{type(e).__name__}: {e}"[:160])
                t1 = time.monotonic()
                with self.lock:
                    self.done.append((t1, t1 - t0, status))
                n += 7

    def window(self, since: float) -> tuple[float, float | None, int]:
        """requests/s, p99 seconds and failures of the requests finished since ``since``."""
        with self.lock:
            rows = [r for r in self.done if r[0] >= since]
        lat = [r[1] for r in rows]
        p99 = float(np.percentile(lat, 99)) if lat else None
        return len(rows) / WINDOW_S, p99, sum(1 for r in rows if r[2] != 200)


def replicas() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get("facefleet")
    if app is None:
        return {}
    return {name: d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--low-s", type=float, default=30.0)
    p.add_argument("--high-s", type=float, default=60.0)
    p.add_argument("--idle-s", type=float, default=45.0)
    a = p.parse_args(argv)
    bindir = debian_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries are missing (make postgres-bin)")
    pg = PgServer(bindir)
    pg.start()
    cluster = LocalCluster(workers=2, cpus=2)
    try:
        cluster.connect()
        port = local.free_port()
        config = local.load_config(REPO / "configs/serve_config.autoscale.yaml", {"settings": {
            "data_dir": tempfile.mkdtemp(prefix="ff-autoscale-"),
            "model_dir": str(REPO / "data" / "models"),
            "index": {"backend": "postgres", "database_url": pg.url(pg.new_database())}}},
            port)
        cluster.deploy(config)
        photos = sorted((FACES / "lfw-dev" / "images").glob("*/*.jpg"))[::25][:120]
        bodies = [{"img": base64.b64encode(ph.read_bytes()).decode()} for ph in photos]
        load = StepLoad(f"http://127.0.0.1:{port}", bodies, 32)
        steps = [(2, a.low_s), (32, a.high_s), (0, a.idle_s)]
        rows, start = [], time.monotonic()
        for level, seconds in steps:
            load.level = level
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                since = time.monotonic()
                time.sleep(WINDOW_S)
                rps, p99, failed = load.window(since)
                row = (time.monotonic() - start, level, replicas(), rps, p99, failed)
                rows.append(row)
                print(_row(row), flush=True)
        load.stop.set()
        table = _report(a, rows, load.errors)
        RESULTS.write_text(table)
        peak = {d: max(r[2].get(d, 0) for r in rows) for d in DEPLOYMENTS}
        final = rows[-1][2]
        grew = any(peak[d] > 1 for d in ("Detector", "Embedder"))
        shrank = all(final.get(d, 0) == 1 for d in DEPLOYMENTS)
        failed = sum(r[5] for r in rows)
        print(f"peak replicas {peak}; at the end {final}; failed requests {failed}")
        return 0 if grew and shrank and failed == 0 else 1
    finally:
        cluster.shutdown()
        pg.stop()


def _row(row: tuple) -> str:
    t, level, reps, rps, p99, failed = row
    counts = " | ".join(str(reps.get(d, 0)) for d in DEPLOYMENTS)
    p99s = f"{p99 * 1000:.0f}" if p99 is not None else "-"
    return f"| {t:.0f} | {level} | {counts} | {rps:.1f} | {p99s} | {failed} |"


def _report(a, rows: list[tuple], errors: list[str]) -> str:
    head = " | ".join(DEPLOYMENTS)
    lines = "\n".join(_row(r) for r in rows)
    return f"""# Autoscaling under a step load

`.venv/bin/python -m bench.autoscale --low-s {a.low_s:.0f} --high-s {a.high_s:.0f} --idle-s {a.idle_s:.0f}`:
three Ray nodes on 127.0.0.1 ({os.cpu_count()} cores in all), `configs/serve_config.autoscale.yaml`,
`/v1/embed` with LFW photos from a closed-loop client: 2 requests in flight, then 32, then
none. Replicas are the RUNNING ones per deployment every {WINDOW_S:.0f} s; requests/s and p99
over the requests that finished in that window.

| s | clients | {head} | requests/s | p99 ms | failed |
|---|---|{'---|' * len(DEPLOYMENTS)}---|---|---|
{lines}

Failed requests: {len(errors)}{''.join(chr(10) + '- ' + e for e in errors[:10])}
"""


if __name__ == "__main__":
    sys.exit(main())
