"""What sealing templates at rest costs: a shard's rebuild from the store, plain vs sealed.

    .venv/bin/python -m bench.sealing [--n 1000000] [--dims 128,640] [--shards 4]

For each dimension (128: dlib; 640: the default ``dlib+mfn512``), two SQLite stores
in one temp directory receive the same ``--n`` unit vectors through the gallery's own
bulk register (``InProcessGallery.register_bulk``), one without a master key and one
with (AES-256-GCM, index/sealing.py). Then every shard of ``--shards`` is rebuilt from
each store, one after the other (``ShardIndex.rebuild``: the store's snapshot scan, the
templates opened, FAISS filled), as a shard actor does after a crash or a restart.
Reported: seconds per shard and in total, per million faces, plain and sealed, and the
ratio; on a cluster the shards rebuild in parallel, one actor each. Then 300 one-probe
identifies (top 5) through the in-process gallery of each store: identify does not read
templates from the store (the shards hold them in memory), so sealing should leave its
latency as it is. Writes bench/results/sealing.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model

OUT = Path(__file__).parent / "results" / "sealing.md"


def fill(data: Path, n: int, dim: int, key_file: str | None) -> tuple[object, float]:
    from index.gallery import InProcessGallery
    from index.store import open_store

    store = open_store("sqlite", None, data, encryption={"master_key_file": key_file,
                                                         "master_key_env": None})
    g = InProcessGallery(store, nshards=1, rebuild=False)
    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        g.register_bulk("bench", "bench", dim, x, create_collection=True)
    fill_s = time.perf_counter() - t0
    g.close()
    return store, fill_s


def rebuild(store: object, shards: int) -> list[float]:
    from index.shard import ShardIndex

    times = []
    for i in range(shards):
        shard = ShardIndex(i, shards)
        t0 = time.perf_counter()
        shard.rebuild(store)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
    return times


def identify_ms(store: object, dim: int, n: int = 300) -> tuple[float, float]:
    """p50 and p99 ms of one-probe identifies (top 5) through the in-process gallery of
    ``store``: its shards rebuilt from the store, searched in memory, hits resolved."""
    from index.gallery import InProcessGallery

    g = InProcessGallery(store, nshards=2)  # type: ignore[arg-type]
    rng = np.random.default_rng(11)
    q = rng.standard_normal((n, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    times = []
    try:
        for v in q:
            t0 = time.perf_counter()
            g.search("bench", "bench", v[None], k=5)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        g.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dims", default="128,640")
    p.add_argument("--shards", type=int, default=4)
    a = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # as a shard actor runs (index.faiss_threads: 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ffseal-") as tmp:
        key = Path(tmp) / "master.key"
        key.write_text(base64.b64encode(os.urandom(32)).decode())
        for dim in map(int, a.dims.split(",")):
            for mode, key_file in (("plain", None), ("sealed", str(key))):
                store, fill_s = fill(Path(tmp) / f"{mode}-{dim}", a.n, dim, key_file)
                times = rebuild(store, a.shards)
                p50, p99 = identify_ms(store, dim)
                store.close()  # type: ignore[attr-defined]
                rows.append((dim, mode, fill_s, times, p50, p99))
                print(dim, mode, f"fill {fill_s:.1f} s", [f"{t:.2f}" for t in times],
                      f"identify p50 {p50:.2f} ms p99 {p99:.2f} ms", flush=True)
    per_m = 1_000_000 / a.n
    lines = [
        "# Sealed templates: the cost of a shard rebuild",
        "",
        f"`python -m bench.sealing --n {a.n} --dims {a.dims} --shards {a.shards}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({cpu_model()}), load "
        f"average at the end {os.getloadavg()[0]:.1f}. {a.n:,} faces per store, SQLite, "
        f"{a.shards} shards rebuilt one after the other in one process; seconds scaled to "
        "one million faces.",
        "",
        "| dim | templates | fill s | slowest shard s | all shards s (per 1M) | "
        "rebuild vs plain | identify p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|"]
    plain = {dim: sum(t) for dim, mode, _, t, _, _ in rows if mode == "plain"}
    for dim, mode, fill_s, times, p50, p99 in rows:
        lines.append(f"| {dim} | {mode} | {fill_s * per_m:.1f} | {max(times) * per_m:.2f} | "
                     f"{sum(times) * per_m:.2f} | {sum(times) / plain[dim]:.2f}x | "
                     f"{p50:.2f} / {p99:.2f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
