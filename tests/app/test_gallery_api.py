"""The gallery over HTTP: register, identify, forget, collections, durability."""

from __future__ import annotations

import time

import pytest
import ray
from ray import serve
from tests.app.photos import b64, identities

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def enrolled(api, faces) -> dict:
    """One photo per person of deepface/identities.csv in collection 'people'."""
    ids = {}
    for person, imgs in identities(faces).items():
        r = api.post("/v1/collections/people/faces",
                     json={"img": b64(imgs[0]), "person_id": person, "name": person.title(),
                           "labels": {"source": "identities.csv"}})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["person_id"] == person and body["collection"] == "people"
        assert body["box"]["w"] > 0 and body["created_at"]
        ids[person] = body["id"]
    return ids


def _identify(api, path, **kw):
    r = api.post("/v1/collections/people/identify", json={"img": b64(path), **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_identify_held_back_photos(api, faces, enrolled):
    hits = total = 0
    for person, imgs in identities(faces).items():
        for img in imgs[1:]:
            body = _identify(api, img, top_k=3)
            best = body["faces"][0]["matches"][0]
            ds = [m["distance"] for m in body["faces"][0]["matches"]]
            assert ds == sorted(ds)
            total += 1
            hits += best["person_id"] == person and best["match"]
    assert hits / total >= 0.9, f"{hits}/{total}"


def test_collection_stats_and_listing(api, enrolled):
    stats = api.get("/v1/collections/people").json()
    assert stats["faces"] == len(enrolled) == stats["persons"]
    assert sum(stats["shard_sizes"]) == len(enrolled) and len(stats["shard_sizes"]) >= 2
    names = [c["collection"] for c in api.get("/v1/collections").json()["collections"]]
    assert "people" in names


def test_person_and_face_records(api, enrolled):
    person = next(iter(enrolled))
    p = api.get(f"/v1/collections/people/persons/{person}").json()
    assert p["person_id"] == person and p["name"] == person.title()
    assert [f["face_id"] for f in p["faces"]] == [enrolled[person]]
    f = api.get(f"/v1/collections/people/faces/{enrolled[person]}").json()
    assert f["id"] == enrolled[person] and f["person_id"] == person


def test_idempotent_register(api, faces):
    body = {"img": b64(faces / "group/multiface.jpg"), "person_id": "crowd"}
    a = api.post("/v1/collections/idem/faces", json=body, headers={"Idempotency-Key": "k-1"})
    b = api.post("/v1/collections/idem/faces", json=body, headers={"Idempotency-Key": "k-1"})
    assert a.status_code == 201 and b.status_code == 200
    assert a.json()["id"] == b.json()["id"] and b.json()["replayed"] is True
    assert api.get("/v1/collections/idem").json()["faces"] == 1


def test_batch_reports_items(api, faces):
    items = [{"img": b64(faces / "group/multiface.jpg"), "person_id": "p1"},
             {"img": "not an image"},
             {"img": b64(faces / "dlib-boxes/dogs.jpg")},
             {"img": b64(faces / "deepface/img1.jpg"), "person_id": "p2"}]
    r = api.post("/v1/collections/batchy/faces:batch", json={"items": items,
                                                            "detector": "dlib-hog"})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["created"] == 2 and res["failed"] == 2
    codes = [x.get("error", {}).get("code") for x in res["results"]]
    assert codes == [None, "image_decode_error", "no_face_detected", None]
    assert api.get("/v1/collections/batchy").json()["faces"] == 2


def test_identify_per_person(api, faces):
    imgs = sorted((faces / "lfw-dev/images/Colin_Powell").glob("*.jpg"))[:4]
    for img in imgs[:3]:
        assert api.post("/v1/collections/perperson/faces",
                        json={"img": b64(img), "person_id": "colin"}).status_code == 201
    api.post("/v1/collections/perperson/faces",
             json={"img": b64(faces / "deepface/img1.jpg"), "person_id": "angelina"})
    faces_first = _identify_in(api, "perperson", imgs[3], top_k=3)
    assert [m["person_id"] for m in faces_first] == ["colin"] * 3
    persons = _identify_in(api, "perperson", imgs[3], top_k=3, per_person=True)
    assert [m["person_id"] for m in persons] == ["colin", "angelina"]
    assert persons[0]["distance"] == faces_first[0]["distance"]


def _identify_in(api, collection, path, **kw):
    r = api.post(f"/v1/collections/{collection}/identify", json={"img": b64(path), **kw})
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["matches"]


def test_create_and_drop_collection(api, faces):
    r = api.post("/v1/collections", json={"name": "dropme", "model": "dlib"})
    assert r.status_code == 201 and r.json()["model"] == "dlib" and r.json()["dim"] == 128
    api.post("/v1/collections/dropme/faces", json={"img": b64(faces / "deepface/img1.jpg")})
    assert api.get("/v1/collections/dropme").json()["faces"] == 1
    assert api.delete("/v1/collections/dropme").status_code == 200
    r = api.get("/v1/collections/dropme")
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    names = [c["collection"] for c in api.get("/v1/collections").json()["collections"]]
    assert "dropme" not in names


def test_forget_face_and_person(api, faces):
    img = b64(faces / "deepface/img2.jpg")
    fid = api.post("/v1/collections/forget/faces", json={"img": img, "person_id": "x"}).json()["id"]
    api.post("/v1/collections/forget/faces", json={"img": b64(faces / "deepface/img4.jpg"),
                                                   "person_id": "x"})
    assert api.delete(f"/v1/collections/forget/faces/{fid}").status_code == 204
    assert api.get(f"/v1/collections/forget/faces/{fid}").status_code == 404
    assert api.delete(f"/v1/collections/forget/faces/{fid}").status_code == 404
    gone = api.delete("/v1/collections/forget/persons/x").json()
    assert len(gone["deleted_faces"]) == 1
    body = api.post("/v1/collections/forget/identify", json={"img": img}).json()
    assert body["faces"][0]["matches"] == []


def test_gallery_errors(api, faces):
    img = b64(faces / "deepface/img1.jpg")
    r = api.post("/v1/collections/nope-never/identify", json={"img": img})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = api.post("/v1/collections/bad name!/faces", json={"img": img})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    api.post("/v1/collections/bound/faces", json={"img": img})
    r = api.post("/v1/collections/bound/faces", json={"img": img, "model": "dlib-native"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"
    r = api.post("/v1/collections/bound/identify", json={"img": img, "top_k": 0})
    assert r.status_code == 422


def _shards() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("gallery-")]


def test_killed_shard_keeps_every_acknowledged_face(api, faces, enrolled):
    victim = _shards()[0]
    ray.kill(ray.get_actor(victim, namespace="facefleet"), no_restart=False)
    for person, imgs in list(identities(faces).items())[:4]:
        best = _identify(api, imgs[0])["faces"][0]["matches"][0]
        assert best["person_id"] == person and best["distance"] < 0.02
    assert sum(api.get("/v1/collections/people").json()["shard_sizes"]) == len(enrolled)


def test_app_restart_rebuilds_from_the_store(service, api, faces, enrolled):
    person = sorted(enrolled)[-1]
    assert api.delete(f"/v1/collections/people/faces/{enrolled[person]}").status_code == 204
    serve.delete("facefleet")
    for name in _shards():  # the index must come back from the store, not from memory
        ray.kill(ray.get_actor(name, namespace="facefleet"), no_restart=True)
    time.sleep(1)
    service.redeploy(service.config)
    stats = api.get("/v1/collections/people").json()
    assert stats["faces"] == len(enrolled) - 1 == sum(stats["shard_sizes"])
    imgs = identities(faces)
    for p, paths in imgs.items():
        best = _identify(api, paths[0])["faces"][0]["matches"]
        if p == person:  # forgotten: never comes back
            assert all(m["id"] != enrolled[person] for m in best)
        else:
            assert best[0]["person_id"] == p
