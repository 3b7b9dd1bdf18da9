"""Detector recall on group photos: faces found against faces visible, per detector.

    .venv/bin/python -m bench.detector_recall

The visible faces of three group photos were counted by eye and marked by a
point inside each face (:data:`VISIBLE`; a face cut by the frame counts when
its eyes and mouth show). A detection finds a face when its box holds that
point, one detection per face; a box holding no marked point is a false
detection. Each detector runs in process exactly as the Detector deployment
runs it (the same decoding, working resolution and landmark fit), with the
service's defaults (no minimum confidence); its time is the median of
:data:`REPEATS` runs over the photo. ``--pad 0.3`` also runs each detector on
the photos with a black border of 30% of their longest side on every side (a
face cut by the frame then lies inside the picture), to show which misses are
the frame's. Writes bench/results/detector_recall.md and the README's table
(its ``detector-recall`` block).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2

from bench.evaluate import FACES
from bench.recognizer import README, write_readme_tables
from pipelines.errors import FacefleetError
from configs.settings import ImageLimits, Settings
from pipelines.models import ModelContext
from pipelines.registry import DETECTORS
from pipelines.stages import DetectionStage, DetectRequest

OUT = Path(__file__).parent / "results" / "detector_recall.md"
REPEATS = 5

#: photo -> a point (x, y) in the original image's pixels inside each visible face
VISIBLE: dict[str, list[tuple[int, int]]] = {
    # six people on a stoop, all facing the camera
    "group/multiface.jpg": [(265, 300), (455, 180), (590, 95), (660, 240), (760, 520),
                            (905, 480)],
    # an elevator selfie: three men at the back, three women on the left (two cut by
    # the frame), and the large, close foreground face at the lower right
    "deepface/selfie-many-people.jpg": [(255, 185), (425, 205), (565, 160), (32, 290),
                                        (145, 370), (22, 500), (550, 440)],
    # two large faces side by side
    "deepface/couple.jpg": [(627, 912), (1672, 760)],
}


def score(boxes: list[tuple[int, int, int, int]], points: list[tuple[int, int]]
          ) -> tuple[int, int]:
    """(faces found, false detections): each marked face matched to at most one box."""
    used: set[int] = set()
    found = 0
    for px, py in points:
        for i, (x, y, w, h) in enumerate(boxes):
            if i not in used and x <= px <= x + w and y <= py <= y + h:
                used.add(i)
                found += 1
                break
    return found, len(boxes) - len(used)


def padded(data: bytes, frac: float) -> tuple[bytes, int]:
    """The photo with a black border of ``frac`` of its longest side, and the border."""
    if not frac:
        return data, 0
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    pad = int(max(img.shape[:2]) * frac)
    ok, buf = cv2.imencode(".png", cv2.copyMakeBorder(img, pad, pad, pad, pad,
                                                      cv2.BORDER_CONSTANT, value=(0, 0, 0)))
    assert ok
    return buf.tobytes(), pad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detectors", default=",".join(DETECTORS))
    p.add_argument("--pad", default="0,0.3",
                   help="border fractions to run (0: the photos as they are)")
    a = p.parse_args()
    s = Settings()
    stage = DetectionStage(ModelContext(models_dir=s.models_path), ImageLimits())
    photos = {name: (FACES / name).read_bytes() for name in VISIBLE}
    rows = []
    runs_of = [(det, float(f)) for f in a.pad.split(",") for det in a.detectors.split(",")]
    for det, frac in runs_of:
        cells, total_found, total_false, times = [], 0, 0, []
        for name, data in photos.items():
            data, pad = padded(data, frac)
            req = DetectRequest(data, det, max_faces=256)
            stage.run([req])  # warm-up: model load, first-run allocations
            runs = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                (res,) = stage.run([req])
                runs.append((time.perf_counter() - t0) * 1000)
            boxes = [] if isinstance(res, FacefleetError) else [
                (f.box.x - pad, f.box.y - pad, f.box.w, f.box.h) for f in res.faces]
            found, false = score(boxes, VISIBLE[name])
            total_found += found
            total_false += false
            times.append(statistics.median(runs))
            cells.append(f"{found} / {len(VISIBLE[name])}" + (f" (+{false})" if false else ""))
        visible = sum(len(v) for v in VISIBLE.values())
        label = det if not frac else f"{det}, photo padded {frac:.0%}"
        rows.append(f"| {label} | " + " | ".join(cells) +
                    f" | **{total_found} / {visible}** | {total_false} "
                    f"| {statistics.mean(times):.0f} |")
        print(rows[-1], flush=True)
    lines = [
        "Faces found / faces visible (counted by eye), false detections in brackets; "
        f"median of {REPEATS} in-process runs, decode + detect + landmarks, 2-core CPU "
        "(`.venv/bin/python -m bench.detector_recall`).",
        "",
        "| detector | " + " | ".join(f"`{n.split('/')[-1]}`" for n in VISIBLE) +
        " | all | false detections | ms / photo (mean of the three) |",
        "|---|" + "---|" * (len(VISIBLE) + 3),
        *rows,
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    if a.detectors == ",".join(DETECTORS) and a.pad == "0,0.3":  # a partial run: README kept
        write_readme_tables(README, {"detector-recall": lines[2:]}, writer="bench.detector_recall")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
