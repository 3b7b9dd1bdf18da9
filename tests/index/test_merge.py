"""Merging persons: every face of the merged persons moves into one, in one
transaction with its audit entry, while identify traffic runs; on each backend."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.errors import NotFound, ValidationError
from index.audit import Actor
from index.gallery import InProcessGallery
from tests.index.conftest import BACKENDS, store_url
from tests.index.vectors import D, unit


def _gallery(backend: str, request: pytest.FixtureRequest, tmp_path) -> InProcessGallery:
    from index.store import PostgresStore, SqliteStore
    from index.store.pgvector import PgvectorStore

    url = store_url(backend, request)
    store = {"sqlite": lambda: SqliteStore(tmp_path / "g.sqlite3"),
             "postgres": lambda: PostgresStore(url),
             "pgvector": lambda: PgvectorStore(url)}[backend]()
    return InProcessGallery(store, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_under_identify_traffic_loses_no_face(backend, request, tmp_path):
    g = _gallery(backend, request, tmp_path)
    try:
        x = unit(40, seed=7)
        g.create_collection("c", "m", D)
        # three persons of 4 faces each (a, b, c) and 28 bystanders
        people = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + [f"x{i}" for i in range(28)]
        enrolled = g.register("c", "m", D, [{"embedding": v, "person_id": p}
                                            for v, p in zip(x, people, strict=True)])["faces"]
        face_ids = [f["face_id"] for f in enrolled]
        probes = x[:12]  # the faces of a, b and c themselves
        seen: list[tuple[float, list[str]]] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def identify() -> None:
            while not stop.is_set():
                try:
                    rows = g.search("c", "m", probes, 1)
                    seen.append((time.monotonic(), [r[0]["person_id"] for r in rows]))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return

        threads = [threading.Thread(target=identify) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        before = g.stats("c")
        merged = g.merge_persons("c", "ann", ["a", "b"], Actor("k1", "req-merge"))
        done = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        assert not errors, errors
        # every face of a and b now belongs to ann; the emptied persons are gone
        assert sorted(merged["moved_faces"]) == sorted(face_ids[:8])
        assert sorted(f["face_id"] for f in merged["faces"]) == sorted(face_ids[:8])
        assert merged["merged"] == ["a", "b"]
        for gone in ("a", "b"):
            with pytest.raises(NotFound):
                g.get_person("c", gone)
        after = g.stats("c")
        assert after["faces"] == before["faces"] == 40  # no face lost
        assert after["persons"] == before["persons"] - 1  # a, b out; ann in
        assert g.verify("c")["consistent"]
        # identify answered the old ids before, the merged id right after the commit
        # (hits are resolved to persons from the store; the sync interval is the bound)
        assert any(ids[:8] == ["a"] * 4 + ["b"] * 4 for _, ids in seen)
        late = [ids for at, ids in seen if at > done + 0.05]
        assert late, "no identify ran after the merge"
        for ids in late:
            assert ids == ["ann"] * 8 + ["c"] * 4
        # one audit entry, with what moved
        entry = [e for e in g.audit_entries("c", "person.merge")]
        assert len(entry) == 1
        assert entry[0]["person_id"] == "ann" and entry[0]["person_ids"] == ["a", "b"]
        assert sorted(entry[0]["face_ids"]) == sorted(face_ids[:8])
        assert entry[0]["request_id"] == "req-merge"
    finally:
        g.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_into_existing_person_and_refusals(backend, request, tmp_path):
    g = _gallery(backend, request, tmp_path)
    try:
        x = unit(3, seed=8)
        g.create_collection("c", "m", D)
        g.register("c", "m", D, [{"embedding": x[0], "person_id": "p", "name": "Pat"},
                                 {"embedding": x[1], "person_id": "q"},
                                 {"embedding": x[2], "person_id": "r"}])
        out = g.merge_persons("c", "p", ["q"])
        assert out["name"] == "Pat" and len(out["faces"]) == 2  # the target keeps its name
        with pytest.raises(NotFound):  # a missing source: nothing moves
            g.merge_persons("c", "p", ["r", "nobody"])
        assert len(g.get_person("c", "r")["faces"]) == 1
        with pytest.raises(ValidationError):
            g.merge_persons("c", "p", ["p"])
        with pytest.raises(ValidationError):
            g.merge_persons("c", "p", [])
        assert g.stats("c")["faces"] == 3
    finally:
        g.close()


def test_a_stranger_is_enrolled_once_with_its_audit_entry(tmp_path, request):
    """The gallery side of identify with enrol_unknown: a vector matching nobody becomes
    a new person (audited as face.enrol_unknown); the same vector again matches it."""
    from pipelines.flow.gallery_side import identify_embedded
    from pipelines.types import GivenEmbedding

    g = _gallery("sqlite", request, tmp_path)
    try:
        x = unit(3, seed=9)
        g.create_collection("c", "m", D)
        g.register("c", "m", D, [{"embedding": x[0], "person_id": "known"}])
        actor = Actor("k", "req-1")

        def ask(v, enrol):
            return g._run(identify_embedded(g.service, GivenEmbedding(v, "m"), "c", 1,
                                            actor=actor, enrol_unknown=enrol, threshold=0.3))

        first = ask(x[1], True).faces[0]
        assert first.enrolled is not None and first.enrolled["person_id"] != "known"
        second = ask(x[1], True).faces[0]
        assert second.enrolled is None
        assert second.hits[0]["person_id"] == first.enrolled["person_id"]
        assert ask(x[0], True).faces[0].enrolled is None  # a known face: never enrolled
        assert ask(x[2], False).faces[0].enrolled is None  # not asked: nothing enrolled
        assert g.stats("c")["faces"] == 2
        entries = g.audit_entries("c", "face.enrol_unknown")
        assert [e["face_ids"] for e in entries] == [[first.enrolled["face_id"]]]
        assert entries[0]["person_id"] == first.enrolled["person_id"]
    finally:
        g.close()
