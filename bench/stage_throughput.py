"""In-process throughput of each pipeline stage, batch of 1 vs 16.

    .venv/bin/python -m bench.stage_throughput [--seconds 3]

Detection (decode + detect + align + chips) per detector, embedding (with and
without mirror averaging) and the attribute models, on real LFW photos, one
thread. Writes bench/results/stage_throughput.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.evaluate import LFW
from pipelines.models import DLIB_CHIP, ModelContext
from pipelines.registry import DETECTORS
from pipelines.runtime import limit_native_threads
from pipelines.stages import (AnalysisStage, AnalyzeRequest, DetectionStage, DetectRequest,
                              EmbeddingStage, EmbedRequest, ImageLimitsCfg)

OUT = Path(__file__).parent / "results" / "stage_throughput.md"


def rate(fn, items: int, seconds: float) -> float:
    fn()  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += items
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    limit_native_threads(1)
    ctx = ModelContext()
    photos = [q.read_bytes() for q in sorted((LFW / "images").glob("*/*.jpg"))[::200][:16]]
    det = DetectionStage(ctx, ImageLimitsCfg())
    rows = []
    for name in DETECTORS:
        one = lambda: det.run([DetectRequest(photos[0], name, chip_specs=(DLIB_CHIP,))])  # noqa: E731
        many = lambda: det.run([DetectRequest(x, name, chip_specs=(DLIB_CHIP,))  # noqa: E731
                                for x in photos])
        rows.append((f"detect `{name}` (images/s)", rate(one, 1, a.seconds),
                     rate(many, len(photos), a.seconds)))
    res = det.run([DetectRequest(x, "blazeface", chip_specs=(DLIB_CHIP,)) for x in photos])
    chips = np.concatenate([r.chips[DLIB_CHIP.key][:1] for r in res])
    for flip in (False, True):
        emb = EmbeddingStage(ctx, flip_average=flip)
        rows.append((f"embed `dlib`{' + mirror' if flip else ''} (faces/s)",
                     rate(lambda: emb.run([EmbedRequest("dlib", {DLIB_CHIP.key: chips[:1]})]), 1,
                          a.seconds),
                     rate(lambda: emb.run([EmbedRequest("dlib", {DLIB_CHIP.key: chips})]),
                          len(chips), a.seconds)))
    ana = AnalysisStage(ctx)
    specs = [ana.model(x).chip for x in ("age", "gender", "emotion")]
    res = det.run([DetectRequest(x, "blazeface", chip_specs=tuple(specs)) for x in photos])
    merged = {s.key: np.concatenate([r.chips[s.key][:1] for r in res]) for s in specs}
    actions = ("age", "gender", "emotion")
    rows.append(("analyze age+gender+emotion (faces/s)",
                 rate(lambda: ana.run([AnalyzeRequest(actions, {k: v[:1] for k, v in
                                                                merged.items()})]), 1, a.seconds),
                 rate(lambda: ana.run([AnalyzeRequest(actions, merged)]), len(photos),
                      a.seconds)))
    lines = ["In process, one thread, 16 LFW photos (250 px); per stage, batch of 1 vs 16.",
             "", "| stage | batch 1 | batch 16 |", "|---|---|---|"]
    lines += [f"| {n} | {r1:.1f} | {r16:.1f} |" for n, r1, r16 in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
