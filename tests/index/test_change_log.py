"""The store's change log keeps FAISS shards and store in agreement, on SQLite,
PostgreSQL and PostgreSQL + pgvector (whose own search needs no shards, but
whose commits keep the same log: FAISS shards are served from it here).

A write that was committed but never reached the shards (its writer died in
between), writes that arrive out of order from two writers, a forget that must
stay forgotten after a restart, tombstones pruned under a lagging shard, and
concurrent first writes to a new collection.
"""

from __future__ import annotations

import threading

import numpy as np

from index.store import changes as store_changes
from index.gallery import InProcessGallery, LocalShards
from tests.index.vectors import D, items, unit


def top1(g: InProcessGallery, x: np.ndarray) -> list[str | None]:
    return [row[0]["face_id"] if row and row[0]["similarity"] > 0.999 else None
            for row in g.search("c", "m", x, 1)]


def test_committed_write_whose_writer_died_is_caught_up(store):
    g = InProcessGallery(store, 3, search="faiss")
    g.create_collection("c", "m", D)
    x = unit(12, seed=1)
    kept = g.register("c", "m", D, items(x[:4]))["faces"]
    # commit only, as a writer that dies before updating the shards would
    lost, _plan = g.service.core.register("c", "m", D, items(x[4:8], "q"))
    assert top1(g, x[4:8]) == [None] * 4
    cid = g.service.core.collection("c").id
    held = g.verify("c")["index"]
    gone, _plan = g.service.core.delete_faces("c", [kept[0]["face_id"]])
    # the shards have not heard of the forget, but a search never returns it
    assert g.verify("c")["index"] == held and top1(g, x[:1]) == [None]
    assert g.sync_shards() >= 1
    assert top1(g, x[4:8]) == [f["face_id"] for f in lost["faces"]]
    assert gone == [kept[0]["face_id"]]
    report = g.verify("c")
    assert report["consistent"] and report["store"] == report["index"] == held + 4 - 1
    assert cid == g.service.core.collection("c").id
    g.close()


def test_a_gap_is_filled_from_the_store_before_the_next_write_lands(store):
    g = InProcessGallery(store, 2, search="faiss")
    x = unit(6, seed=2)
    g.register("c", "m", D, items(x[:2]), create_collection=True)
    missed, _ = g.service.core.register("c", "m", D, items(x[2:4], "q"))
    later = g.register("c", "m", D, items(x[4:], "r"))  # carries seq 3: shards saw only 1
    want = [f["face_id"] for f in missed["faces"] + later["faces"]]
    assert top1(g, x[2:]) == want
    assert sum(s.catch_ups for s in g.shards) >= 1
    assert g.verify("c")["consistent"]
    g.close()


def test_writes_from_two_writers_applied_out_of_order(store):
    g = InProcessGallery(store, 2, search="faiss")
    g.create_collection("c", "m", D)
    x = unit(4, seed=3)
    a, plan_a = g.service.core.register("c", "m", D, items(x[:2]))
    b, plan_b = g.service.core.register("c", "m", D, items(x[2:], "q"))
    for shard, ops_b, ops_a in zip(g.shards, plan_b, plan_a, strict=True):
        shard.apply(ops_b, store)  # the later change first: a gap, so it catches up
        shard.apply(ops_a, store)  # then the earlier one, already held: skipped
    assert top1(g, x) == [f["face_id"] for f in a["faces"] + b["faces"]]
    report = g.verify("c")
    assert report["consistent"] and report["duplicates_in_index"] == 0
    g.close()


def test_forgotten_faces_stay_gone_after_restart_and_late_adds(store):
    g = InProcessGallery(store, 2, search="faiss")
    x = unit(5, seed=4)
    res, plan = g.service.core.register("c", "m", D, items(x), create_collection=True)
    for shard, ops in zip(g.shards, plan, strict=True):
        shard.apply(ops, store)
    victim = res["faces"][1]["face_id"]
    g.delete_face("c", victim)
    g.close()
    restarted = InProcessGallery(store, 2, search="faiss")  # rebuilt from the store
    for shard, ops in zip(restarted.shards, plan, strict=True):
        shard.apply(ops, store)  # the register's update arriving again, late
    found = top1(restarted, x)
    assert found[1] is None and victim not in found
    assert restarted.verify("c")["consistent"]
    restarted.close()


def test_a_shard_behind_pruned_tombstones_reloads(store, monkeypatch):
    g = InProcessGallery(store, 1, search="faiss")
    x = unit(4, seed=5)
    faces = g.register("c", "m", D, items(x), create_collection=True)["faces"]
    lagging = LocalShards(store, 1)  # rebuilt now, then hears nothing
    monkeypatch.setattr(store_changes, "TOMBSTONE_RETENTION_S", -1.0)  # prune at once
    g.delete_face("c", faces[0]["face_id"])
    g.delete_face("c", faces[1]["face_id"])  # prunes the tombstones so far
    assert store.changes_since(g.service.core.collection("c").id, 1, 0, 1).full
    shard = lagging.shards[0]
    shard.sync(store)
    cid = g.service.core.collection("c").id
    assert sorted(shard.ids(cid).tolist()) == sorted(
        store.face_ids_internal(cid).tolist())
    assert len(shard.ids(cid)) == 2
    lagging.close()
    g.close()


def test_concurrent_first_writes_to_a_new_collection(store_factory):
    stores = [store_factory() for _ in range(8)]
    x = unit(8, seed=6)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)
    galleries = [InProcessGallery(s, 2) for s in stores]

    def client(i: int) -> None:
        try:
            barrier.wait()
            galleries[i].register("fresh", "m", D, items(x[i:i + 1], f"c{i}-"),
                                  create_collection=True)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [c.name for c in stores[0].list_collections()] == ["fresh"]
    cid = stores[0].get_collection("fresh").id
    assert stores[0].counts(cid) == (8, 8)
    assert stores[0].get_collection("fresh").last_seq == 8
    for g in galleries:
        g.close()
