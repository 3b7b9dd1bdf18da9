"""In-process throughput of every embedder, at batch 1, 16 and 64.

Embeds real LFW face chips (the default detector, the 5-point shape, each
model's own chip) and reports faces per second, repeating each cell for about
``--seconds`` (at least one call) in each of ``--rounds`` interleaved rounds
and keeping the best round, so that a burst of load from other processes on a
shared machine penalises no column in particular. Columns:

- each network alone (no mirror averaging): dlib ONNX with 1 and 2 intra-op
  threads, dlib itself (``dlib-native``), MobileFaceNet and MobileFaceNet-512
  (``mfn512``) ONNX;
- "as served": through ``EmbeddingStage`` with the configured mirror averaging
  (``Settings.flip_average``), which is what a ``/v1/embed`` call pays, for
  every single and fused model that is a candidate default;
- per image: decode, detection, alignment and embedding of 32 photos, one
  request each, for today's default and the candidates.

Writes a markdown table to ``bench/results/embedder_throughput.md``.

    .venv/bin/python -m bench.embedder_throughput [--seconds 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from configs.settings import Runtime, ImageLimits
from bench.dlib_onnx_parity import RESULTS, lfw_paths

BATCHES = (1, 16, 64)
#: networks timed alone (no mirror averaging), after dlib ONNX at 1 and 2 threads
SINGLE = ("mobilefacenet", "mfn512")
#: timed as served (configured mirror averaging), after dlib: today's and the candidates
SERVED = ("mobilefacenet", "mfn512", "dlib+mobilefacenet", "dlib+mfn512",
          "dlib+mobilefacenet+mfn512")

log = logging.getLogger("bench.embedder_throughput")


def faces_per_second(fn: Callable[[int], object], batch: int, seconds: float) -> float:
    fn(batch)  # warm-up: first-run allocations and kernel selection
    calls, t0 = 0, time.perf_counter()
    while True:
        fn(batch)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return calls * batch / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedder_throughput.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import dlib
    import onnxruntime

    from configs.settings import Settings
    from pipelines.models import ModelContext
    from pipelines.runtime import limit_native_threads
    from pipelines.stages import (DetectionStage, DetectRequest, EmbeddingStage, EmbedRequest)

    limit_native_threads(1)
    s = Settings()

    def ctx(threads: int = 1) -> ModelContext:
        return ModelContext(models_dir=s.models_path, fusion_weights=s.fusion_weights,
                            runtime=Runtime(intra_op_threads=threads))

    fused_name = "dlib+mobilefacenet+mfn512"  # its chips are every network's
    stage = EmbeddingStage(ctx(), flip_average=s.flip_average)
    specs = stage.model(fused_name).chip_specs
    det = DetectionStage(ctx(), ImageLimits())
    photos = lfw_paths(80)
    found = [r for r in det.run([DetectRequest(p.read_bytes(), s.default_detector,
                                               chip_specs=specs) for p in photos])
             if not isinstance(r, Exception) and r.faces]
    pool = {sp.key: np.stack([r.chips[sp.key][0] for r in found])[:max(BATCHES)]
            for sp in specs}
    assert all(len(v) == max(BATCHES) for v in pool.values()), "too few faces found"
    cut = lambda b: {k: v[:b] for k, v in pool.items()}

    columns: dict[str, Callable[[int], object]] = {}
    for threads in (1, 2):
        m = EmbeddingStage(ctx(threads), flip_average=False).model("dlib")
        columns[f"dlib ONNX, {threads} thread{'s' if threads > 1 else ''}"] = \
            lambda b, m=m: m.predict_batch(cut(b))
    for name in ("dlib-native", *SINGLE):
        m = stage.model(name)
        columns[name] = lambda b, m=m: m.predict_batch(cut(b))
    served = []
    for name in ("dlib", *SERVED):
        label = f"{name} as served"
        columns[label] = lambda b, name=name: stage.run([EmbedRequest(name, cut(b))])
        served.append(label)

    table: dict[int, dict[str, float]] = {b: dict.fromkeys(columns, 0.0) for b in BATCHES}
    for r in range(args.rounds):
        for batch in BATCHES:
            for name, fn in columns.items():
                fps = faces_per_second(fn, batch, args.seconds)
                table[batch][name] = max(table[batch][name], fps)
                log.info("round %d batch %3d  %-28s %8.1f faces/s", r, batch, name, fps)

    # per image, in process: decode + detect + align + embed, today's default vs the others
    per_image = {}
    datas = [p.read_bytes() for p in photos[:32]]
    for name in ("dlib+mobilefacenet", *(n for n in SERVED if "+" in n or n == "mfn512")):
        per_image[name] = float("inf")
    for _ in range(args.rounds):
        for name in per_image:
            sp = stage.model(name).chip_specs
            t0 = time.perf_counter()
            for b in datas:
                dets = det.run([DetectRequest(b, s.default_detector, chip_specs=sp)])
                stage.run_detected(dets, [name])
            per_image[name] = min(per_image[name], (time.perf_counter() - t0) * 1000 / len(datas))
            log.info("per image %-28s %.1f ms", name, per_image[name])

    names = list(columns)
    from pipelines.stages import flips as mirrored

    flips = {n: mirrored(s.flip_average, n) for n in ("dlib", *SERVED)}
    lines = [
        "# Embedders: in-process throughput",
        "",
        f"Real LFW dev chips ({len(found)} photos, detector `{s.default_detector}`); best of "
        f"{args.rounds} interleaved rounds of ~{args.seconds:g} s per cell, each after one "
        "warm-up call; faces per second (ms per face in brackets). One intra-op thread unless "
        "stated. \"As served\" adds the configured mirror averaging ("
        + ", ".join(f"{n} {'on' if f else 'off'}" for n, f in flips.items()) + ").",
        "",
        "| batch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for batch, row in table.items():
        cells = [f"{row[n]:.1f} ({1000 / row[n]:.1f} ms)" for n in names]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    today = "dlib+mobilefacenet as served"
    lines += [
        "",
        "Cost per face as served, relative to `dlib+mobilefacenet` (the earlier default), per "
        "batch: " + "; ".join(
            f"batch {b}: " + ", ".join(f"{n.split(' ')[0]} {table[b][today] / table[b][n]:.2f}x"
                                       for n in served if n != today) for b in BATCHES) + ".",
        "",
        f"Per image, in process ({len(datas)} LFW photos decoded, detected, aligned and "
        "embedded as served, one image per request as `/v1/embed` sees them; best of "
        f"{args.rounds}):",
        "",
        "| model | ms per image | vs `dlib+mobilefacenet` |",
        "|---|---:|---:|",
        *(f"| `{n}` | {v:.1f} | {v / per_image['dlib+mobilefacenet']:.2f}x |"
          for n, v in per_image.items()),
        "",
        f"Versions: dlib {dlib.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs ({platform.machine()}); shared machine "
        f"(1-min load average at the end {os.getloadavg()[0]:.1f}), timings indicative.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
