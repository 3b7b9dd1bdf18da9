"""The gallery's health report on SQLite, PostgreSQL and pgvector: faces per collection from the
store, the vectors each shard holds, and replication lag as changes committed to the
store that a shard has not applied."""

from __future__ import annotations

import asyncio

from index.gallery import InProcessGallery
from index.health import gallery_metrics, gallery_report, read_store
from tests.index.vectors import D, items, unit


def report(g: InProcessGallery, store) -> dict:
    async def info(shard):
        return shard.info()

    async def db(fn, *args):
        return fn(*args)

    return asyncio.run(gallery_metrics(store, db, [[lambda s=s: info(s)] for s in g.shards]))


def test_faces_per_collection_and_lag(store):
    # FAISS shards on every backend, pgvector's too: the change log they read is the same
    g = InProcessGallery(store, 3, search="faiss")
    g.register("a", "m", D, items(unit(5, 1)), create_collection=True)
    g.register("b", "m", D, items(unit(2, 2), "q") + items(unit(1, 3), "q"),
               create_collection=True)  # q0 twice: 3 faces, 2 persons
    rep = report(g, store)
    assert rep["store"] == {"backend": store.backend, "up": True, "error": None}
    counts = {c["collection"]: (c["faces"], c["persons"]) for c in rep["collections"]}
    assert counts == {"a": (5, 5), "b": (3, 2)}
    assert [s["changes_behind"] for s in rep["shards"]] == [0, 0, 0]
    assert sum(s["faces"] for s in rep["shards"]) == 8 and all(s["up"] for s in rep["shards"])

    # committed to the store, never sent to the shards (a writer that died): every
    # shard is one change behind on "a" (each write numbers one change per collection)
    g.service.core.register("a", "m", D, items(unit(3, 4), "r"))
    gone, _plan = g.service.core.delete_faces("b", [g.get_person("b", "q1")["faces"][0][
        "face_id"]])
    rep = report(g, store)
    assert [s["changes_behind"] for s in rep["shards"]] == [2, 2, 2]
    counts = {c["collection"]: c["faces"] for c in rep["collections"]}
    assert counts == {"a": 8, "b": 2}
    assert sum(s["faces"] for s in rep["shards"]) == 8  # the shards still hold the old set

    assert g.sync_shards() >= 1
    rep = report(g, store)
    assert [s["changes_behind"] for s in rep["shards"]] == [0, 0, 0]
    assert sum(s["faces"] for s in rep["shards"]) == 10 == sum(counts.values())
    assert len(gone) == 1
    g.close()


def test_a_dropped_collection_leaves_no_lag(store):
    g = InProcessGallery(store, 2, search="faiss")
    g.register("a", "m", D, items(unit(4, 1)), create_collection=True)
    g.drop_collection("a")
    rep = report(g, store)
    assert rep["collections"] == [] and [s["changes_behind"] for s in rep["shards"]] == [0, 0]
    assert read_store(store) == []
    g.close()


def test_store_or_shard_down():
    shard_info = {"parts": {1: {"size": 3}}, "seqs": {1: 4}, "index_bytes": 100}
    rep = gallery_report("postgres", None, "OperationalError: connection refused",
                         [[shard_info, None]])
    assert rep["store"]["up"] is False and "refused" in rep["store"]["error"]
    assert rep["collections"] == []
    # without the store there is no lag to compare against, and a silent copy is down
    assert rep["shards"] == [{"shard": 0, "copy": 0, "up": True, "faces": 3,
                              "index_bytes": 100},
                             {"shard": 0, "copy": 1, "up": False}]
