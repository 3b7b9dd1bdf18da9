"""1:N identification on the LFW dev photos: the protocol, open-set scores, thresholds.

The protocol (one gallery face per person): every person with two or more
photos is enrolled with their first photo, every single-photo person is
enrolled as a distractor, and each remaining photo is a probe that should find
its person at rank 1. Searches run through the real gallery
(``index.gallery.InProcessGallery``: FAISS shards over a SQLite store).

Open-set false accepts: a probe of someone *not* enrolled must not be flagged
a match. Leaving each identity out in turn, every photo of that person is
searched against the gallery faces of all the others; the nearest one's
distance is an impostor score. The identify threshold is the distance below
which at most a target share of impostor probes fall (``threshold_at_far``).
People of LFW View 1 DevTrain (the calibration split) and DevTest (the report
split) are disjoint, so a threshold calibrated on one is reported on the other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.evaluate import LFW

Vectors = dict[str, "np.ndarray | None"]


def dev_people() -> dict[str, list[str]]:
    """Every LFW dev person -> their photos, sorted (4,992 photos of 3,095 people)."""
    people: dict[str, list[str]] = defaultdict(list)
    for p in sorted((LFW / "images").glob("*/*.jpg")):
        people[p.parent.name].append(str(p))
    return dict(people)


def pair_people(pairs_file: str) -> set[str]:
    """The people named in an LFW pairs file."""
    names: set[str] = set()
    for line in (LFW / pairs_file).read_text().splitlines()[1:]:
        p = line.split("\t")
        names.update([p[0]] if len(p) == 3 else [p[0], p[2]] if len(p) == 4 else [])
    return names


def split(people: dict[str, list[str]], pairs_file: str) -> dict[str, list[str]]:
    """The people of one View 1 split (``pairsDevTrain.txt`` / ``pairsDevTest.txt``)."""
    names = pair_people(pairs_file)
    return {k: v for k, v in people.items() if k in names}


def protocol(people: dict[str, list[str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(gallery, probes) as (photo, person): first photo of everyone; the rest probe."""
    gallery = [(imgs[0], who) for who, imgs in people.items()]
    probes = [(p, who) for who, imgs in people.items() for p in imgs[1:]]
    return gallery, probes


@dataclass
class RankStats:
    """1:N results over probes; probes without a detected face count as misses."""

    probes: int
    rank1: float
    rank5: float
    #: right person at rank 1 and flagged a match (distance <= threshold)
    tar: float
    #: wrong person at rank 1 and still flagged a match
    wrong_flagged: float


def rank_stats(hits: list[list[tuple[str, float]] | None], truth: list[str],
               threshold: float) -> RankStats:
    """``hits``: per probe, (person, distance) nearest first, or None (no face)."""
    n = len(truth)
    r1 = r5 = tar = wrong = 0
    for row, who in zip(hits, truth, strict=True):
        if not row:
            continue
        top, d = row[0]
        r1 += top == who
        r5 += who in [p for p, _ in row[:5]]
        if d <= threshold:
            tar += top == who
            wrong += top != who
    return RankStats(n, r1 / n, r5 / n, tar / n, wrong / n)


def search_gallery(vecs: Vectors, gallery: list[tuple[str, str]],
                   probes: list[tuple[str, str]], store_dir: Path, model: str,
                   k: int = 5) -> list[list[tuple[str, float]] | None]:
    """Enrol ``gallery`` in a fresh real gallery and search every probe (top ``k``)."""
    from index.gallery import InProcessGallery
    from index.store import open_store

    dim = next(v for v in vecs.values() if v is not None).shape[0]
    g = InProcessGallery(open_store("sqlite", None, store_dir), nshards=2)
    try:
        items = [{"embedding": vecs[p], "person_id": who, "name": who}
                 for p, who in gallery if vecs.get(p) is not None]
        for i in range(0, len(items), 500):
            g.register("lfw", model, dim, items[i:i + 500], create_collection=True)
        assert g.stats("lfw")["persons"] == len(items)
        found = [i for i, (p, _) in enumerate(probes) if vecs.get(p) is not None]
        out: list[list[tuple[str, float]] | None] = [None] * len(probes)
        for s in range(0, len(found), 512):
            chunk = found[s:s + 512]
            rows = g.search("lfw", model, np.stack([vecs[probes[i][0]] for i in chunk]), k=k)
            for i, row in zip(chunk, rows, strict=True):
                out[i] = [(h["person_id"], float(h["distance"])) for h in row]
        return out
    finally:
        g.close()


def impostor_distances(vecs: Vectors, people: dict[str, list[str]]) -> np.ndarray:
    """Leave-one-identity-out: for every photo, the distance to the nearest gallery
    face of another person (the gallery: each person's first photo). Photos
    without a face are left out (they cannot be flagged)."""
    names = [who for who, imgs in people.items() if vecs.get(imgs[0]) is not None]
    gal = np.stack([vecs[people[who][0]] for who in names])
    owner = {who: i for i, who in enumerate(names)}
    paths = [(p, who) for who, imgs in people.items() for p in imgs if vecs.get(p) is not None]
    out = np.empty(len(paths), np.float64)
    for s in range(0, len(paths), 1024):
        chunk = paths[s:s + 1024]
        sims = np.stack([vecs[p] for p, _ in chunk]) @ gal.T
        for j, (_, who) in enumerate(chunk):
            if who in owner:
                sims[j, owner[who]] = -np.inf  # the person is not enrolled
        out[s:s + len(chunk)] = 1.0 - sims.max(axis=1)
    return out


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The largest distance threshold (4 decimals) flagging at most ``far`` of impostors."""
    d = np.sort(np.asarray(impostor, np.float64))
    k = int(math.floor(far * len(d)))  # at most k impostors may be at or below it
    if k >= len(d):
        return float(d[-1])
    t = math.floor(d[k] * 1e4) / 1e4
    return t if t < d[k] else t - 1e-4


def far_at(impostor: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.asarray(impostor) <= threshold))
