"""Stable ids for strangers on LFW dev: how often a stranger's next sighting matches
the id its first sighting created, and how often a stranger is taken for another.

    .venv/bin/python -m bench.strangers [--cache /tmp/strangers.npz] [--seed 0]

Every one of the 4,992 LFW dev photos (3,095 people, none enrolled) is sent, in
a seeded random order, through the gallery side of identify with
``enrol_unknown`` (``pipelines.flow.gallery_side.identify_embedded`` over the
in-process gallery: FAISS shards over a SQLite store), with the default
detector and embedder and that model's calibrated identify threshold. A photo
whose face matches nobody is enrolled as a new person; one that matches answers
that person. Per true person, the first sighting should create an id and every
later sighting should answer it:

- *second sighting holds*: over people with at least 2 photos, the share whose
  second photo answers the id their first photo created;
- *taken for another*: over all sightings, the share answered with an id that
  another true person's sighting created (a false merge of two strangers);
- *split*: over people with at least 2 photos, the share whose sightings created
  more than one id (a later sighting matched nobody and was enrolled again).

Writes bench/results/strangers.md. The vectors (about 10 minutes to compute on
2 cores) are kept with ``--cache`` between runs.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.evaluate import Embedding
from bench.identification import dev_people
from configs.settings import Settings
from index.audit import Actor
from index.gallery import InProcessGallery
from index.store import SqliteStore
from pipelines.flow.gallery_side import identify_embedded
from pipelines.models import ModelContext
from pipelines.types import GivenEmbedding

OUT = Path(__file__).parent / "results" / "strangers.md"


def vectors(paths: list[str], s: Settings, cache: Path | None) -> dict[str, np.ndarray | None]:
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if list(z["paths"]) == paths:
                return {p: (v if ok else None) for p, v, ok in
                        zip(paths, z["vectors"], z["found"], strict=True)}
    e = Embedding(s.default_detector, s.default_embedder,
                  ModelContext(models_dir=s.models_path, fusion_weights=s.fusion_weights),
                  flip_average=s.flip_average)
    out = e.embed_paths(paths)
    if cache is not None:
        dim = next(v for v in out.values() if v is not None).shape[0]
        found = np.array([out[p] is not None for p in paths])
        vecs = np.stack([out[p] if out[p] is not None else np.zeros(dim, np.float32)
                         for p in paths])
        np.savez(cache, paths=np.array(paths), vectors=vecs, found=found)
    return out


def run(vecs: dict[str, np.ndarray | None], owner: dict[str, str], model: str,
        threshold: float, seed: int) -> dict[str, float]:
    order = [p for p in sorted(vecs) if vecs[p] is not None]
    random.Random(seed).shuffle(order)
    dim = int(next(iter(vecs[p] for p in order)).shape[0])
    created_by: dict[str, str] = {}  # person id -> the true person whose sighting made it
    # true person -> (id answered, whether that sighting created it), in order
    answers: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    wrong = 0
    with tempfile.TemporaryDirectory() as tmp:
        g = InProcessGallery(SqliteStore(Path(tmp) / "g.sqlite3"), 2)
        g.create_collection("street", model, dim)
        actor = Actor("bench", None)
        t0 = time.perf_counter()
        for p in order:
            res = g._run(identify_embedded(g.service, GivenEmbedding(vecs[p], model), "street",
                                           1, actor=actor, enrol_unknown=True,
                                           threshold=threshold))
            if isinstance(res, Exception):
                raise res
            face = res.faces[0]
            if face.enrolled is not None:
                pid = face.enrolled["person_id"]
                created_by[pid] = owner[p]
            else:
                pid = face.hits[0]["person_id"]
                wrong += created_by[pid] != owner[p]
            answers[owner[p]].append((pid, face.enrolled is not None))
        spent = time.perf_counter() - t0
        g.close()
    multi = {who: ids for who, ids in answers.items() if len(ids) >= 2}
    # the first sighting created an id, and the second answered it
    holds = sum(ids[0][1] and ids[1][0] == ids[0][0] for ids in multi.values())
    split = sum(len({pid for pid, new in ids if new}) > 1 for ids in multi.values())
    return {"sightings": len(order), "people": len(answers), "people_2plus": len(multi),
            "holds": holds / len(multi), "wrong": wrong / len(order),
            "split": split / len(multi), "ids": len(created_by),
            "ms_per_sighting": spent / len(order) * 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None, help="keep the vectors in this .npz")
    p.add_argument("--seed", type=int, default=0, help="the order of the sightings")
    a = p.parse_args(argv)
    s = Settings()
    model = s.default_embedder
    threshold = s.identify_threshold_for(model)
    if threshold is None:
        raise SystemExit(f"model {model} has no calibrated identify threshold")
    people = dev_people()
    owner = {photo: who for who, photos in people.items() for photo in photos}
    vecs = vectors(sorted(owner), s, a.cache)
    r = run(vecs, owner, model, threshold, a.seed)
    lines = [
        f"Strangers on LFW dev (`bench.strangers`, seed {a.seed}): model `{model}`, "
        f"identify threshold {threshold:g}, {r['sightings']} sightings with a face of "
        f"{r['people']} people, none enrolled beforehand.", "",
        "| people with 2+ photos | second sighting holds | taken for another (of sightings) "
        "| split (2+ ids) | ids created / true people | ms per sighting (search + enrol) |",
        "|---|---|---|---|---|---|",
        f"| {r['people_2plus']} | {r['holds']:.1%} | {r['wrong']:.2%} | {r['split']:.1%} | "
        f"{r['ids']} / {r['people']} | {r['ms_per_sighting']:.1f} |", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
