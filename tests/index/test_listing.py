"""Listings, person updates, export / import and idempotent replays, on SQLite,
PostgreSQL and PostgreSQL + pgvector: the store side of the gallery routes."""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time

import numpy as np
import pytest

from pipelines.errors import CollectionNotFound, Conflict, ModelMismatch, NotFound, ValidationError
from index import cursors
from index.audit import Actor
from index.erasure import pseudonym
from index.gallery import InProcessGallery
from index.store import SqliteStore

DIM = 16


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def enrol(g: InProcessGallery, collection: str, persons: list[str], per_person: int = 1,
          seed: int = 0, labels: dict | None = None) -> list[str]:
    vecs = unit(len(persons) * per_person, seed)
    items = [{"embedding": vecs[i * per_person + j], "person_id": p, "name": p.upper(),
              "labels": labels or {"team": "red"}}
             for i, p in enumerate(persons) for j in range(per_person)]
    return [f["face_id"] for f in g.register(collection, "dlib", DIM, items,
                                             create_collection=True)["faces"]]


def all_pages(fetch, key: str, limit: int, pause: float = 0.0) -> tuple[list[dict], int]:
    rows, cursor, pages = [], None, 0
    while True:
        time.sleep(pause)  # let writers in between pages
        page = fetch(limit=limit, cursor=cursor)
        pages += 1
        rows += page[key]
        assert len(page[key]) <= limit
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, pages


def test_persons_and_faces_page_in_a_stable_order(store):
    g = InProcessGallery(store, 2)
    persons = [f"p{i:03d}" for i in random.Random(1).sample(range(50), 23)]
    ids = enrol(g, "c", persons, per_person=2)
    got, pages = all_pages(lambda **kw: g.list_persons("c", **kw), "persons", 5)
    assert [p["person_id"] for p in got] == sorted(persons) and pages == 5
    assert all(p["faces"] == 2 and p["name"] == p["person_id"].upper()
               and p["labels"] == {"team": "red"} for p in got)
    faces, pages = all_pages(lambda **kw: g.list_faces("c", **kw), "faces", 7)
    assert [f["face_id"] for f in faces] == ids and pages == 7  # enrolment order
    assert faces[0]["name"] == faces[0]["person_id"].upper()
    one = sorted(persons)[3]
    mine = g.list_faces("c", person_id=one, limit=1)
    assert len(mine["faces"]) == 1 and mine["next_cursor"]
    rest = g.list_faces("c", person_id=one, limit=1, cursor=mine["next_cursor"])
    assert {f["face_id"] for f in mine["faces"] + rest["faces"]} == {
        f["face_id"] for f in faces if f["person_id"] == one}
    assert rest["next_cursor"] is None
    assert g.list_faces("c", person_id="nobody")["faces"] == []
    g.close()


def test_cursors_and_limits_are_checked(store):
    g = InProcessGallery(store, 1)
    enrol(g, "c", ["a", "b", "c"])
    enrol(g, "d", ["a", "b"])
    page = g.list_persons("c", limit=1)
    with pytest.raises(ValidationError, match="another listing"):
        g.list_persons("d", limit=1, cursor=page["next_cursor"])
    faces = g.list_faces("c", limit=1)
    with pytest.raises(ValidationError):  # a faces cursor is not a persons cursor
        g.list_persons("c", cursor=faces["next_cursor"])
    with pytest.raises(ValidationError, match="another listing"):  # another filter
        g.list_faces("c", person_id="a", cursor=faces["next_cursor"])
    for bad in ("", "!!", "bm90IGpzb24", cursors.encode("faces", 1, "x")):
        with pytest.raises(ValidationError):
            g.list_faces("c", cursor=bad or "=")
    for limit in (0, 1001, True, "5"):
        with pytest.raises(ValidationError):
            g.list_persons("c", limit=limit)
    with pytest.raises(CollectionNotFound):
        g.list_faces("nope")
    # a collection dropped and made again under the same name: old cursors refused
    cursor = g.list_faces("d", limit=1)["next_cursor"]
    g.drop_collection("d")
    enrol(g, "d", ["a", "b"])
    with pytest.raises(ValidationError, match="another listing"):
        g.list_faces("d", cursor=cursor)
    g.close()


SEARCHED = {"alice-01": "Alice Martin", "bob-02": "Robert Alison", "carol_03": "100% Carol",
            "dee-04": "Dee \\ Dee", "eve-05": "Élodie Ève", "frank-06": None,
            "Gus-07": "gus", "hal-08": "a_b"}


def test_persons_search_by_name_or_id(store):
    g = InProcessGallery(store, 1)
    vecs = unit(len(SEARCHED))
    g.register("c", "dlib", DIM, [{"embedding": vecs[i], "person_id": p, "name": n}
                                  for i, (p, n) in enumerate(SEARCHED.items())],
               create_collection=True)
    enrol(g, "d", ["alice-99"])  # another collection's persons are never found

    def found(q) -> list[str]:
        rows, _ = all_pages(lambda **kw: g.list_persons("c", q=q, **kw), "persons", 2)
        return [p["person_id"] for p in rows]

    assert found("ali") == ["alice-01", "bob-02"]  # a name part, any case
    assert found("ALICE") == ["alice-01"]
    assert found("frank") == ["frank-06"]  # an id part of an unnamed person
    assert found("gus-0") == found("GUS-07") == ["Gus-07"]  # ids ignore case too
    assert found("b-0") == ["bob-02"]
    # LIKE's wildcards and its escape character are plain characters
    assert found("%") == ["carol_03"]
    assert found("_") == ["carol_03", "hal-08"]
    assert found("a_b") == ["hal-08"]  # not "alison" / "a-b..."
    assert found("\\") == ["dee-04"]
    assert found("0% c") == ["carol_03"]
    # letters beyond ASCII are folded too (SQLite through the LOWER its store
    # registers, PostgreSQL as its UTF-8 locale does)
    assert found("élodie") == found("ÉLODIE ÈVE") == ["eve-05"]
    assert found("nobody") == []
    # blank, or none: every person
    assert found("   ") == found(None) == found("") == sorted(SEARCHED)
    page = g.list_persons("c", q="  ali ", limit=5)
    assert [p["name"] for p in page["persons"]] == ["Alice Martin", "Robert Alison"]
    assert page["persons"][0]["faces"] == 1 and page["next_cursor"] is None
    g.close()


def test_search_pages_cover_the_matches_once_and_cursors_keep_their_query(store):
    g = InProcessGallery(store, 1)
    persons = [f"m{i:03d}" for i in range(40)]
    vecs = unit(len(persons))
    g.register("c", "dlib", DIM, [
        {"embedding": vecs[i], "person_id": p, "name": ("Jo Smith" if i % 3 else "Ann Lee")}
        for i, p in enumerate(persons)], create_collection=True)
    smiths = [p for i, p in enumerate(persons) if i % 3]
    got, pages = all_pages(lambda **kw: g.list_persons("c", q="SMITH", **kw), "persons", 4)
    assert [p["person_id"] for p in got] == smiths and pages == 7  # 26 in pages of 4
    first = g.list_persons("c", q="smith", limit=4)
    # the cursor of a search pages that search only (surrounding spaces aside)
    nxt = g.list_persons("c", q=" smith ", limit=4, cursor=first["next_cursor"])
    assert [p["person_id"] for p in nxt["persons"]] == smiths[4:8]
    for other in (None, "", "smit", "lee"):
        with pytest.raises(ValidationError, match="another listing"):
            g.list_persons("c", q=other, cursor=first["next_cursor"])
    plain = g.list_persons("c", limit=4)["next_cursor"]
    with pytest.raises(ValidationError, match="another listing"):
        g.list_persons("c", q="smith", cursor=plain)
    assert g.list_persons("c", q="   ", cursor=plain)["persons"][0]["person_id"] == "m004"
    # a digest of the search is in the cursor, not the text (a cursor stays short)
    assert b"smith" not in base64.urlsafe_b64decode(first["next_cursor"] + "==")
    # too long (after stripping), not text, or with control characters: typed errors
    assert len(g.list_persons("c", q=" " + "x" * 200 + " ")["persons"]) == 0
    for bad in ("x" * 201, 5, "smi\x00th", "a\nb"):
        with pytest.raises(ValidationError):
            g.list_persons("c", q=bad)
    g.close()


def test_listing_while_writers_add_and_forget(store_factory):
    """Pages walked while three writers add and forget faces: every face that existed
    throughout is on exactly one page, and no face shows up twice."""
    g = InProcessGallery(store_factory(), 2)
    persons = [f"base{i:03d}" for i in range(120)]
    throughout = enrol(g, "busy", persons, per_person=2)
    doomed = enrol(g, "busy", [f"doomed{i:02d}" for i in range(30)], seed=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            rng = random.Random(w)
            n = 0
            while not stop.is_set():
                # paced: new faces land at the tail, and unpaced writers could keep
                # ahead of the walk for as long as they run
                time.sleep(0.02)
                new = enrol(g, "busy", [f"w{w}-{n}", f"{rng.choice('abcxyz')}{w}-{n}"],
                            seed=100 + 10 * w + n)
                n += 1
                if rng.random() < 0.5:
                    g.delete_faces("busy", [rng.choice(new)])
                if rng.random() < 0.3:
                    try:
                        victim = doomed.pop()
                    except IndexError:
                        continue
                    g.delete_faces("busy", [victim])
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        seen_faces, _ = all_pages(lambda **kw: g.list_faces("busy", **kw), "faces", 13, 0.02)
        seen_persons, _ = all_pages(lambda **kw: g.list_persons("busy", **kw), "persons", 11,
                                    0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    ids = [f["face_id"] for f in seen_faces]
    assert len(ids) == len(set(ids)), "a face was listed twice"
    assert set(throughout) <= set(ids), "a face that existed throughout was missed"
    pids = [p["person_id"] for p in seen_persons]
    assert len(pids) == len(set(pids)) and pids == sorted(pids)
    assert set(persons) <= set(pids)
    # the writers did run meanwhile: faces were added and forgotten between pages
    assert g.stats("busy")["faces"] > len(throughout) + len(doomed) + 20
    assert len(doomed) < 30
    g.close()


def test_update_person_renames_and_relabels(store):
    g = InProcessGallery(store, 2)
    vec = unit(1, 5)[0]
    g.register("c", "dlib", DIM, [{"embedding": vec, "person_id": "ann", "name": "Ann",
                                   "labels": {"team": "red", "floor": "2"}}],
               create_collection=True)
    out = g.update_person("c", "ann", {"name": "Anne"})
    assert out["name"] == "Anne" and out["labels"] == {"team": "red", "floor": "2"}
    assert len(out["faces"]) == 1
    out = g.update_person("c", "ann", {"labels": {"team": "blue"}})
    assert out["name"] == "Anne" and out["labels"] == {"team": "blue"}
    hit = g.search("c", "dlib", vec[None], 1)[0][0]  # hits read the person's row
    assert hit["name"] == "Anne" and hit["labels"] == {"team": "blue"}
    out = g.update_person("c", "ann", {"name": None, "labels": {}})
    assert out["name"] is None and out["labels"] == {}
    assert g.update_person("c", "ann", {})["person_id"] == "ann"
    with pytest.raises(NotFound):
        g.update_person("c", "bob", {"name": "Bob"})
    with pytest.raises(CollectionNotFound):
        g.update_person("nope", "ann", {"name": "x"})
    for bad in ({"name": ""}, {"labels": {"bad key": "x"}}, {"labels": "red"},
                {"person_id": "eve"}):
        with pytest.raises(ValidationError):
            g.update_person("c", "ann", bad)
    g.close()


TARGET = {"sqlite": "pgvector", "postgres": "sqlite", "pgvector": "postgres"}


def export_all(g: InProcessGallery, collection: str, page: int) -> list[dict]:
    out, after = [], 0
    while after is not None:
        res = g.export_page(collection, after, page)
        out += res["faces"]
        after = res["after"]
    return out


def test_export_then_import_on_another_backend(store_factory, fresh_store):
    """A collection moves to another backend with its ids, persons, times and vectors;
    importing again adds nothing; the nearest faces are the same on both sides."""
    src = InProcessGallery(store_factory(), 2)
    enrol(src, "staff", [f"p{i:02d}" for i in range(40)], per_person=3, seed=3,
          labels={"site": "north"})
    src.delete_faces("staff", [src.list_faces("staff", limit=5)["faces"][4]["face_id"]])
    lines = export_all(src, "staff", 17)
    assert len(lines) == 119 and len({x["id"] for x in lines}) == 119
    assert {x["model"] for x in lines} == {"dlib"}
    assert all(x["embedding"].shape == (DIM,) and x["name"] == x["person_id"].upper()
               for x in lines)

    dst = InProcessGallery(fresh_store(TARGET[store_factory.backend]), 3)
    done = [dst.import_faces("staff", "dlib", DIM, lines[i:i + 50], create_collection=True)
            for i in range(0, len(lines), 50)]
    assert sum(len(d["imported"]) for d in done) == 119
    back = export_all(dst, "staff", 1000)
    assert [x["id"] for x in back] == [x["id"] for x in lines]  # the same ids, same order
    for a, b in zip(lines, back, strict=True):
        assert (a["person_id"], a["name"], a["labels"]) == (b["person_id"], b["name"],
                                                            b["labels"])
        assert abs(a["created_at"] - b["created_at"]) < 1e-3
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)
    probes = unit(5, 99)
    assert ([[h["face_id"] for h in row] for row in src.search("staff", "dlib", probes, 5)]
            == [[h["face_id"] for h in row] for row in dst.search("staff", "dlib", probes, 5)])

    again = dst.import_faces("staff", "dlib", DIM, lines[:60])
    assert again["imported"] == [] and len(again["skipped"]) == 60
    assert dst.stats("staff")["faces"] == 119
    # the same ids into another collection of the same store: reported, not stolen
    other = dst.import_faces("copy", "dlib", DIM, lines[:3], create_collection=True)
    assert other["imported"] == [] and len(other["elsewhere"]) == 3
    # model and dimension bind the collection
    with pytest.raises(ModelMismatch):
        dst.import_faces("staff", "dlib-native", DIM, lines[:1])
    with pytest.raises(ValidationError):
        dst.import_faces("staff", "dlib", DIM, [{**lines[0], "embedding": [0.1] * 8}])
    with pytest.raises(CollectionNotFound):  # only a create flag makes a collection
        dst.import_faces("absent", "dlib", DIM, lines[:1])
    for bad in ({"id": "xyz"}, {"person_id": "has space"}, {"created_at": "yesterday"},
                {"embedding": [0.0] * DIM}):
        with pytest.raises(ValidationError):
            dst.import_faces("staff", "dlib", DIM, [{**lines[0], **bad}])
    with pytest.raises(ValidationError):
        dst.import_faces("staff", "dlib", DIM, [lines[0], lines[0]])
    src.close()
    dst.close()


def test_import_into_another_collection_copies_it(store):
    """An export imported into another collection of the same store is a copy: new
    face ids, the old-to-new mapping reported, the same persons and vectors; a
    second run adds nothing, and the source is untouched."""
    g = InProcessGallery(store, 2)
    enrol(g, "staff", [f"p{i:02d}" for i in range(10)], per_person=2, seed=5)
    lines = export_all(g, "staff", 7)
    first = g.import_faces("copy", "dlib", DIM, lines[:12], create_collection=True, copy=True)
    rest = g.import_faces("copy", "dlib", DIM, lines[12:], copy=True)
    mapping = {**first["copied"], **rest["copied"]}
    assert sorted(mapping) == sorted(x["id"] for x in lines)
    assert not set(mapping.values()) & set(mapping)  # all new ids
    assert first["elsewhere"] == [] and len(first["imported"]) == 12
    copy = {x["id"]: x for x in export_all(g, "copy", 100)}
    assert set(copy) == set(mapping.values())
    for x in lines:
        y = copy[mapping[x["id"]]]
        assert (y["person_id"], y["name"]) == (x["person_id"], x["name"])
        np.testing.assert_allclose(y["embedding"], x["embedding"], atol=1e-6)
    again = g.import_faces("copy", "dlib", DIM, lines, copy=True)
    assert again["imported"] == [] and again["copied"] == {} and len(again["skipped"]) == 20
    assert g.stats("copy")["faces"] == g.stats("staff")["faces"] == 20
    probes = unit(3, 98)
    near = [[mapping[h["face_id"]] for h in row] for row in g.search("staff", "dlib", probes, 3)]
    assert near == [[h["face_id"] for h in row] for row in g.search("copy", "dlib", probes, 3)]
    # without copy (a key limited to collections) the ids stay left out
    plain = g.import_faces("other", "dlib", DIM, lines[:2], create_collection=True)
    assert plain["imported"] == [] and len(plain["elsewhere"]) == 2
    g.close()


def test_import_takes_uuid_spellings_and_unnormalised_vectors(store):
    g = InProcessGallery(store, 1)
    raw = np.arange(1, DIM + 1, dtype=np.float32)
    uid = "4F0C2B1E-9D3A-4C5B-8E7F-6A5B4C3D2E1F"
    g.import_faces("c", "dlib", DIM, [{"id": uid, "person_id": "x", "embedding": raw}],
                   create_collection=True)
    face = g.get_face("c", uid.replace("-", "").lower(), with_embedding=True)
    np.testing.assert_allclose(face["embedding"], raw / np.linalg.norm(raw), atol=1e-6)
    g.close()


def test_replay_returns_the_first_answer(store):
    g = InProcessGallery(store, 2)
    items = [{"embedding": v, "person_id": f"p{i}"} for i, v in enumerate(unit(3, 7))]
    first = g.register("c", "dlib", DIM, items, idempotency_key="k1", create_collection=True,
                       request_hash="h1", extra={"boxes": [1, 2, 3]})
    assert not first["replayed"]
    again = g.replay_register("c", "k1", "h1")
    assert again["replayed"] and again["extra"] == {"boxes": [1, 2, 3]}
    assert [f["face_id"] for f in again["faces"]] == [f["face_id"] for f in first["faces"]]
    # a register racing the replay check finds the stored answer in its own transaction
    raced = g.register("c", "dlib", DIM, items, idempotency_key="k1", request_hash="h1",
                       extra={"boxes": []})
    assert raced["replayed"] and raced["extra"] == {"boxes": [1, 2, 3]}
    assert g.stats("c")["faces"] == 3
    assert g.replay_register("c", "k2", "h1") is None
    assert g.replay_register("nope", "k1", "h1") is None
    with pytest.raises(Conflict):
        g.replay_register("c", "k1", "other request")
    gone = first["faces"][0]["face_id"]
    g.delete_faces("c", [gone])
    # the answer is the first one less the face forgotten since (index.erasure: the
    # idempotency row no longer names it), which is not brought back
    replayed = g.replay_register("c", "k1", "h1")["faces"]
    assert [f["face_id"] for f in replayed] == [f["face_id"] for f in first["faces"][1:]]
    assert g.stats("c")["faces"] == 2 == sum(g.stats("c")["shard_sizes"])
    assert gone not in {h["face_id"] for h in g.search("c", "dlib", unit(3, 7), 3)[0]}
    g.close()


def test_migration_5_applies_to_an_older_store(tmp_path):
    path = tmp_path / "g.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:  # as a store made before migration 5 left it
        conn.execute("DROP INDEX faces_by_collection")
        conn.execute("DELETE FROM schema_migrations WHERE version = 5")
    store = SqliteStore(path)
    with store._tx(write=False) as cur:
        cur.execute("SELECT name FROM sqlite_master WHERE name = 'faces_by_collection'")
        assert cur.fetchone() is not None
        cur.execute("EXPLAIN QUERY PLAN SELECT id FROM faces WHERE collection_id = 1 "
                    "AND id > 5 ORDER BY id LIMIT 10")
        assert "faces_by_collection" in " ".join(str(r) for r in cur.fetchall())
    store.close()


def test_huge_but_finite_vectors_are_normalised_not_zeroed(store):
    g = InProcessGallery(store, 1)
    big = np.full(DIM, 3e37, dtype=np.float32)  # its float32 norm overflows
    g.register("c", "dlib", DIM, [{"embedding": big, "person_id": "x"}],
               create_collection=True)
    (face,) = g.export_page("c")["faces"]
    np.testing.assert_allclose(face["embedding"], np.full(DIM, DIM ** -0.5), rtol=1e-6)
    g.close()


def test_person_updates_and_imports_are_audited(store):
    g = InProcessGallery(store, 1)
    actor = Actor("k-1", "req-1")
    enrol(g, "c", ["ann", "bob"])
    g.update_person("c", "ann", {"name": "Anne"}, actor)
    lines = export_all(g, "c", 10)
    g.drop_collection("c")
    g.import_faces("c", "dlib", DIM, lines, True, actor)
    g.import_faces("c", "dlib", DIM, lines, False, actor)  # all skipped: an empty change
    mine = [e for e in store.audit_entries() if e.key_id == "k-1"]
    assert [e.action for e in mine] == ["person.update", "collection.create", "face.import",
                                        "face.import"]
    # "c" was dropped since: its persons are named by their keyed hash (index.erasure)
    assert mine[0].person_id == pseudonym(store.erasure_key, "c", "ann")
    assert mine[0].request_id == "req-1"
    assert sorted(mine[2].face_ids) == sorted(x["id"] for x in lines) and mine[3].face_ids == []
    with pytest.raises(NotFound):  # a failed change leaves no entry
        g.update_person("c", "nobody", {"name": "x"}, actor)
    assert len([e for e in store.audit_entries() if e.key_id == "k-1"]) == 4
    g.close()
