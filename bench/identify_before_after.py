"""Identify over HTTP on a 100k-face gallery: an earlier revision against this one.

    .venv/bin/python -m bench.identify_before_after [--before 8c2b297] [--n 100000]
                                                    [--concurrency 16] [--requests 400]

For each side (``before``: a detached git worktree of the given revision; ``after``:
this checkout) the bench fills a fresh SQLite store with ``--n`` faces through that
side's own in-process gallery's ``register_bulk`` (``index.gallery.InProcessGallery``,
named ``Gallery`` in earlier revisions) (unit vectors: real LFW
embeddings of the probes' people are not needed for latency, every identify
resolves its top-k hits whatever they are), starts that side's service with its
own ``serve_config.yaml`` (separate deployments, model ``dlib`` on both sides so
only the request path differs), and sends LFW photos to
``POST /v1/collections/bench/identify`` from one plain closed-loop client process
(``bench.http_load``: N threads, one JSON request in flight each, keep-alive).
The two sides run one after the other in one invocation, on the same photos.
Writes bench/results/identify_before_after.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench import http_load, sides
from bench.machine import cpu_line

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "identify_before_after.md"

# runs inside the side's checkout, with that side's code: both revisions have
# open_store(backend, url, data_dir) and an in-process gallery taking
# (store, nshards, rebuild=...): InProcessGallery, or Gallery before it was renamed
_FILL = textwrap.dedent("""
    import sys, numpy as np
    try:
        from index.gallery import InProcessGallery as InProcess
    except ImportError:
        from index.gallery import Gallery as InProcess
    from index.store import open_store
    data_dir, n, shards, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 128
    g = InProcess(open_store("sqlite", None, data_dir), shards, rebuild=False)
    rng = np.random.default_rng(7)
    for start in range(0, n, 20000):
        m = min(20000, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        g.register_bulk("bench", "dlib", dim, x,
                        person_ids=[f"p{start + i}" for i in range(m)],
                        create_collection=True)
    g.close()
""")


def _side(name: str, repo: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ffid-{name}-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _FILL, str(data), str(args.n), "2"],
                       cwd=repo, env=sides.env(repo), check=True)
        fill_s = time.perf_counter() - t0
        settings = {"default_embedder": "dlib", "index": {"shards": 2}}
        with sides.service(repo, "serve_config.yaml", data, settings,
                           args.start_timeout) as base:
            route = "/v1/collections/bench/identify"
            extra = {"top_k": 5}
            http_load.run(base, route, args.photos, 4, requests=32, extra=extra)  # warm-up
            res = http_load.run(base, route, args.photos, args.concurrency,
                                requests=args.requests, extra=extra)
        res["fill_s"] = fill_s
        return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="8c2b297", help="the earlier revision")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--photos", default="lfw:300")
    p.add_argument("--start-timeout", type=float, default=900)
    a = p.parse_args()
    rows = []
    with sides.worktree(a.before) as before:
        for name, repo, label in (("before", before, sides.short(a.before)),
                                  ("after", REPO, sides.short("HEAD"))):
            res = _side(name, repo, a)
            rows.append((name, label, res))
            print(name, label, res, flush=True)
    write(a, rows)
    return 0


def write(a: argparse.Namespace, rows: list) -> None:
    load = os.getloadavg()
    lines = [
        "# Identify over HTTP on a 100k-face gallery: before and after",
        "",
        f"`python -m bench.identify_before_after --before {a.before} --n {a.n} "
        f"--concurrency {a.concurrency} --requests {a.requests}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).",
        "", cpu_line(), "",
        f"{a.n:,} faces (128-d unit vectors) in a SQLite store with 2 FAISS shards, filled "
        "by each side's own code; each side's `serve_config.yaml` (separate deployments), "
        f"model `dlib`, detector `blazeface`; {a.requests} identify requests (`top_k` 5) "
        f"with {a.photos.split(':')[1]} LFW photos from one closed-loop client process, "
        f"{a.concurrency} in flight.",
        "",
        "| side | revision | images/s | p50 ms | p99 ms | answers 200 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, rev, r in rows:
        lines.append(f"| {name} | {rev} | {r['ok_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['ok']}/{r['requests']} |")
    if len(rows) == 2:
        b, f = rows[0][2], rows[1][2]
        lines += ["", f"after / before: images/s {f['ok_s'] / b['ok_s']:.2f}x, "
                  f"p50 {f['p50_ms'] / b['p50_ms']:.2f}x, p99 {f['p99_ms'] / b['p99_ms']:.2f}x."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
