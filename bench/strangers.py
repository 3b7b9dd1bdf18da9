"""Stable ids for strangers on LFW: how often a person's later sightings get the id their
first sighting created, and how often a stranger is taken for another.

    .venv/bin/python -m bench.strangers [--cache FILE] [--seed 0]

The 4,992 LFW dev photos' templates come from the service as ``bench.clustering``
enrols them (over HTTP, without person ids; ``--cache`` reuses its file). They then
arrive one by one, in a shuffled order that interleaves people, at an empty gallery
(``index.gallery.InProcessGallery``: the service's own search and store) that does
what ``identify`` with ``enrol_unknown: true`` does: the nearest face within the
model's identify threshold names the sighting, and a sighting with none is enrolled as
a new unnamed person. Reported, over the people with at least 2 photos: the share whose
second sighting matched the id their first one created; and over all sightings, the
share matched to an id that another person's sighting created (a stranger taken for
another stranger). Writes bench/results/strangers.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.clustering_vectors import lfw_vectors
from configs.settings import Settings
from index.gallery import InProcessGallery
from index.store import open_store

OUT = Path(__file__).parent / "results" / "strangers.md"


def run(vectors: np.ndarray, people: list[str], threshold: float, seed: int) -> dict:
    order = np.random.default_rng(seed).permutation(len(vectors))
    creator: dict[str, str] = {}       # gallery person id -> the true person who created it
    first_id: dict[str, str] = {}      # true person -> the id their first sighting got
    second_ok: dict[str, bool] = {}    # true person -> their second sighting got that id
    seen: Counter[str] = Counter()
    wrong = matched = created = 0
    dim = vectors.shape[1]
    with tempfile.TemporaryDirectory(prefix="ffstrangers-") as tmp:
        store = open_store("sqlite", None, tmp)
        g = InProcessGallery(store, nshards=2)
        try:
            for n, i in enumerate(order):
                person = people[i]
                hits = g.search("street", "bench", vectors[i][None], k=1,
                                max_distance=threshold)[0] if n else []
                if hits:
                    pid = hits[0]["person_id"]
                    matched += 1
                    wrong += creator[pid] != person
                else:
                    out = g.register("street", "bench", dim, [{"embedding": vectors[i]}],
                                     create_collection=True)
                    pid = out["faces"][0]["person_id"]
                    creator[pid] = person
                    created += 1
                seen[person] += 1
                if seen[person] == 1:
                    first_id[person] = pid
                elif seen[person] == 2:
                    second_ok[person] = pid == first_id[person]
        finally:
            g.close()
            store.close()
    return {"sightings": len(order), "matched": matched, "created": created,
            "wrong": wrong, "people_2plus": len(second_ok),
            "second_ok": sum(second_ok.values()), "true_people": len(seen)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("/tmp/facefleet-clustering-lfw.npz"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    enrolled = lfw_vectors(a.cache)
    t = Settings().identify_threshold_for(enrolled.model)
    assert t is not None, f"{enrolled.model} has no identify threshold"
    t0 = time.perf_counter()
    r = run(enrolled.vectors, enrolled.people, t, a.seed)
    secs = time.perf_counter() - t0
    lines = [
        "# Stable ids for strangers (identify with enrol_unknown) on LFW dev",
        "",
        f"`python -m bench.strangers --seed {a.seed}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores ({platform.machine()}). {r['sightings']:,} photos of "
        f"{r['true_people']:,} people (templates enrolled over HTTP, model "
        f"`{enrolled.model}`), in a shuffled order, at an empty gallery; identify "
        f"threshold {t:.4f}; {secs:.1f} s.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| people with 2+ photos whose 2nd sighting got the id of their 1st | "
        f"{r['second_ok']:,} / {r['people_2plus']:,} ({r['second_ok'] / r['people_2plus']:.1%}) |",
        f"| sightings taken for another person's stranger id | {r['wrong']:,} / "
        f"{r['sightings']:,} ({r['wrong'] / r['sightings']:.2%}) |",
        f"| strangers enrolled (ids created) | {r['created']:,} |",
        f"| sightings matched to an existing id | {r['matched']:,} |",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
