"""Templates sealed at rest through the running service: the app redeployed with a
master key enrols and identifies real photos, its shards rebuild from sealed rows after
they are killed, the data directory holds no template bytes, collections made before the
key stay readable, and a drop leaves no data key behind."""

from __future__ import annotations

import base64
import copy
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from tests.app.photos import b64, identities

pytestmark = pytest.mark.app
COLL = "sealed"
PLAIN = "plain-before-key"
PIECE = 64


def _shards() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("gallery-")]


@pytest.fixture(scope="module")
def sealed(service, tmp_path_factory, faces):
    """The app redeployed with a master key file (same data directory), then restored;
    a plain collection is made first."""
    original = service.config
    photo = sorted((faces / "lfw-dev/images/Colin_Powell").glob("*.jpg"))[0]
    r = service.client.post(f"/v1/collections/{PLAIN}/faces",
                            json={"img": b64(photo), "person_id": "colin"})
    assert r.status_code == 201, r.text
    key = tmp_path_factory.mktemp("keys") / "master.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    key.chmod(0o600)
    config = copy.deepcopy(original)
    config["applications"][0]["args"]["settings"]["encryption"] = {
        "master_key_file": str(key)}
    before = set(_shards())
    service.redeploy(config)
    try:
        yield service
    finally:
        service.client.delete(f"/v1/collections/{COLL}")
        service.client.delete(f"/v1/collections/{PLAIN}")
        service.redeploy(original)
        for name in set(_shards()) - before:  # the sealed configuration's own shards
            ray.kill(ray.get_actor(name, namespace="facefleet"), no_restart=True)


def mirrored(path: Path) -> str:
    import cv2

    ok, jpg = cv2.imencode(".jpg", cv2.flip(cv2.imread(str(path)), 1))
    assert ok
    return base64.b64encode(jpg.tobytes()).decode()


def _identify(api, path):
    r = api.post(f"/v1/collections/{COLL}/identify", json={"img": b64(path)})
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["matches"][0]


def test_sealed_gallery_serves_and_rebuilds(sealed, faces):
    api = sealed.client
    assert api.get("/ready").json()["ready"] is True
    people = dict(list(identities(faces).items())[:3])
    for person, imgs in people.items():
        # a mirrored photo: a template no other test enrols, so the scan below can only
        # find it where this test put it
        r = api.post(f"/v1/collections/{COLL}/faces",
                     json={"img": mirrored(imgs[0]), "person_id": person})
        assert r.status_code == 201, r.text
    for person, imgs in people.items():
        assert _identify(api, imgs[1])["person_id"] == person

    data_dir = Path(sealed.config["applications"][0]["args"]["settings"]["data_dir"])
    db = sqlite3.connect(f"file:{data_dir / 'gallery.sqlite3'}?mode=ro", uri=True)
    try:
        cid, wrapped = db.execute("SELECT id, data_key FROM collections WHERE name = ?",
                                  (COLL,)).fetchone()
        blobs = [r[0] for r in db.execute("SELECT embedding FROM faces WHERE collection_id = ?",
                                          (cid,))]
    finally:
        db.close()
    assert wrapped is not None and blobs and all(b[0] == 1 for b in blobs)
    # the export answers plain vectors; none of their bytes is anywhere in the data dir
    lines = [json.loads(x) for x in api.get(f"/v1/collections/{COLL}/export").text.splitlines()]
    assert len(lines) == 3
    raw = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
    for line in lines:
        v = np.asarray(line["embedding"], dtype="<f4").tobytes()
        assert not any(v[i:i + PIECE] in raw for i in range(0, len(v) - PIECE + 1, PIECE))

    # the shards come back from the sealed rows
    for name in _shards():
        ray.kill(ray.get_actor(name, namespace="facefleet"), no_restart=False)
    deadline = time.monotonic() + 120
    while True:
        r = api.post(f"/v1/collections/{COLL}/identify",
                     json={"img": b64(next(iter(people.values()))[1])})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    for person, imgs in people.items():
        assert _identify(api, imgs[1])["person_id"] == person

    # a collection made before the key (plain) still answers
    photo = sorted((faces / "lfw-dev/images/Colin_Powell").glob("*.jpg"))[1]
    r = api.post(f"/v1/collections/{PLAIN}/identify", json={"img": b64(photo)})
    assert r.status_code == 200 and r.json()["faces"][0]["matches"][0]["person_id"] == "colin"
    r = api.delete(f"/v1/collections/{COLL}")
    assert r.status_code == 200, r.text
    db = sqlite3.connect(f"file:{data_dir / 'gallery.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM collections WHERE id = ?", (cid,)).fetchone()[0] == 0
    finally:
        db.close()
