"""In-process throughput of each pipeline stage, batch of 1 vs 16.

    .venv/bin/python -m bench.stage_throughput [--seconds 3] [--rounds 5]

Detection (decode + detect + align + chips) per detector, embedding (with and
without mirror averaging) and the attribute models, on real LFW photos, one
thread. Batch 1 and batch 16 of each row are timed side by side, in
alternating rounds, and the medians reported, so their ratio holds on a
shared machine. A second table times the BlazeFace networks alone by pass
size (why the CPU runs them one image per pass). Writes
bench/results/stage_throughput.md with the load average beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from configs.settings import Runtime, ImageLimits
from bench.evaluate import LFW
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines.registry import DETECTORS
from pipelines.runtime import limit_native_threads
from pipelines.stages import (AnalysisStage, AnalyzeRequest, DetectionStage, DetectRequest,
                              EmbeddingStage, EmbedRequest)

OUT = Path(__file__).parent / "results" / "stage_throughput.md"


def paired_rates(fns: list[tuple], seconds: float, rounds: int) -> list[float]:
    """Items/s of each (fn, items) pair: alternating slices of seconds/rounds, medians."""
    for fn, _ in fns:
        fn()  # warm up
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, (fn, items) in enumerate(fns):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                fn()
                n += items
            samples[k].append(n / (time.perf_counter() - t0))
    return [statistics.median(s) for s in samples]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def forward_table(ctx: ModelContext, photos: list[bytes], seconds: float,
                  rounds: int) -> list[str]:
    """ms per image of each BlazeFace network alone, by images per forward pass."""
    from pipelines.blazeface import FULL, SHORT, BlazeFaceOnnxDetector, letterbox
    from pipelines.decode import decode_image

    images = [decode_image(x, max_bytes=1 << 26, max_pixels=1 << 26).pixels for x in photos]
    sizes = (1, 4, 16)
    lines = ["| network | " + " | ".join(f"{n} per pass" for n in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for spec in (SHORT, FULL):
        det = BlazeFaceOnnxDetector(ctx, spec)
        det.load()
        batch, _ = letterbox(images, spec.size)
        fns = [(lambda n=n: [det.forward(batch[i:i + n]) for i in range(0, 16, n)], 16)
               for n in sizes]
        rates = paired_rates(fns, seconds, rounds)
        lines.append(f"| `{spec.name}` ({spec.size} px) | "
                     + " | ".join(f"{1000 / r:.2f} ms" for r in rates) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="per row and batch size")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    limit_native_threads(1)
    ctx = ModelContext(runtime=Runtime(device="cpu", intra_op_threads=1))
    photos = [q.read_bytes() for q in sorted((LFW / "images").glob("*/*.jpg"))[::200][:16]]
    before = load()
    det = DetectionStage(ctx, ImageLimits())
    rows = []
    for name in DETECTORS:
        one = lambda: det.run([DetectRequest(photos[0], name, chip_specs=(DLIB_CHIP,))])
        many = lambda: det.run([DetectRequest(x, name, chip_specs=(DLIB_CHIP,))
                                for x in photos])
        rows.append((f"detect `{name}` (images/s)",
                     *paired_rates([(one, 1), (many, len(photos))], a.seconds, a.rounds)))
    res = det.run([DetectRequest(x, "blazeface", chip_specs=(DLIB_CHIP,)) for x in photos])
    chips = np.concatenate([r.chips[DLIB_CHIP.key][:1] for r in res])
    for flip in (False, True):
        emb = EmbeddingStage(ctx, flip_average=flip)
        rows.append((f"embed `dlib`{' + mirror' if flip else ''} (faces/s)",
                     *paired_rates([(lambda: emb.run([EmbedRequest("dlib", {DLIB_CHIP.key: chips[:1]})]), 1),
                                    (lambda: emb.run([EmbedRequest("dlib", {DLIB_CHIP.key: chips})]), len(chips))],
                                   a.seconds, a.rounds)))
    ana = AnalysisStage(ctx)
    actions = ("age", "gender", "emotion")
    specs = [ana.model(x).chip for x in actions]
    res = det.run([DetectRequest(x, "blazeface", chip_specs=tuple(specs)) for x in photos])
    merged = {s.key: np.concatenate([r.chips[s.key][:1] for r in res]) for s in specs}
    first = {k: v[:1] for k, v in merged.items()}
    rows.append(("analyze age+gender+emotion (faces/s)",
                 *paired_rates([(lambda: ana.run([AnalyzeRequest(actions, first)]), 1),
                                (lambda: ana.run([AnalyzeRequest(actions, merged)]), len(photos))],
                               a.seconds, a.rounds)))
    fwd = forward_table(ctx, photos, a.seconds, a.rounds)
    after = load()
    lines = ["In process, one thread, 16 LFW photos (250 px); per stage, batch of 1 vs 16, "
             f"timed side by side ({a.rounds} alternating rounds, medians). {before} at the "
             f"start, {after} at the end (2 cores).",
             "", "| stage | batch 1 | batch 16 | batch 16 / batch 1 |", "|---|---|---|---|"]
    lines += [f"| {n} | {r1:.1f} | {r16:.1f} | {r16 / r1:.2f}x |" for n, r1, r16 in rows]
    lines += ["", "BlazeFace networks alone (ONNX, CPU, one intra-op thread), ms per image "
              "by images per forward pass, the same 16 photos letterboxed:", ""] + fwd
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
