"""Answers that say what they mean, over HTTP on the real service: a created
collection is reported, a face's id has both names everywhere, verify without a
face has no distance, and a body sent in the wrong form is told what to send."""

from __future__ import annotations

import json

import pytest
from tests.app.photos import b64

pytestmark = pytest.mark.app


def test_a_write_that_creates_its_collection_says_so(api, faces):
    photo = (faces / "deepface/img1.jpg").read_bytes()
    first = api.post("/v1/collections/Answers/faces", files={"img": ("a.jpg", photo)},
                     data={"person_id": "angelina"})
    assert first.status_code == 201, first.text
    assert first.json()["collection_created"] is True
    again = api.post("/v1/collections/Answers/faces", files={"img": ("a.jpg", photo)},
                     data={"person_id": "angelina"})
    assert again.status_code == 201 and again.json()["collection_created"] is False
    batch = api.post("/v1/collections/answers-batch/faces:batch",
                     json={"items": [{"img": b64(faces / "deepface/img2.jpg")}]})
    assert batch.status_code == 200, batch.text
    assert batch.json()["collection_created"] is True and batch.json()["created"] == 1
    batch2 = api.post("/v1/collections/answers-batch/faces:batch",
                      json={"items": [{"img": b64(faces / "deepface/img3.jpg")}]})
    assert batch2.json()["collection_created"] is False


def test_a_face_id_has_both_names_in_every_answer(api, faces):
    enrol = api.post("/v1/collections/answers-ids/faces",
                     json={"img": b64(faces / "deepface/img1.jpg"), "person_id": "p1"}).json()
    fid = enrol["id"]
    assert enrol["face_id"] == fid
    assert api.get(f"/v1/collections/answers-ids/faces/{fid}").json()["face_id"] == fid
    listed = api.get("/v1/collections/answers-ids/faces").json()["faces"][0]
    assert listed["id"] == listed["face_id"] == fid
    person_face = api.get("/v1/collections/answers-ids/persons/p1").json()["faces"][0]
    assert person_face["id"] == person_face["face_id"] == fid
    match = api.post("/v1/collections/answers-ids/identify",
                     json={"img": b64(faces / "deepface/img2.jpg")}).json()
    hit = match["faces"][0]["matches"][0]
    assert hit["id"] == hit["face_id"] == fid


def test_verify_without_a_face_has_no_distance(api, faces):
    body = {"img1": b64(faces / "deepface/img1.jpg"), "img2": b64(faces / "dlib-boxes/dogs.jpg")}
    strict = api.post("/v1/verify", json=body)
    assert strict.status_code == 422 and strict.json()["error"]["code"] == "no_face_detected"
    lax = api.post("/v1/verify", json={**body, "enforce_detection": False})
    assert lax.status_code == 200, lax.text
    out = lax.json()
    assert out["verified"] is False and out["distance"] is None
    assert out["no_face_in"] == ["img2"] and set(out["faces"]) == {"img1"}


def test_body_form_errors_say_what_to_send(api, faces):
    photo = (faces / "deepface/img1.jpg").read_bytes()
    # curl -d '{...}' without a content type: read as the JSON it is
    as_form = api.post("/v1/detect", content=json.dumps({"img": b64(faces / "deepface/img1.jpg")}),
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert as_form.status_code == 200, as_form.text[:300]
    raw = api.post("/v1/detect", content=photo, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 422 and len(raw.content) < 2000
    message = raw.json()["error"]["message"]
    assert "multipart/form-data" in message and "application/json" in message
