"""The durable store and the in-process gallery, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from index.errors import SchemaTooNew
from index.gallery import InProcessGallery
from index.store import LATEST_VERSION, MIGRATIONS, SqliteStore, face_bucket
from pipelines.errors import (
    CollectionNotFound,
    Conflict,
    ModelMismatch,
    NotFound,
    ValidationError,
)

DIM = 16


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_migrations_are_versioned_and_applied_once(store_factory):
    s1 = store_factory()
    assert s1.schema_version() == LATEST_VERSION == MIGRATIONS[-1].version
    s1.create_collection("a", "dlib", DIM)
    s2 = store_factory()  # reopening must not re-run (CREATE TABLE would fail) nor lose data
    assert s2.schema_version() == LATEST_VERSION
    assert [c.name for c in s2.list_collections()] == ["a"]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "g.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(SchemaTooNew):
        SqliteStore(path)


def test_sqlite_uses_wal(tmp_path):
    store = SqliteStore(tmp_path / "g.sqlite3")
    with store._tx(write=False) as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0] == "wal"
    store.close()


def test_collections_lifecycle_and_errors(store):
    g = InProcessGallery(store, 2)
    created = g.create_collection("staff.v1", "dlib", DIM)
    assert created["model"] == "dlib" and created["dim"] == DIM
    with pytest.raises(Conflict):
        g.create_collection("staff.v1", "dlib", DIM)
    assert g.create_collection("staff.v1", "dlib", DIM, exist_ok=True)["collection"] == "staff.v1"
    with pytest.raises(ModelMismatch):
        g.create_collection("staff.v1", "other", DIM, exist_ok=True)
    for bad in ["", "a b", "-x", "x" * 65, "é", None, "a/b"]:
        with pytest.raises(ValidationError):
            g.create_collection(bad, "dlib", DIM)
    with pytest.raises(ValidationError):
        g.create_collection("ok", "dlib", 0)
    with pytest.raises(CollectionNotFound):
        g.search("nope", "dlib", unit(1), 3)
    with pytest.raises(CollectionNotFound):
        g.register("nope", "dlib", DIM, [{"embedding": unit(1)[0]}])
    assert [c["collection"] for c in g.list_collections()] == ["staff.v1"]
    g.drop_collection("staff.v1")
    assert g.list_collections() == []
    with pytest.raises(CollectionNotFound):
        g.drop_collection("staff.v1")


def test_model_binding(store):
    g = InProcessGallery(store, 1)
    g.register("c", "dlib", DIM, [{"embedding": unit(1)[0]}], create_collection=True)
    with pytest.raises(ModelMismatch):
        g.register("c", "facenet", DIM, [{"embedding": unit(1)[0]}])
    with pytest.raises(ModelMismatch):
        g.register("c", "dlib", 8, [{"embedding": np.ones(8)}])
    with pytest.raises(ModelMismatch):
        g.search("c", "facenet", unit(1), 1)
    with pytest.raises(ValidationError):  # right model, wrong vector length
        g.search("c", "dlib", np.ones(DIM + 1), 1)
    with pytest.raises(ValidationError):
        g.register("c", "dlib", DIM, [{"embedding": np.zeros(DIM)}])
    with pytest.raises(ValidationError):
        g.register("c", "dlib", DIM, [{"embedding": np.full(DIM, np.nan)}])
    with pytest.raises(ValidationError):
        g.register("c", "dlib", DIM, [unit(1)[0]])  # an item is a map, not a bare vector
    with pytest.raises(ValidationError):
        g.search("c", "dlib", np.empty((0, DIM)), 1)
    with pytest.raises(ValidationError):
        g.search("c", "dlib", unit(1), 0)


def test_register_persons_faces_and_round_trip(store):
    g = InProcessGallery(store, 2)
    g.create_collection("c", "dlib", DIM)
    x = unit(6, seed=1)
    out = g.register("c", "dlib", DIM, [
        {"embedding": x[0], "person_id": "alice", "name": "Alice", "labels": {"team": "red"}},
        {"embedding": x[1], "person_id": "alice"},
        {"embedding": x[2]},  # a generated person id
    ])
    faces = out["faces"]
    assert [f["person_id"] for f in faces[:2]] == ["alice", "alice"]
    assert faces[2]["person_id"] and faces[2]["person_id"] != "alice"
    assert len({f["face_id"] for f in faces}) == 3

    alice = g.get_person("c", "alice")
    assert alice["name"] == "Alice" and alice["labels"] == {"team": "red"}
    assert {f["face_id"] for f in alice["faces"]} == {faces[0]["face_id"], faces[1]["face_id"]}

    # the stored embedding is the normalised float32 vector, bit for bit
    face = g.get_face("c", faces[1]["face_id"], with_embedding=True)
    np.testing.assert_array_equal(face["embedding"], x[1])

    # later registrations update name/labels only when given
    g.register("c", "dlib", DIM, [{"embedding": x[3], "person_id": "alice"}])
    assert g.get_person("c", "alice")["name"] == "Alice"
    g.register("c", "dlib", DIM, [{"embedding": x[4], "person_id": "alice", "name": "Al"}])
    assert g.get_person("c", "alice")["name"] == "Al"

    hits = g.search("c", "dlib", x[[0, 2]] * 3.0, k=2)  # scaled queries are normalised
    assert hits[0][0]["face_id"] == faces[0]["face_id"]
    assert hits[0][0]["person_id"] == "alice" and hits[0][0]["name"] == "Al"
    assert hits[0][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert hits[1][0]["face_id"] == faces[2]["face_id"]
    assert g.search("c", "dlib", x[0], k=5, max_distance=1e-4)[0][0]["face_id"] == \
        faces[0]["face_id"]
    assert len(g.search("c", "dlib", x[0], k=5, max_distance=1e-4)[0]) == 1

    st = g.stats("c")
    assert st["faces"] == 5 and st["persons"] == 2 and sum(st["shard_sizes"]) == 5

    with pytest.raises(ValidationError):
        g.register("c", "dlib", DIM, [{"embedding": x[5], "person_id": "bad id"}])
    with pytest.raises(ValidationError):
        g.register("c", "dlib", DIM, [{"embedding": x[5], "labels": {"k": 1}}])
    with pytest.raises(NotFound):
        g.get_person("c", "bob")
    with pytest.raises(NotFound):
        g.get_face("c", "0" * 32)


def test_forget_face_and_person(store_factory):
    store = store_factory()
    g = InProcessGallery(store, 3)
    g.create_collection("c", "dlib", DIM)
    x = unit(10, seed=2)
    faces = g.register("c", "dlib", DIM, [
        {"embedding": v, "person_id": "p%d" % (i % 2)} for i, v in enumerate(x)])["faces"]
    g.delete_face("c", faces[0]["face_id"])
    with pytest.raises(NotFound):
        g.delete_face("c", faces[0]["face_id"])
    with pytest.raises(NotFound):
        g.get_face("c", faces[0]["face_id"])
    gone = g.delete_person("c", "p1")
    assert sorted(gone["deleted_faces"]) == sorted(f["face_id"] for f in faces[1::2])
    with pytest.raises(NotFound):
        g.get_person("c", "p1")
    alive = {f["face_id"] for f in faces[2::2]}
    hits = g.search("c", "dlib", x, k=10)
    assert {h["face_id"] for row in hits for h in row} == alive
    assert g.verify("c")["consistent"]

    # a fresh gallery (a restart) rebuilds from the store: the forgotten stay gone
    g2 = InProcessGallery(store_factory(), 2)
    hits = g2.search("c", "dlib", x, k=10)
    assert {h["face_id"] for row in hits for h in row} == alive
    assert g2.stats("c")["faces"] == len(alive)


def test_idempotent_register(store):
    g = InProcessGallery(store, 2)
    g.create_collection("c", "dlib", DIM)
    items = [{"embedding": v, "person_id": "p"} for v in unit(3, seed=3)]
    first = g.register("c", "dlib", DIM, items, idempotency_key="req-1")
    again = g.register("c", "dlib", DIM, items, idempotency_key="req-1")
    assert not first["replayed"] and again["replayed"]
    assert again["faces"] == first["faces"]
    assert g.stats("c")["faces"] == 3
    with pytest.raises(Conflict):  # same key, different request
        g.register("c", "dlib", DIM, items[:2], idempotency_key="req-1")
    # a retry repairs shards that missed the first attempt's update (here: empty
    # FAISS shards that were never rebuilt, as after a crash between commit and
    # update); the replay re-reads the stored vectors, pgvector's included
    bare = InProcessGallery(store, 2, rebuild=False, search="faiss")
    assert not bare.verify("c")["consistent"]
    assert bare.register("c", "dlib", DIM, items, idempotency_key="req-1")["replayed"]
    assert bare.verify("c")["consistent"]


def test_drop_and_recreate_collection_does_not_resurrect(store):
    g = InProcessGallery(store, 2)
    x = unit(4, seed=4)
    g.register("c", "dlib", DIM, [{"embedding": v} for v in x], create_collection=True)
    g.drop_collection("c")
    g.create_collection("c", "dlib", DIM)
    assert g.search("c", "dlib", x, k=4) == [[], [], [], []]
    assert sum(g.stats("c")["shard_sizes"]) == 0


def test_bucket_is_stable():
    # the shard of a face must never depend on the process (no salted hash())
    assert face_bucket("0123456789abcdef0123456789abcdef") == 1483277332
    assert 0 <= face_bucket("x") < 2**31
