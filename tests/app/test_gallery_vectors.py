"""The gallery's vectors in and out, listings, person updates, export / import and
retried batches, over HTTP on the real Serve app with real photos.

Embeddings come from the service itself (``/v1/embed`` of the deepface test
photos), so enrolling by embedding and by photo must find the same people.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from tests.app.photos import b64, identities

from facefleet import AsyncClient, Client
from facefleet.cli import main

pytestmark = pytest.mark.app


def error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["request_id"], body
    return body


@pytest.fixture(scope="module")
def vectors(api, faces) -> dict[str, list[list[float]]]:
    """Every labelled deepface photo's embedding, by person, computed by the service."""
    out: dict[str, list[list[float]]] = {}
    for person, imgs in identities(faces).items():
        for img in imgs:
            r = api.post("/v1/embed", json={"img": b64(img)})
            assert r.status_code == 200, r.text
            out.setdefault(person, []).append(r.json()["faces"][0]["embedding"])
    return out


def test_enrol_and_identify_by_embedding(api, faces, vectors):
    # the first photo of each person enrolled as a vector, the rest searched as vectors
    # and as photos: both find the same person at the same distance
    for person, vecs in vectors.items():
        r = api.post("/v1/collections/vec/faces", json={
            "embedding": vecs[0], "person_id": person, "name": person.title()})
        assert r.status_code == 201, r.text
        assert r.json()["box"] is None and r.json()["name"] == person.title()
    hits = total = 0
    for person, vecs in vectors.items():
        for vec, img in zip(vecs[1:], identities(faces)[person][1:], strict=True):
            by_vec = api.post("/v1/collections/vec/identify",
                              json={"embedding": vec, "top_k": 3}).json()
            by_img = api.post("/v1/collections/vec/identify",
                              json={"img": b64(img), "top_k": 3}).json()
            (face,) = by_vec["faces"]
            assert face["box"] is None and face["confidence"] is None
            assert by_vec["model"] == by_img["model"] and \
                by_vec["threshold"] == by_img["threshold"]
            assert [m["id"] for m in face["matches"]] == [
                m["id"] for m in by_img["faces"][0]["matches"]]
            assert abs(face["matches"][0]["distance"]
                       - by_img["faces"][0]["matches"][0]["distance"]) < 1e-4
            total += 1
            hits += face["matches"][0]["person_id"] == person and face["matches"][0]["match"]
    assert hits / total >= 0.9, f"{hits}/{total}"

    # per person: one match per person, nearest first
    probe = vectors["person01"][1]
    for vec in vectors["person01"][1:]:
        api.post("/v1/collections/vec/faces", json={"embedding": vec, "person_id": "person01"})
    plain = api.post("/v1/collections/vec/identify",
                     json={"embedding": probe, "top_k": 4}).json()["faces"][0]["matches"]
    per = api.post("/v1/collections/vec/identify", json={
        "embedding": probe, "top_k": 4, "per_person": True}).json()["faces"][0]["matches"]
    assert [m["person_id"] for m in plain[:2]] == ["person01", "person01"]
    assert len({m["person_id"] for m in per}) == len(per) == 4
    assert per[0]["id"] == plain[0]["id"]


def test_embeddings_are_checked_and_normalised(api, vectors):
    vec = vectors["person02"][0]
    api.post("/v1/collections/vecnorm/faces", json={"embedding": vec, "person_id": "p"})
    error(api.post("/v1/collections/vecnorm/faces", json={"embedding": vec[:64]}),
          422, "validation_error")
    error(api.post("/v1/collections/vecnorm/identify", json={"embedding": vec + [0.1]}),
          422, "validation_error")
    error(api.post("/v1/collections/vecnorm/faces",
                   json={"embedding": vec, "model": "dlib-native"}), 409, "model_mismatch")
    error(api.post("/v1/collections/vecnorm/identify",
                   json={"embedding": vec, "model": "dlib-native"}), 409, "model_mismatch")
    dim = len(vec)
    error(api.post("/v1/collections/vecnorm/faces", json={"embedding": [0.0] * dim}),
          422, "validation_error")
    error(api.post("/v1/collections/vecnorm/faces", json={"embedding": ["x"] * dim}),
          422, "validation_error")
    error(api.post("/v1/collections/vecnorm/faces",
                   content=b'{"embedding": [NaN' + b", 0.1" * (dim - 1) + b"]}",
                   headers={"content-type": "application/json"}), 422, "validation_error")
    error(api.post("/v1/collections/vecnorm/identify", json={"img": "x", "embedding": vec}),
          422, "validation_error")
    error(api.post("/v1/collections/vecnorm/identify", json={"top_k": 3}),
          422, "validation_error")
    error(api.post("/v1/collections/vec-none/identify", json={"embedding": vec}),
          404, "collection_not_found")
    # a vector of another length for a new collection: the model's dimension decides
    error(api.post("/v1/collections/vec-new/faces", json={"embedding": vec[:dim // 2]}),
          422, "validation_error")
    assert api.get("/v1/collections/vec-new").status_code == 404

    # stored normalised: 3.7 times the vector is the same face, distance 0
    scaled = (np.array(vec) * 3.7).tolist()
    r = api.post("/v1/collections/vecnorm/faces", json={"embedding": scaled, "person_id": "q"})
    assert r.status_code == 201
    lines = [json.loads(x) for x in api.get("/v1/collections/vecnorm/export").text.splitlines()]
    stored = next(x for x in lines if x["id"] == r.json()["id"])["embedding"]
    assert abs(np.linalg.norm(stored) - 1) < 1e-5
    np.testing.assert_allclose(stored, np.array(vec) / np.linalg.norm(vec), atol=1e-5)


def test_retried_batch_gets_the_first_answer(api, faces, vectors):
    items = [{"img": b64(faces / "deepface/img1.jpg"), "person_id": "a"},
             {"img": b64(faces / "dlib-boxes/dogs.jpg"), "person_id": "dog"},
             {"embedding": vectors["person03"][0], "person_id": "c", "name": "Cee"},
             {"embedding": vectors["person03"][0][:3]},
             {"img": "not an image"}]
    key = {"Idempotency-Key": "batch-retry-1"}
    first = api.post("/v1/collections/retry/faces:batch", json={"items": items}, headers=key)
    assert first.status_code == 200, first.text
    doc = first.json()
    assert (doc["created"], doc["failed"], doc["replayed"]) == (2, 3, False)
    assert [r.get("error") and r["error"]["code"] for r in doc["results"]] == [
        None, "no_face_detected", None, "validation_error", "image_decode_error"]
    assert doc["results"][0]["box"]["w"] > 0 and doc["results"][2]["box"] is None

    again = api.post("/v1/collections/retry/faces:batch", json={"items": items}, headers=key)
    assert again.status_code == 200 and again.json() == {**doc, "replayed": True}
    assert api.get("/v1/collections/retry").json()["faces"] == 2

    # the same key with another body is refused, not applied
    error(api.post("/v1/collections/retry/faces:batch", json={"items": items[:1]},
                   headers=key), 409, "conflict")
    # retries that race the first attempt: one set of faces, one answer for all
    race = {"Idempotency-Key": "batch-race-1"}
    body = {"items": [{"img": b64(faces / "deepface/img2.jpg"), "person_id": "r1"},
                      {"embedding": vectors["person04"][0], "person_id": "r2"}]}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: api.post("/v1/collections/retry/faces:batch",
                                                   json=body, headers=race), range(4)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    ids = {tuple(r["id"] for r in a.json()["results"]) for a in answers}
    assert len(ids) == 1 and sum(not a.json()["replayed"] for a in answers) == 1
    assert api.get("/v1/collections/retry").json()["faces"] == 4

    # the single-face route: a retry answers the first face, box included
    one = {"img": b64(faces / "deepface/img3.jpg"), "person_id": "s"}
    a = api.post("/v1/collections/retry/faces", json=one, headers={"Idempotency-Key": "one-1"})
    b = api.post("/v1/collections/retry/faces", json=one, headers={"Idempotency-Key": "one-1"})
    assert (a.status_code, b.status_code) == (201, 200)
    assert b.json() == {**a.json(), "replayed": True} and b.json()["box"]["w"] > 0


def test_pages_are_stable_while_others_enrol(api, vectors):
    """Faces and persons paged through while three clients enrol and forget: every face
    and person that existed throughout is on exactly one page."""
    rng = np.random.default_rng(3)
    base = np.array(vectors["person05"][0])
    throughout = []
    for i in range(0, 90, 30):
        items = [{"embedding": (base + rng.normal(0, 0.05, len(base))).tolist(),
                  "person_id": f"base{j:03d}"} for j in range(i, i + 30)]
        r = api.post("/v1/collections/paging/faces:batch", json={"items": items})
        throughout += [x["id"] for x in r.json()["results"]]
    stop = threading.Event()
    writes: list[int] = []
    failures: list[str] = []

    def writer(w: int) -> None:
        own = np.random.default_rng(100 + w)
        n = 0
        while not stop.is_set():
            r = api.post("/v1/collections/paging/faces", json={
                "embedding": (base + own.normal(0, 0.05, len(base))).tolist(),
                "person_id": f"w{w}-{n}"})
            if r.status_code != 201:
                failures.append(r.text)
                return
            if n % 2 and api.delete(f"/v1/collections/paging/faces/{r.json()['id']}"
                                    ).status_code != 204:
                failures.append("delete failed")
                return
            n += 1
            writes.append(w)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    try:
        seen, cursor = [], None
        while True:
            page = api.get("/v1/collections/paging/faces",
                           params={"limit": 7, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            seen += [f["id"] for f in page.json()["faces"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        people, cursor = [], None
        while True:
            page = api.get("/v1/collections/paging/persons",
                           params={"limit": 9, **({"cursor": cursor} if cursor else {})}).json()
            people += [p["person_id"] for p in page["persons"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures
    assert len(writes) >= 6  # faces were enrolled and forgotten between the pages
    assert len(seen) == len(set(seen)) and set(throughout) <= set(seen)
    assert len(people) == len(set(people)) and people == sorted(people)
    assert {f"base{j:03d}" for j in range(90)} <= set(people)

    one = api.get("/v1/collections/paging/faces", params={"person_id": "base007"}).json()
    assert [f["id"] for f in one["faces"]] == [throughout[7]] and one["next_cursor"] is None
    p = api.get("/v1/collections/paging/persons", params={"limit": 1}).json()["persons"][0]
    assert p["faces"] == 1 and p["person_id"] == "base000"
    # bad pages are typed errors
    error(api.get("/v1/collections/paging/faces", params={"cursor": "bm9wZQ"}),
          422, "validation_error")
    other = api.get("/v1/collections/vec/faces", params={"limit": 1}).json()["next_cursor"]
    error(api.get("/v1/collections/paging/faces", params={"cursor": other}),
          422, "validation_error")
    error(api.get("/v1/collections/paging/persons", params={"limit": 0}),
          422, "validation_error")
    error(api.get("/v1/collections/paging/persons", params={"limit": 1001}),
          422, "validation_error")
    error(api.get("/v1/collections/no-such/persons"), 404, "collection_not_found")


def test_persons_search_over_http(service, api, vectors):
    """``q`` filters the persons listing on the server, through the API, the Python
    client and the CLI; its pages keep their search, and a bad ``q`` is a typed 422."""
    names = {"ana-1": "Ana Souza", "bea-2": "Beatriz Ana", "cid-3": "100% Cid",
             "dan-4": "Dan", "Ana_5": None}
    for (pid, name), vecs in zip(names.items(), vectors.values(), strict=False):
        r = api.post("/v1/collections/search/faces",
                     json={"embedding": vecs[0], "person_id": pid, "name": name})
        assert r.status_code == 201, r.text

    def ids(**params) -> tuple[list[str], str | None]:
        r = api.get("/v1/collections/search/persons", params=params)
        assert r.status_code == 200, r.text
        return [p["person_id"] for p in r.json()["persons"]], r.json()["next_cursor"]

    assert ids(q="ANA") == (["Ana_5", "ana-1", "bea-2"], None)  # names and ids, any case
    assert ids(q="%") == (["cid-3"], None) and ids(q="a_") == (["Ana_5"], None)
    assert ids(q="  ")[0] == sorted(names)
    first, cursor = ids(q="ana", limit=2)
    assert first == ["Ana_5", "ana-1"] and cursor
    assert ids(q="ana", limit=2, cursor=cursor) == (["bea-2"], None)
    error(api.get("/v1/collections/search/persons", params={"q": "dan", "cursor": cursor}),
          422, "validation_error")
    error(api.get("/v1/collections/search/persons", params={"cursor": cursor}),
          422, "validation_error")
    body = error(api.get("/v1/collections/search/persons", params={"q": "x" * 201}),
                 422, "validation_error")
    assert "200" in body["message"]
    with Client(service.base_url) as client:
        page = client.persons("search", q="souza")
        assert [p.name for p in page.items] == ["Ana Souza"] and page.next_cursor is None
        assert [p.person_id for p in client.iter_persons("search", page_size=1, q="ana")] \
            == ["Ana_5", "ana-1", "bea-2"]

    async def found_async() -> list[str]:
        async with AsyncClient(service.base_url) as client:
            return [p.person_id async for p in client.iter_persons("search", page_size=1,
                                                                   q="_")]

    # a loop of its own in a thread of its own: after the browser tests, Playwright keeps
    # an event loop running in this thread, where asyncio.run refuses to start
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, found_async()).result() == ["Ana_5"]
    out = CliRunner().invoke(main, ["persons", "-c", "search", "-q", "CID", "--json"],
                             env={"FACEFLEET_URL": service.base_url}, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert [p["person_id"] for p in json.loads(out.stdout)["persons"]] == ["cid-3"]


def test_patch_person_renames_what_identify_answers(api, vectors):
    vec = vectors["person06"][0]
    api.post("/v1/collections/patch/faces", json={"embedding": vec, "person_id": "six",
                                                   "name": "Six", "labels": {"a": "1"}})
    r = api.patch("/v1/collections/patch/persons/six", json={"name": "Sixth"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Sixth" and r.json()["labels"] == {"a": "1"}
    assert len(r.json()["faces"]) == 1
    r = api.patch("/v1/collections/patch/persons/six", json={"labels": {"team": "blue"}})
    assert r.json()["labels"] == {"team": "blue"} and r.json()["name"] == "Sixth"
    m = api.post("/v1/collections/patch/identify",
                 json={"embedding": vec}).json()["faces"][0]["matches"][0]
    assert (m["name"], m["labels"]) == ("Sixth", {"team": "blue"})
    assert api.patch("/v1/collections/patch/persons/six",
                     json={"name": None}).json()["name"] is None
    error(api.patch("/v1/collections/patch/persons/nobody", json={"name": "x"}),
          404, "not_found")
    error(api.patch("/v1/collections/patch/persons/six", json={"nickname": "x"}),
          422, "validation_error")
    error(api.patch("/v1/collections/patch/persons/six", json={"labels": {"bad key": "x"}}),
          422, "validation_error")
    error(api.patch("/v1/collections/no-such/persons/six", json={"name": "x"}),
          404, "collection_not_found")


def test_export_drop_import_restores_the_collection(api, faces, vectors):
    for person, vecs in list(vectors.items())[:6]:
        for v in vecs:
            api.post("/v1/collections/backup/faces", json={
                "embedding": v, "person_id": person, "name": person.upper(),
                "labels": {"set": "deepface"}})
    r = api.get("/v1/collections/backup/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert int(r.headers["x-facefleet-faces"]) == len(lines) == sum(
        len(v) for v in list(vectors.values())[:6])
    assert set(lines[0]) == {"id", "person_id", "name", "labels", "model", "created_at",
                             "embedding"}
    probe = vectors["person01"][-1]
    before = api.post("/v1/collections/backup/identify",
                      json={"embedding": probe, "top_k": 5}).json()["faces"][0]["matches"]

    assert api.delete("/v1/collections/backup").status_code == 200
    body = r.content + b"\n{not json}\n" + json.dumps({**lines[0], "id": "zz"}).encode()
    res = api.post("/v1/collections/backup/import", content=body,
                   headers={"content-type": "application/x-ndjson"})
    assert res.status_code == 200, res.text
    doc = res.json()
    assert (doc["imported"], doc["skipped"], doc["failed"]) == (len(lines), 0, 2)
    assert [e["line"] for e in doc["errors"]] == [len(lines) + 2, len(lines) + 3]
    assert (doc["model"], doc["dim"]) == (lines[0]["model"], len(probe))
    after = api.post("/v1/collections/backup/identify",
                     json={"embedding": probe, "top_k": 5}).json()["faces"][0]["matches"]
    assert [(m["id"], m["person_id"], m["name"]) for m in after] == [
        (m["id"], m["person_id"], m["name"]) for m in before]
    back = [json.loads(x) for x in api.get("/v1/collections/backup/export").text.splitlines()]
    assert [{k: v for k, v in x.items() if k != "embedding"} for x in back] == [
        {k: v for k, v in x.items() if k != "embedding"} for x in lines]  # ids, times kept
    np.testing.assert_allclose([x["embedding"] for x in back],
                               [x["embedding"] for x in lines], atol=1e-6)

    again = api.post("/v1/collections/backup/import", content=r.content).json()
    assert (again["imported"], again["skipped"]) == (0, len(lines))
    assert api.get("/v1/collections/backup").json()["faces"] == len(lines)
    # into a collection bound to another model or dimension: refused before writing
    api.post("/v1/collections", json={"name": "backup-native", "model": "dlib-native"})
    error(api.post("/v1/collections/backup-native/import", content=r.content),
          409, "model_mismatch")
    short = json.dumps({**lines[0], "embedding": lines[0]["embedding"][:64]}).encode()
    error(api.post("/v1/collections/backup/import", content=short), 422, "validation_error")
    error(api.post("/v1/collections/backup/import", content=b"\n\n"), 422, "validation_error")
    error(api.get("/v1/collections/no-such/export"), 404, "collection_not_found")


def test_export_and_import_span_many_pages(api, vectors):
    """2,100 faces: the export reads three store pages, the import commits five chunks,
    and the collection comes back whole."""
    rng = np.random.default_rng(11)
    base = np.array(vectors["person07"][0])
    for i in range(0, 2100, 256):
        items = [{"embedding": (base + rng.normal(0, 0.05, len(base))).tolist(),
                  "person_id": f"m{j % 300:03d}"} for j in range(i, min(i + 256, 2100))]
        r = api.post("/v1/collections/many/faces:batch", json={"items": items})
        assert r.json()["created"] == len(items), r.text
    with api.stream("GET", "/v1/collections/many/export") as r:
        assert r.status_code == 200 and r.headers["x-facefleet-faces"] == "2100"
        lines = [json.loads(x) for x in r.iter_lines() if x]
    ids = [x["id"] for x in lines]
    assert len(ids) == 2100 == len(set(ids))
    listed = api.get("/v1/collections/many/faces", params={"limit": 1000}).json()
    assert [f["id"] for f in listed["faces"]] == ids[:1000]  # the export is in enrolment order

    assert api.delete("/v1/collections/many").status_code == 200
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # a streamed upload
    res = api.post("/v1/collections/many/import", content=chunks)
    assert res.status_code == 200, res.text
    assert (res.json()["lines"], res.json()["imported"]) == (2100, 2100)
    stats = api.get("/v1/collections/many").json()
    assert (stats["faces"], stats["persons"]) == (2100, 300)
    assert sum(stats["shard_sizes"]) == 2100  # the shards hold every imported face
