"""In-process throughput of the dlib embedders: ONNX (1 and 2 threads) vs dlib-native.

Embeds real LFW face chips (dlib HOG + 5-point shape + ``get_face_chip``) at
batch sizes 1, 8, 32 and 64 and reports faces per second, repeating each
cell for about ``--seconds`` (at least one call) in each of ``--rounds``
interleaved rounds and keeping the best round, so that a burst of load from
other processes on a shared machine penalises no column in particular. Writes a markdown table to
``bench/results/embedder_throughput.md``.

    .venv/bin/python -m bench.embedder_throughput [--seconds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.dlib_onnx_parity import RESULTS, HogChipper, lfw_paths

BATCHES = (1, 8, 32, 64)

log = logging.getLogger("bench.embedder_throughput")


def faces_per_second(fn: Callable[[np.ndarray], object], chips: np.ndarray,
                     seconds: float) -> float:
    fn(chips)  # warm-up: first-run allocations and kernel selection
    calls, t0 = 0, time.perf_counter()
    while True:
        fn(chips)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return calls * len(chips) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedder_throughput.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import dlib
    import onnxruntime

    from pipelines.embed_dlib import DlibNativeEmbedder, DlibOnnxEmbedder
    from pipelines.models import ModelContext
    from pipelines.runtime import RuntimeConfig

    chipper = HogChipper()
    chips = [c for c in (chipper(p) for p in lfw_paths(80)) if c is not None][:max(BATCHES)]
    pool = np.stack(chips)

    columns: dict[str, Callable[[np.ndarray], object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            ctx = ModelContext(models_dir=Path(tmp),
                               runtime=RuntimeConfig(intra_op_threads=threads))
            emb = DlibOnnxEmbedder(ctx)
            emb.load()
            columns[f"ONNX, {threads} thread{'s' if threads > 1 else ''}"] = emb.embed
        native = DlibNativeEmbedder()
        native.load()
        columns["dlib-native"] = native.embed

        table: dict[int, dict[str, float]] = {b: dict.fromkeys(columns, 0.0) for b in BATCHES}
        for r in range(args.rounds):
            for batch in BATCHES:
                for name, fn in columns.items():
                    fps = faces_per_second(fn, pool[:batch], args.seconds)
                    table[batch][name] = max(table[batch][name], fps)
                    log.info("round %d batch %3d  %-16s %8.1f faces/s", r, batch, name, fps)

    names = list(columns)
    lines = [
        "# dlib ResNet embedders: in-process throughput",
        "",
        f"Real LFW dev chips (150 px dlib face chips); best of {args.rounds} interleaved rounds "
        f"of ~{args.seconds:g} s per cell, each after one warm-up call; faces per second "
        "(ms per face in brackets).",
        "",
        "| batch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for batch, row in table.items():
        cells = [f"{row[n]:.1f} ({1000 / row[n]:.1f} ms)" for n in names]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    best = max(((b, n) for b in table for n in names if n.startswith("ONNX")),
               key=lambda bn: table[bn[0]][bn[1]])
    lines += [
        "",
        f"Best ONNX cell: {best[1]} at batch {best[0]}, {table[best[0]][best[1]]:.0f} faces/s, "
        f"{table[best[0]][best[1]] / table[best[0]]['dlib-native']:.0f}x dlib-native at the "
        "same batch.",
        "",
        f"Versions: dlib {dlib.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs ({platform.machine()}), OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; shared machine "
        f"(1-min load average at the end {os.getloadavg()[0]:.1f}), timings indicative.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
