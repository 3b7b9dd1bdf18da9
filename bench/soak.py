"""Soak: mixed traffic at a steady rate for a long time, with every replica's RSS.

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 4] [--warmup-minutes 5]
                                   [--scrape-s 15]

Starts the app from ``serve_config.yaml`` (separate deployments, gallery on
SQLite in a temp dir) on 127.0.0.1 and sends an open-loop mix of real requests
on LFW photos at ``--rate`` requests/s: embed 30%, analyze 15%, enrol 25%,
identify 25%, forget 5% (of a face enrolled earlier, so the gallery grows
slowly and every write path runs), and scrapes ``GET /metrics`` every
``--scrape-s`` seconds as Prometheus would. Every 30 s it samples the resident memory of
each Ray process of the service (Serve controller, proxy, every replica, shard
actors, Ray's daemons) from /proc. Growth is measured from the end of the
warm-up to the mean of the last three samples, per process and in total; the
target is under 5%. Writes bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.http_load import photos
from deployments import local

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "soak.md"
MIX = [("embed", 30), ("analyze", 15), ("enrol", 25), ("identify", 25), ("forget", 5)]


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    kids[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, stack = [], list(kids.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""
    if cmd.startswith("ray::"):
        # ray::ServeReplica:facefleet:Embedder -> ServeReplica:facefleet:Embedder
        return cmd[5:].split(".")[0].strip()
    return Path(cmd).name


def sample_rss() -> dict[str, int]:
    """RSS bytes per service process, keyed by a stable name (pid for duplicates)."""
    out: dict[str, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in _tree(os.getpid()):
        name = _name(pid)
        if not name or name.startswith("python"):
            continue
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        key = name if name not in out else f"{name} ({pid})"
        out[key] = rss
    return out


class Traffic:
    def __init__(self, base: str, paths: list[Path], seed: int = 1) -> None:
        self.base = base
        self.bodies = [base64.b64encode(p.read_bytes()).decode() for p in paths]
        self.people = [p.parent.name for p in paths]
        self.rnd = random.Random(seed)
        self.lock = threading.Lock()
        self.enrolled: list[str] = []
        self.status: Counter[tuple[str, int]] = Counter()
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.local = threading.local()

    def _client(self) -> httpx.Client:
        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = httpx.Client(base_url=self.base, timeout=120)
        return c

    def pick(self) -> str:
        with self.lock:
            x = self.rnd.uniform(0, sum(w for _, w in MIX))
        for kind, w in MIX:
            x -= w
            if x <= 0:
                return kind
        return MIX[-1][0]

    def one(self, kind: str) -> None:
        with self.lock:
            i = self.rnd.randrange(len(self.bodies))
            victim = self.enrolled.pop(self.rnd.randrange(len(self.enrolled))) \
                if kind == "forget" and self.enrolled else None
        c = self._client()
        t = time.perf_counter()
        try:
            if kind == "embed":
                r = c.post("/v1/embed", json={"img": self.bodies[i]})
            elif kind == "analyze":
                r = c.post("/v1/analyze", json={"img": self.bodies[i],
                                                "actions": ["age", "gender", "emotion"]})
            elif kind == "enrol":
                r = c.post("/v1/collections/soak/faces",
                           json={"img": self.bodies[i], "person_id": self.people[i]})
                if r.status_code == 201:
                    with self.lock:
                        self.enrolled.append(r.json()["id"])
            elif kind == "identify":
                r = c.post("/v1/collections/soak/identify", json={"img": self.bodies[i]})
            elif kind == "metrics":
                r = c.get("/metrics")
            elif victim is None:
                return
            else:
                r = c.delete(f"/v1/collections/soak/faces/{victim}")
            code = r.status_code
        except httpx.HTTPError:
            code = 0
        with self.lock:
            self.status[(kind, code)] += 1
            self.lat[kind].append(time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--warmup-minutes", type=float, default=5)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second (open loop)")
    p.add_argument("--sample-s", type=float, default=30)
    p.add_argument("--scrape-s", type=float, default=15, help="GET /metrics this often")
    a = p.parse_args()
    port = local.free_port()
    base = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as data:
        overrides = {"settings": {"data_dir": data, "model_dir": str(REPO / "data" / "models")}}
        local.start(local.load_config(REPO / "serve_config.yaml", overrides, port),
                    num_cpus=os.cpu_count())
        traffic = Traffic(base, photos("lfw:600"))
        try:
            t0 = time.monotonic()
            end = t0 + a.minutes * 60
            next_sample = next_scrape = t0
            with ThreadPoolExecutor(max_workers=32) as pool:
                n = 0
                while time.monotonic() < end:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append((now - t0, sample_rss()))
                        next_sample += a.sample_s
                        print(f"{(now - t0) / 60:5.1f} min  RSS "
                              f"{sum(samples[-1][1].values()) / 2**20:.0f} MiB  "
                              f"{sum(traffic.status.values())} requests", flush=True)
                    if now >= next_scrape:
                        pool.submit(traffic.one, "metrics")
                        next_scrape += a.scrape_s
                    pool.submit(traffic.one, traffic.pick())
                    n += 1
                    time.sleep(max(t0 + n / a.rate - time.monotonic(), 0))
            samples.append((time.monotonic() - t0, sample_rss()))
        finally:
            local.stop()
    write_report(a, samples, traffic)
    return 0


def write_report(a, samples: list[tuple[float, dict[str, int]]], traffic: Traffic) -> None:
    warm = min(samples, key=lambda s: abs(s[0] - a.warmup_minutes * 60))
    tail = samples[-3:]
    names = sorted(set(warm[1]) & set(tail[-1][1]))
    mib = 2 ** 20
    rows = []
    for name in names:
        before = warm[1][name]
        after = statistics.mean(s[1].get(name, 0) for s in tail)
        rows.append((name, before / mib, after / mib, (after - before) / before * 100))
    tot_before = sum(warm[1][n] for n in names) / mib
    tot_after = sum(statistics.mean(s[1].get(n, 0) for s in tail) for n in names) / mib
    total = sum(traffic.status.values())
    errors = sum(v for (k, c), v in traffic.status.items()
                 if c == 0 or c >= 500)
    lines = [
        f"`python -m bench.soak --minutes {a.minutes:g} --rate {a.rate:g} "
        f"--scrape-s {a.scrape_s:g}`: "
        f"{total} requests in {samples[-1][0] / 60:.1f} min (embed 30%, analyze 15%, enrol "
        f"25%, identify 25%, forget 5%; LFW photos; GET /metrics every {a.scrape_s:g} s), "
        f"{os.cpu_count()} cores "
        f"({platform.machine()}), load average at the end {os.getloadavg()[0]:.2f}. "
        f"RSS sampled every {a.sample_s:g} s; growth from the end of the "
        f"{a.warmup_minutes:g}-minute warm-up to the mean of the last three samples.", "",
        f"**Total RSS {tot_before:.0f} MiB -> {tot_after:.0f} MiB "
        f"({(tot_after - tot_before) / tot_before * 100:+.1f}%); 5xx or failed requests: "
        f"{errors} of {total}.**", "",
        "| process | RSS after warm-up MiB | RSS at the end MiB | growth |",
        "|---|---|---|---|"]
    lines += [f"| {n} | {b:.0f} | {e:.0f} | {g:+.1f}% |" for n, b, e, g in rows]
    lines += ["", "| request | count | statuses | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, _ in [*MIX, ("metrics", 0)]:
        lat = sorted(traffic.lat.get(kind, []))
        if not lat:
            continue
        codes = ", ".join(f"{c}: {v}" for (k, c), v in sorted(traffic.status.items())
                          if k == kind)
        lines.append(f"| {kind} | {len(lat)} | {codes} | {lat[len(lat) // 2] * 1000:.0f} | "
                     f"{lat[min(int(len(lat) * 0.99), len(lat) - 1)] * 1000:.0f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    (OUT.with_suffix(".json")).write_text(json.dumps(
        [{"t_s": t, "rss": s} for t, s in samples]))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
