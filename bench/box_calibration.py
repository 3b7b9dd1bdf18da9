"""Measures each detector's box against dlib HOG's, for alignment (``box_to_dlib``).

    .venv/bin/python -m bench.box_calibration [--images 600]

dlib's 5-point shape predictor was trained on HOG boxes; other detectors frame
faces differently. For LFW View 1 DevTrain images where both find the face, this
prints the median centre shift (in box widths / heights) and size ratio of the
HOG box relative to each detector's box: the ``box_to_dlib`` values in
``pipelines/detectors.py``. Writes bench/results/box_calibration.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from configs.settings import ImageLimits
from bench.evaluate import lfw_pairs
from pipelines.models import ModelContext
from pipelines.stages import DetectionStage, DetectRequest

OUT = Path(__file__).parent / "results" / "box_calibration.md"
DETECTORS = ["blazeface-short", "blazeface-full", "mtcnn", "opencv-haar"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=600)
    a = p.parse_args()
    stage = DetectionStage(ModelContext(), ImageLimits())
    pairs = lfw_pairs("pairsDevTrain.txt")
    paths = sorted({x for pr in pairs for x in pr[:2]})[: a.images]
    hog = {}
    for path in paths:
        r = stage.run([DetectRequest(Path(path).read_bytes(), "dlib-hog", max_faces=1)])[0]
        if not isinstance(r, Exception) and r.faces:
            hog[path] = r.faces[0].box
    lines = ["| detector | faces compared | dx | dy | sw | sh | std (dx, dy, sw, sh) |",
             "|---|---|---|---|---|---|---|"]
    for det in DETECTORS:
        rows = []
        for path, h in hog.items():
            r = stage.run([DetectRequest(Path(path).read_bytes(), det, max_faces=1)])[0]
            if isinstance(r, Exception) or not r.faces:
                continue
            b = r.faces[0].box
            if h.iou(b) < 0.3:  # a different face: not a framing difference
                continue
            rows.append(((h.x + h.w / 2 - (b.x + b.w / 2)) / b.w,
                         (h.y + h.h / 2 - (b.y + b.h / 2)) / b.h, h.w / b.w, h.h / b.h))
        m, sd = np.median(rows, axis=0), np.std(rows, axis=0)
        lines.append(f"| {det} | {len(rows)} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} "
                     f"| {m[3]:.3f} | {', '.join(f'{v:.3f}' for v in sd)} |")
        print(lines[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("Median mapping from each detector's box to dlib HOG's box "
                   f"({len(hog)} LFW DevTrain images with a HOG face).\n\n"
                   + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
