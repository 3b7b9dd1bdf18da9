"""People over HTTP: merging persons under identify traffic, strangers enrolled by
identify (``enrol_unknown``), and a collection's settings; real photos, the real
service."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.app.photos import b64, identities

pytestmark = pytest.mark.app

#: index.sync_interval_s of the test service (the default): how stale a replica may be
SYNC_S = 2.0


def _identify(api, collection: str, path, **kw) -> dict:
    r = api.post(f"/v1/collections/{collection}/identify", json={"img": b64(path), **kw})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def people(faces) -> dict:
    return identities(faces)


def test_merge_under_identify_traffic(api, people):
    """Two persons of one man are merged while identify runs: identify answers the
    merged person within the sync interval, and no face is lost."""
    photos = people["person01"]
    for i, pid in enumerate(["half-a", "half-a", "half-b", "half-b"]):
        r = api.post("/v1/collections/merge/faces", json={"img": b64(photos[i]),
                                                          "person_id": pid})
        assert r.status_code == 201, r.text
    for other in ("person02", "person03"):
        r = api.post("/v1/collections/merge/faces",
                     json={"img": b64(people[other][0]), "person_id": other})
        assert r.status_code == 201, r.text
    before = api.get("/v1/collections/merge").json()
    probe = photos[5]
    seen: list[tuple[float, str]] = []
    stop = threading.Event()
    failures: list[str] = []

    def traffic() -> None:
        while not stop.is_set():
            r = api.post("/v1/collections/merge/identify", json={"img": b64(probe), "top_k": 1})
            if r.status_code != 200:
                failures.append(r.text)
                return
            seen.append((time.monotonic(), r.json()["faces"][0]["matches"][0]["person_id"]))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        while not seen and t.is_alive():
            time.sleep(0.05)
        r = api.post("/v1/collections/merge/persons/person01:merge",
                     json={"from": ["half-a", "half-b"]})
        merged_at = time.monotonic()
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["person_id"] == "person01" and out["merged"] == ["half-a", "half-b"]
        assert len(out["moved_faces"]) == 4 and len(out["faces"]) == 4
        time.sleep(SYNC_S + 1.0)
    finally:
        stop.set()
        t.join(60)
    assert not failures, failures
    assert seen[0][1] in ("half-a", "half-b")
    late = [pid for at, pid in seen if at > merged_at + SYNC_S]
    assert late and set(late) == {"person01"}, seen
    after = api.get("/v1/collections/merge").json()
    assert after["faces"] == before["faces"] == 6
    assert after["persons"] == before["persons"] - 1
    for gone in ("half-a", "half-b"):
        r = api.get(f"/v1/collections/merge/persons/{gone}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # (its audit entry: tests/index/test_merge.py; /v1/audit needs API keys)
    # a source that does not exist: 404 and nothing moves; a bad body: 422
    r = api.post("/v1/collections/merge/persons/person01:merge", json={"from": ["person02",
                                                                             "nobody"]})
    assert r.status_code == 404, r.text
    assert len(api.get("/v1/collections/merge/persons/person02").json()["faces"]) == 1
    r = api.post("/v1/collections/merge/persons/person01:merge", json={"from": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_a_stranger_seen_twice_gets_one_id(api, people):
    """Two photos of a man not in the gallery, one after the other: the first answer
    enrols him, the second matches the id the first created."""
    for known in ("person01", "person02"):
        r = api.post("/v1/collections/door/faces",
                     json={"img": b64(people[known][0]), "person_id": known})
        assert r.status_code == 201, r.text
    stranger = people["person04"]
    first = _identify(api, "door", stranger[0], enrol_unknown=True)
    face = first["faces"][0]
    assert not any(m["match"] for m in face["matches"])
    new = face["enrolled"]
    assert new and new["person_id"] not in ("person01", "person02")
    second = _identify(api, "door", stranger[1], enrol_unknown=True)
    face2 = second["faces"][0]
    best = face2["matches"][0]
    assert best["match"] and best["person_id"] == new["person_id"], face2
    assert face2["enrolled"] is None  # matched: nothing enrolled
    # a known face is never enrolled
    known = _identify(api, "door", people["person01"][1], enrol_unknown=True)["faces"][0]
    assert known["enrolled"] is None and known["matches"][0]["person_id"] == "person01"
    person = api.get(f"/v1/collections/door/persons/{new['person_id']}").json()
    assert [f["face_id"] for f in person["faces"]] == [new["face_id"]]
    assert person["name"] is None
    # without the flag, identify enrols nothing
    plain = _identify(api, "door", people["person05"][0])["faces"][0]
    assert plain["enrolled"] is None
    # an embedding probe cannot enrol: 422
    r = api.post("/v1/collections/door/identify", json={"embedding": [0.1] * 128,
                                                        "enrol_unknown": True})
    assert r.status_code == 422, r.text


def test_collection_setting_enrols_strangers(api, people):
    r = api.post("/v1/collections", json={"name": "gate", "enrol_unknown": True})
    assert r.status_code == 201 and r.json()["enrol_unknown"] is True, r.text
    first = _identify(api, "gate", people["person10"][0])["faces"][0]
    assert first["enrolled"] is not None
    again = _identify(api, "gate", people["person10"][1])["faces"][0]
    assert again["matches"][0]["person_id"] == first["enrolled"]["person_id"]
    # a request may still say no
    other = _identify(api, "gate", people["person11"][0], enrol_unknown=False)["faces"][0]
    assert other["enrolled"] is None
    r = api.patch("/v1/collections/gate", json={"enrol_unknown": False})
    assert r.status_code == 200 and r.json()["enrol_unknown"] is False, r.text
    assert api.get("/v1/collections/gate").json()["enrol_unknown"] is False
    r = api.patch("/v1/collections/gate", json={})
    assert r.status_code == 422, r.text
    r = api.patch("/v1/collections/nowhere", json={"enrol_unknown": True})
    assert r.status_code == 404, r.text


def test_copy_a_collection_by_export_and_import(api, people):
    """An export imported into another collection of the same service: new face ids,
    the old-to-new mapping answered, identify in the copy finds the same persons."""
    for p in ("person06", "person07"):
        r = api.post("/v1/collections/orig/faces", json={"img": b64(people[p][0]),
                                                         "person_id": p})
        assert r.status_code == 201, r.text
    body = api.get("/v1/collections/orig/export").content
    r = api.post("/v1/collections/orig-copy/import", content=body,
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    out = r.json()
    held = [f["face_id"] for f in api.get("/v1/collections/orig/faces").json()["faces"]]
    assert sorted(out["copied"]) == sorted(held) and out["elsewhere"] == 0
    assert out["imported"] == 2 and not set(out["copied"].values()) & set(held)
    best = _identify(api, "orig-copy", people["person06"][1])["faces"][0]["matches"][0]
    assert best["person_id"] == "person06" and best["face_id"] in out["copied"].values()
    again = api.post("/v1/collections/orig-copy/import", content=body,
                     headers={"Content-Type": "application/x-ndjson"}).json()
    assert again["imported"] == 0 and again["skipped"] == 2 and again["copied"] == {}


def test_face_thumbnails(api, people):
    """Enrolment from a photo keeps a 112 px JPEG of a few KB, served under the read
    scope, carried by export, deleted with the face; none when the collection keeps
    none, or for a face enrolled by embedding."""
    import cv2
    import numpy as np

    r = api.post("/v1/collections/thumbs/faces", json={"img": b64(people["person08"][0]),
                                                       "person_id": "person08"})
    assert r.status_code == 201, r.text
    face_id = r.json()["face_id"]
    r = api.get(f"/v1/collections/thumbs/faces/{face_id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert 1000 < len(r.content) < 16000
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (112, 112, 3) and img.std() > 10  # a picture, not a blank
    line = api.get("/v1/collections/thumbs/export").text.splitlines()[0]
    assert '"thumbnail":"/9j/' in line  # base64 of a JPEG
    # a stranger enrolled by identify gets one too
    new = _identify(api, "thumbs", people["person09"][0], enrol_unknown=True)
    stranger = new["faces"][0]["enrolled"]["face_id"]
    assert api.get(f"/v1/collections/thumbs/faces/{stranger}/thumbnail").status_code == 200
    assert api.delete(f"/v1/collections/thumbs/faces/{face_id}").status_code == 204
    r = api.get(f"/v1/collections/thumbs/faces/{face_id}/thumbnail")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # a collection that keeps none
    assert api.post("/v1/collections", json={"name": "nothumbs",
                                             "thumbnails": False}).status_code == 201
    r = api.post("/v1/collections/nothumbs/faces", json={"img": b64(people["person08"][1])})
    assert r.status_code == 201, r.text
    r = api.get(f"/v1/collections/nothumbs/faces/{r.json()['face_id']}/thumbnail")
    assert r.status_code == 404
    assert '"thumbnail"' not in api.get("/v1/collections/nothumbs/export").text


def test_client_and_cli_merge(service, api):
    """``Client.merge`` and ``facefleet merge``, against the running service."""
    import json

    from click.testing import CliRunner

    from facefleet import Client
    from facefleet.cli import main
    from facefleet.errors import NotFound

    assert api.post("/v1/collections", json={"name": "cli-merge",
                                             "model": "dlib"}).status_code == 201
    x = np.random.default_rng(4).normal(size=(3, 128)).astype(np.float32)
    for i, pid in enumerate(["m1", "m2", "m3"]):
        r = api.post("/v1/collections/cli-merge/faces",
                     json={"embedding": x[i].tolist(), "person_id": pid})
        assert r.status_code == 201, r.text
    with Client(service.base_url) as client:
        p = client.merge("cli-merge", "m1", ["m2"])
        assert p.person_id == "m1" and len(p.faces) == 2 and p.raw["merged"] == ["m2"]
        with pytest.raises(NotFound):
            client.merge("cli-merge", "m1", ["m2"])  # gone now
    res = CliRunner().invoke(main, ["merge", "m1", "m3", "-c", "cli-merge", "--json"],
                             env={"FACEFLEET_URL": service.base_url}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["person_id"] == "m1" and len(out["faces"]) == 3 and out["merged"] == ["m3"]


def test_client_strangers_and_thumbnails(service, api, people):
    """``Client.identify(enrol_unknown=True)`` and ``Client.thumbnail``."""
    from facefleet import Client
    from facefleet.errors import NotFound

    assert api.post("/v1/collections", json={"name": "client-door"}).status_code == 201
    with Client(service.base_url) as client:
        first = client.identify("client-door", people["person12"][0], enrol_unknown=True)
        new = first.faces[0].enrolled
        assert new is not None and first.faces[0].best is None
        second = client.identify("client-door", people["person12"][1], enrol_unknown=True)
        assert second.faces[0].best.person_id == new["person_id"]
        assert second.faces[0].enrolled is None
        jpeg = client.thumbnail("client-door", new["face_id"])
        assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) < 16000
        with pytest.raises(NotFound):
            client.thumbnail("client-door", "0" * 32)
