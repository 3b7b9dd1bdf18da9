"""Accuracy of the default pipeline on real faces.

LFW View 1 DevTest verification with the configured (DevTrain-calibrated)
threshold, leave-one-out identification on deepface/identities.csv, and 1:N
identification through the real gallery (FAISS shards over a SQLite store):
one enrolled LFW image per person, the others identified. Embeddings of the
LFW images are computed once for the module.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate import (LFW, Embedding, accuracy, deepface_identities, leave_one_out,
                            lfw_pairs, pair_distances)
from configs.settings import Settings
from index.gallery import Gallery
from index.store import open_store
from pipelines.models import ModelContext


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def embedding(settings) -> Embedding:
    return Embedding(settings.default_detector, settings.default_embedder,
                     ModelContext(models_dir=settings.models_path))


def lfw_people() -> dict[str, list[str]]:
    people = defaultdict(list)
    for p in sorted((LFW / "images").glob("*/*.jpg")):
        people[p.parent.name].append(str(p))
    return {k: v for k, v in people.items() if len(v) >= 2}


@pytest.fixture(scope="module")
def lfw_vectors(embedding) -> dict[str, np.ndarray | None]:
    pairs = lfw_pairs("pairsDevTest.txt")
    paths = {p for a, b, _ in pairs for p in (a, b)}
    paths |= {p for imgs in lfw_people().values() for p in imgs}
    return embedding.embed_paths(sorted(paths))


def test_lfw_devtest_accuracy_with_configured_threshold(settings, lfw_vectors):
    pairs = lfw_pairs("pairsDevTest.txt")
    assert len(pairs) == 1000
    d, y = pair_distances(pairs, lfw_vectors)
    acc = accuracy(d, y, settings.threshold_for(settings.default_embedder))
    # Measured 98.9% (bench/accuracy.py); with cosine distance the network's own
    # ceiling on this split is about 99.0% even at the best possible threshold.
    assert acc >= 0.985, f"LFW View 1 DevTest accuracy {acc:.3%}"


def test_leave_one_out_identification(embedding):
    ids = deepface_identities()
    assert len(ids) == 61
    vecs = embedding.embed_paths([p for p, _ in ids])
    assert leave_one_out(vecs, ids) >= 0.95


def test_lfw_identification_through_the_gallery(tmp_path: Path, settings, lfw_vectors):
    people = lfw_people()
    gallery = Gallery(open_store("sqlite", None, tmp_path), nshards=2)
    try:
        enrolled = {}
        items = []
        for person, imgs in people.items():
            v = lfw_vectors.get(imgs[0])
            if v is not None:
                items.append({"embedding": v, "person_id": person, "name": person})
                enrolled[person] = imgs[1:]
        for i in range(0, len(items), 500):
            gallery.register("lfw", "dlib", 128, items[i:i + 500], create_collection=True)
        assert gallery.stats("lfw")["persons"] == len(items) > 1000
        probes = [(p, person) for person, imgs in enrolled.items() for p in imgs]
        vecs = [lfw_vectors.get(p) for p, _ in probes]
        found = [(p, who) for (p, who), v in zip(probes, vecs, strict=True) if v is not None]
        hits = gallery.search("lfw", "dlib", np.stack([lfw_vectors[p] for p, _ in found]), k=5)
        rank1 = sum(h[0]["person_id"] == who for h, (_, who) in zip(hits, found, strict=True))
        acc = rank1 / len(probes)  # probes without a detected face count as misses
        # Measured 93.9%: the dlib ResNet's own limit here (94.1% with raw Euclidean
        # distances); the 97% goal needs a stronger embedder (see README).
        assert acc >= 0.93, f"rank-1 {acc:.2%} over {len(probes)} probes"
    finally:
        gallery.close()
