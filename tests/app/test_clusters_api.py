"""Unknown faces over HTTP: real LFW photos enrolled without person ids cluster into
their people, a named person is suggested for her other photos, a run asked as a job
answers 202 with a Location that ends in the same result, and the client and the
command line get the same clusters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facefleet import Client
from tests.app.photos import b64

pytestmark = pytest.mark.app
COLL = "unknowns"
PEOPLE = ["Hans_Blix", "John_Bolton", "Ricardo_Lagos"]
NAMED = "Jennifer_Lopez"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def enrolled(api, faces):
    photos = {p: sorted((faces / "lfw-dev/images" / p).glob("*.jpg"))[:4] for p in PEOPLE}
    lopez = sorted((faces / "lfw-dev/images" / NAMED).glob("*.jpg"))[:6]
    for photo in lopez[:3]:  # a named person...
        r = api.post(f"/v1/collections/{COLL}/faces",
                     json={"img": b64(photo), "person_id": "jlo", "name": "Jennifer Lopez"})
        assert r.status_code == 201, r.text
    ids: dict[str, list[str]] = {}
    for person, paths in {**photos, NAMED: lopez[3:]}.items():  # ...and unknown faces
        for photo in paths:
            r = api.post(f"/v1/collections/{COLL}/faces", json={"img": b64(photo)})
            assert r.status_code == 201, r.text
            ids.setdefault(person, []).append(r.json()["id"])
    yield ids
    api.delete(f"/v1/collections/{COLL}")


def check(out: dict, ids: dict[str, list[str]]) -> None:
    assert out["scope"] == "unnamed" and out["faces"] == sum(map(len, ids.values()))
    by_face = {f: c for c in out["clusters"] for f in c["face_ids"]}
    for person, mine in ids.items():
        cluster = by_face[mine[0]]
        assert sorted(cluster["face_ids"]) == sorted(mine), person
        assert cluster["cluster_id"] == mine[0]  # the earliest enrolled face
        if person == NAMED:
            assert cluster["suggested"]["person_id"] == "jlo"
            assert cluster["suggested"]["name"] == "Jennifer Lopez"
        else:
            assert cluster["suggested"] is None


def test_clusters_at_once(api, enrolled):
    r = api.post(f"/v1/collections/{COLL}/clusters")  # no body: the defaults
    assert r.status_code == 200, r.text
    check(r.json(), enrolled)


def test_clusters_as_a_job(api, enrolled):
    r = api.post(f"/v1/collections/{COLL}/clusters", json={"job": True})
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert location == f"/v1/collections/{COLL}/clusters/jobs/{r.json()['job_id']}"
    deadline = time.monotonic() + 60
    while (job := api.get(location).json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["status"] == "done" and job["progress"] == 1.0, job
    check(job["result"], enrolled)


def test_client_and_command_line(service, enrolled):
    with Client(service.base_url) as client:
        check(client.cluster(COLL), enrolled)
    run = subprocess.run([sys.executable, "-m", "facefleet.cli", "cluster", "-c", COLL,
                          "--json", "--url", service.base_url], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    check(json.loads(run.stdout), enrolled)


def test_bad_cluster_requests_are_typed(api, enrolled):
    r = api.post(f"/v1/collections/{COLL}/clusters", json={"scope": "everyone"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = api.post("/v1/collections/no-such-collection/clusters")
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = api.get(f"/v1/collections/{COLL}/clusters/jobs/0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
