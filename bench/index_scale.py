"""Scale benchmark of the gallery: N enrolled 128-d vectors in sharded FAISS actors.

Runs the real ``Gallery`` Serve deployment with its ``IndexShard`` actors on a
local Ray (127.0.0.1), over a fresh store, and measures: bulk enrollment rate
of precomputed embeddings (store commit + shard update, as acknowledged),
identify latency at k=10 (one query per call, sequential; then with several
clients in flight), memory of the shard actors per million faces, and the
time for the shards to come back from a crash, i.e. to rebuild from the store.
Optionally (``--ivf``) the same with IVF shards and their recall@10 against
exact; and (``--scale-out 1x1,2x1,2x2``) identify throughput with G Gallery
replicas over S copies of every shard (``GxS``; copies rebuild from the store,
writes go to all, searches spread over them). Writes a markdown table to
``bench/results/index_scale.md``.

    .venv/bin/python -m bench.index_scale [--n 1000000] [--shards 4] [--ivf]
                                          [--clients 16] [--scale-out 1x1,2x1,2x2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.index_scale")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "index_scale.md"


def unit_chunks(n: int, dim: int, chunk: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), dim), dtype=np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def identify_latency(handle, model: str, queries: np.ndarray, k: int) -> list[float]:
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        handle.search.remote("bench", model, q, k).result()
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def identify_concurrent(handle, model: str, queries: np.ndarray, k: int,
                        clients: int) -> tuple[list[float], float]:
    def one(q: np.ndarray) -> float:
        t0 = time.perf_counter()
        handle.search.remote("bench", model, q, k).result()
        return (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(one, queries))
    return lat, len(queries) / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    import ray
    from ray import serve

    from deployments import local
    from deployments.serve.gallery import NAMESPACE, Gallery

    work = Path(tempfile.mkdtemp(prefix="ffb", dir=args.tmp))
    rows: list[tuple[str, str]] = []
    local.init_ray(num_cpus=2, temp_dir=str(work / "ray"), object_store_mb=400,
                   namespace="facefleet-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": local.free_port()})
    try:
        settings = gallery_settings(work / "data", shards=args.shards,
                                    search_batch_wait_s=0.0005)
        handle = serve.run(Gallery.bind(settings), name="bench-gallery", route_prefix=None)
        model = "bench"
        handle.create_collection.remote("bench", model, args.dim).result()
        base = handle.shard_info.remote().result()  # empty shards: the process baseline
        log.info("generating %d vectors", args.n)
        chunks = unit_chunks(args.n, args.dim, args.chunk, seed=1)

        # -- enrollment through the bulk path, two requests in flight
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            done = 0
            for out in pool.map(lambda c: handle.register_bulk.remote("bench", model, args.dim,
                                                                       c).result(), chunks):
                done += out["count"]
                if done % 100_000 < args.chunk:
                    log.info("enrolled %d (%.0f/s)", done, done / (time.perf_counter() - t0))
        enroll_s = time.perf_counter() - t0
        stats = handle.stats.remote("bench").result()
        assert stats["faces"] == args.n and sum(stats["shard_sizes"]) == args.n, stats
        rows.append(("enrolled vectors (dim)", f"{args.n:,} ({args.dim}-d) in {args.shards} "
                     f"shards {stats['shard_sizes']}"))
        rows.append(("bulk enrollment rate", f"{args.n / enroll_s:,.0f} vectors/s "
                     f"({enroll_s:.1f} s, chunks of {args.chunk:,}, committed before ack)"))

        # -- identify: random probes and perturbed enrolled vectors
        rng = np.random.default_rng(2)
        stored = chunks[0][: args.queries // 2]
        noisy = stored + 0.05 * rng.standard_normal(stored.shape, dtype=np.float32)
        probes = np.vstack([unit_chunks(args.queries - len(stored), args.dim, args.queries, 3)[0],
                            noisy / np.linalg.norm(noisy, axis=1, keepdims=True)])
        identify_latency(handle, model, probes[:20], 10)  # warm-up
        lat = identify_latency(handle, model, probes, 10)
        rows.append(("identify k=10, 1 client: p50 / p99",
                     f"{pct(lat, 50):.1f} ms / {pct(lat, 99):.1f} ms ({len(lat)} queries, exact)"))
        clat, qps = identify_concurrent(handle, model, probes, 10, args.clients)
        rows.append((f"identify k=10, {args.clients} clients: p50 / p99, throughput",
                     f"{pct(clat, 50):.1f} ms / {pct(clat, 99):.1f} ms, {qps:.0f} queries/s"))
        hits = handle.search.remote("bench", model, stored[:50], 1).result()
        assert all(row and row[0]["similarity"] > 0.999 for row in hits), \
            "an enrolled vector did not find itself"

        # -- memory
        info = handle.shard_info.remote().result()
        rss = sum(i["rss_bytes"] or 0 for i in info) - sum(i["rss_bytes"] or 0 for i in base)
        idx = sum(i["index_bytes"] for i in info)
        per_m = 1_000_000 / args.n
        files = {p.name: p.stat().st_size for p in (work / "data").glob("gallery.sqlite3*")}
        log.info("store files: %s", {k: f"{v / 2**20:.0f} MiB" for k, v in files.items()})
        db = sum(files.values())
        rows.append(("memory per million faces: shard actors' RSS growth (index structures)",
                     f"{rss * per_m / 2**20:,.0f} MiB ({idx * per_m / 2**20:,.0f} MiB)"))
        rows.append(("store on disk per million faces (SQLite, WAL)",
                     f"{db * per_m / 2**20:,.0f} MiB"))

        # -- crash of every shard: time until all answer again, rebuilt from the store
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["namespace"] == NAMESPACE and a["name"].startswith("gallery-"))
        actors = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
        old_pids = {r["pid"] for r in ray.get([a.ready.remote() for a in actors])}
        t0 = time.perf_counter()
        for a in actors:
            ray.kill(a, no_restart=False)
        # a call can still reach a dying actor: wait for answers from new processes
        while True:
            try:
                ready = ray.get([a.ready.remote() for a in actors])
            except ray.exceptions.RayActorError:
                ready = []
            if ready and not {r["pid"] for r in ready} & old_pids:
                break
            time.sleep(0.05)
        restart_s = time.perf_counter() - t0
        rebuild = [r["rebuild_seconds"] for r in ready]
        stats = handle.stats.remote("bench").result()
        assert sum(stats["shard_sizes"]) == args.n, stats
        rows.append(("start-up after a crash of all shards (rebuild from the store)",
                     f"{restart_s:.1f} s wall for {args.n:,} faces; "
                     f"per-shard rebuild {min(rebuild):.1f}-{max(rebuild):.1f} s "
                     f"({args.shards} shards on {os.cpu_count()} cores)"))
        lat = identify_latency(handle, model, probes, 10)
        rows.append(("identify k=10 after restart: p50 / p99",
                     f"{pct(lat, 50):.1f} ms / {pct(lat, 99):.1f} ms"))
        handle.shutdown_shards.remote().result()
        serve.delete("bench-gallery")

        if args.ivf:
            rows += run_ivf(serve, Gallery, settings, model, probes, args)
        if args.scale_out:
            rows += run_scale_out(serve, Gallery, work / "data", model, probes, args)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def gallery_settings(data_dir: Path, **index) -> dict:
    from configs.settings import Settings

    return Settings(data_dir=data_dir, index=index).model_dump(mode="json")


def run_scale_out(serve, gallery_cls, data_dir: Path, model: str, probes: np.ndarray,
                  args: argparse.Namespace) -> list[tuple[str, str]]:
    """Identify throughput with more Gallery replicas and more copies of each shard."""
    rows = []
    for spec in args.scale_out.split(","):
        replicas, copies = (int(v) for v in spec.split("x"))
        settings = gallery_settings(data_dir, shards=args.shards, shard_replicas=copies,
                                    search_batch_wait_s=0.0005)
        t0 = time.perf_counter()
        handle = serve.run(gallery_cls.options(num_replicas=replicas).bind(settings),
                           name="bench-scale", route_prefix=None)
        ready_s = time.perf_counter() - t0
        identify_concurrent(handle, model, probes[:40], 10, args.clients)  # warm-up
        lat, qps = identify_concurrent(handle, model, probes, 10, args.clients)
        rows.append((f"identify k=10, {args.clients} clients, {replicas} Gallery replica(s) x "
                     f"{copies} cop{'y' if copies == 1 else 'ies'} of each shard",
                     f"{qps:.0f} queries/s, p50 {pct(lat, 50):.1f} ms / p99 "
                     f"{pct(lat, 99):.1f} ms (ready in {ready_s:.0f} s)"))
        handle.shutdown_shards.remote().result()
        serve.delete("bench-scale")
    return rows


def run_ivf(serve, gallery_cls, settings: dict, model: str, probes: np.ndarray,
            args: argparse.Namespace) -> list[tuple[str, str]]:
    """The same store served by IVF shards: start-up (train + add), latency, recall."""
    exact = serve.run(gallery_cls.bind(settings), name="bench-exact", route_prefix=None)
    want = exact.search.remote("bench", model, probes, 10).result()
    exact.shutdown_shards.remote().result()
    serve.delete("bench-exact")
    ivf_settings = {**settings, "index": {**settings["index"], "index_type": "ivf",
                                          "ivf_nlist": args.nlist, "ivf_nprobe": args.nprobe}}
    t0 = time.perf_counter()
    handle = serve.run(gallery_cls.bind(ivf_settings), name="bench-ivf", route_prefix=None)
    start_s = time.perf_counter() - t0
    lat = identify_latency(handle, model, probes, 10)
    got = handle.search.remote("bench", model, probes, 10).result()
    recall = np.mean([len({h["face_id"] for h in a} & {h["face_id"] for h in b}) / 10
                      for a, b in zip(got, want, strict=True)])
    half = len(probes) // 2
    recall_near = np.mean([len({h["face_id"] for h in a} & {h["face_id"] for h in b}) / 10
                           for a, b in zip(got[half:], want[half:], strict=True)])
    top1 = np.mean([a[0]["face_id"] == b[0]["face_id"]
                    for a, b in zip(got[half:], want[half:], strict=True)])
    handle.shutdown_shards.remote().result()
    serve.delete("bench-ivf")
    tag = f"IVF nlist={args.nlist} nprobe={args.nprobe}"
    return [
        (f"{tag}: start-up (deploy + train + add)", f"{start_s:.1f} s"),
        (f"{tag}: identify k=10 p50 / p99",
         f"{pct(lat, 50):.1f} ms / {pct(lat, 99):.1f} ms"),
        (f"{tag}: recall@10 vs exact, random probes / near-duplicate probes (top-1 agreement)",
         f"{recall:.3f} / {recall_near:.3f} ({top1:.3f})"),
    ]


def write(rows: list[tuple[str, str]], args: argparse.Namespace) -> str:
    lines = [
        "# Gallery scale benchmark",
        "",
        f"`python -m bench.index_scale --n {args.n} --shards {args.shards} "
        f"--clients {args.clients}" + (" --ivf" if args.ivf else "")
        + (f" --scale-out {args.scale_out}" if args.scale_out else "") + "`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores "
        "(shared with other jobs: figures are indicative), SQLite store, "
        "Gallery deployment + IndexShard actors on a local Ray, 1 FAISS thread per shard.",
        "",
        "| measure | result |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "Targets: identify p99 < 100 ms at 1M exact; rebuild < 60 s per million.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--ivf", action="store_true", help="also serve the store with IVF shards")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--tmp", default="/tmp", help="where the store and Ray's files go")
    p.add_argument("--scale-out", default="",
                   help="GxS,...: identify with G Gallery replicas over S copies of each shard")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rows = run(args)
    sys.stdout.write(write(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
