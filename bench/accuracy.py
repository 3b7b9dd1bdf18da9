"""Accuracy tables for the README: verification, identification, detection.

    .venv/bin/python -m bench.accuracy [--detectors a,b] [--model dlib]

For each detector: LFW View 1 DevTest accuracy with the threshold chosen on
DevTrain, leave-one-out identification on deepface/identities.csv, recall and
precision at IoU 0.5 on dlib's boxes, faces found in two group photos, and
the in-process time per image. Writes bench/results/accuracy.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.evaluate import (FACES, Embedding, accuracy, best_threshold, count_faces,
                            deepface_identities, detection_score, leave_one_out, lfw_pairs,
                            pair_distances)
from configs.settings import Settings
from pipelines.models import ModelContext
from pipelines.registry import DETECTORS

OUT = Path(__file__).parent / "results" / "accuracy.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--detectors", default=",".join(DETECTORS))
    p.add_argument("--model", default="dlib")
    a = p.parse_args()
    s = Settings()
    train, test = lfw_pairs("pairsDevTrain.txt"), lfw_pairs("pairsDevTest.txt")
    rows = []
    for det in a.detectors.split(","):
        e = Embedding(det, a.model, ModelContext(models_dir=s.models_path,
                                                  fusion_weights=s.fusion_weights),
                      flip_average=s.flip_average)
        paths = sorted({x for pr in train + test for x in pr[:2]})
        t0 = time.perf_counter()
        vecs = e.embed_paths(paths)
        per_img = (time.perf_counter() - t0) / len(paths) * 1000
        d_tr, y_tr = pair_distances(train, vecs)
        thr, acc_tr = best_threshold(d_tr, y_tr)
        d_te, y_te = pair_distances(test, vecs)
        acc_te = accuracy(d_te, y_te, thr)
        ids = deepface_identities()
        loo = leave_one_out(e.embed_paths([p for p, _ in ids]), ids)
        tr_s = detection_score(e.det, det, "training.xml")
        te_s = detection_score(e.det, det, "testing.xml")
        dogs = count_faces(e.det, det, FACES / "dlib-boxes" / "dogs.jpg")
        multi = count_faces(e.det, det, FACES / "group" / "multiface.jpg")
        selfie = count_faces(e.det, det, FACES / "deepface" / "selfie-many-people.jpg")
        rows.append((det, acc_te, thr, acc_tr, e.missed, loo, tr_s, te_s, dogs, multi, selfie,
                     per_img))
        print(rows[-1], flush=True)
    lines = [
        f"Model `{a.model}`; threshold chosen on LFW View 1 DevTrain (2200 pairs), accuracy on "
        "DevTest (1000 pairs). Identification: leave-one-out nearest neighbour on "
        "deepface/identities.csv (61 images). Detection: IoU >= 0.5 on dlib-boxes.",
        "",
        "| detector | LFW DevTest acc | threshold | DevTrain acc | LFW images without face "
        "| LOO rank-1 | recall / precision training.xml | recall / precision testing.xml "
        "| faces on dogs.jpg | multiface.jpg | selfie-many-people.jpg | ms / LFW image (detect+embed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fresh = {}
    for det, acc_te, thr, acc_tr, missed, loo, tr_s, te_s, dogs, multi, selfie, ms in rows:
        fresh[det] = (
            f"| {det} | {acc_te:.1%} | {thr:.4f} | {acc_tr:.1%} | {missed} | {loo:.1%} "
            f"| {tr_s.recall:.0%} / {tr_s.precision:.0%} | {te_s.recall:.0%} / {te_s.precision:.0%} "
            f"| {dogs} | {multi} | {selfie} | {ms:.1f} |")
    # Rows of detectors not run this time are kept from the previous table.
    previous = {}
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 2 and cells[1] in DETECTORS:
                previous[cells[1]] = line
    lines += [fresh.get(d) or previous[d] for d in DETECTORS if d in fresh or d in previous]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
