"""Clusters of a collection's unknown faces through the gallery service (index/gallery/
clusters.py): unnamed faces grouped, named people suggested, re-runs incremental until
a face is forgotten, large collections as jobs whose rows a forget deletes."""

from __future__ import annotations

import time

import pytest

from index.gallery import InProcessGallery
from index.store import open_store
from tests.index.lfw_faces import ALONE, PEOPLE, Faces, embedded_faces

MODEL = "dlib+mfn512"


@pytest.fixture(scope="module")
def faces() -> Faces:
    return embedded_faces()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gallery(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    store = open_store(request.param, url, tmp_path / "data")
    g = InProcessGallery(store, nshards=2)
    yield g
    g.close()
    store.close()


def enrol(g, faces, rows, **meta):
    dim = faces.x.shape[1]
    items = [{"embedding": faces.x[i], **meta} for i in rows]
    return [f["face_id"] for f in g.register("photos", MODEL, dim, items,
                                            create_collection=True)["faces"]]


def test_unknown_faces_cluster_and_the_named_person_is_suggested(gallery, faces):
    lopez = faces.of("Jennifer_Lopez")
    named = enrol(gallery, faces, lopez[:3], person_id="jlo", name="Jennifer Lopez")
    others = [i for i in range(len(faces.x)) if i not in set(lopez[:3])]
    # the newest face of each person waits for the re-run
    last = {name: faces.of(name)[-1] for name in PEOPLE}
    first_batch = [i for i in others if i not in set(last.values())]
    face_of = dict(zip(first_batch, enrol(gallery, faces, first_batch), strict=True))

    out = gallery.cluster("photos", faces.t)
    assert out["scope"] == "unnamed" and out["faces"] == len(first_batch)
    assert not out["incremental"] and out["unclustered"] == len(ALONE)
    by_face = {f: c for c in out["clusters"] for f in c["face_ids"]}
    for name in PEOPLE:
        mine = [face_of[i] for i in faces.of(name) if i in face_of]
        cluster = by_face[mine[0]]
        assert sorted(cluster["face_ids"]) == sorted(mine), name
        assert cluster["cluster_id"] == mine[0]  # the earliest enrolled
        if name == "Jennifer_Lopez":  # her other photos: the named person is suggested
            assert cluster["suggested"]["person_id"] == "jlo"
            assert cluster["suggested"]["name"] == "Jennifer Lopez"
            assert cluster["suggested"]["distance"] < faces.t
        else:
            assert cluster["suggested"] is None
    assert not set(named) & set(by_face)  # named faces are out of the default scope

    # new faces: the re-run extends the last one
    added = dict(zip(last.values(), enrol(gallery, faces, list(last.values())), strict=True))
    again = gallery.cluster("photos", faces.t)
    assert again["incremental"] and again["faces"] == len(first_batch) + len(PEOPLE)
    by_face = {f: c for c in again["clusters"] for f in c["face_ids"]}
    for name, row in last.items():
        mine = [face_of[i] for i in faces.of(name) if i in face_of]
        assert by_face[added[row]]["cluster_id"] == by_face[mine[0]]["cluster_id"] == mine[0]

    # a forget: the next run is a full one, and "all" includes the named faces
    gallery.delete_face("photos", added[last["Hans_Blix"]])
    full = gallery.cluster("photos", faces.t)
    assert not full["incremental"] and full["faces"] == again["faces"] - 1
    every = gallery.cluster("photos", faces.t, scope="all")
    assert every["faces"] == full["faces"] + len(named)
    lopez_cluster = next(c for c in every["clusters"] if set(named) <= set(c["face_ids"]))
    assert "jlo" in lopez_cluster["person_ids"]


def test_a_large_collection_runs_as_a_job_and_a_forget_deletes_it(gallery, faces):
    gallery.service.clusters.sync_max_faces = 0  # every run is a job
    ids = enrol(gallery, faces, range(len(faces.x)))
    started = gallery.cluster("photos", faces.t)
    assert started["status"] == "running" and started["faces"] == len(ids)
    deadline = time.monotonic() + 60
    while (job := gallery.cluster_job("photos", started["job_id"]))["status"] == "running":
        assert time.monotonic() < deadline
        assert 0.0 <= job["progress"] <= 1.0
        time.sleep(0.05)
    assert job["status"] == "done" and job["progress"] == 1.0 and job["error"] is None
    assert len(job["result"]["clusters"]) == len(PEOPLE)
    assert job["result"]["unclustered"] == len(ALONE)
    gallery.delete_face("photos", ids[0])
    with pytest.raises(Exception, match="does not exist"):
        gallery.cluster_job("photos", started["job_id"])


def test_bad_requests_are_typed(gallery, faces):
    enrol(gallery, faces, [0])
    with pytest.raises(Exception, match="scope is one of"):
        gallery.cluster("photos", faces.t, scope="everyone")
    with pytest.raises(Exception, match="does not exist"):
        gallery.cluster("nowhere", faces.t)
    with pytest.raises(Exception, match="does not exist"):
        gallery.cluster_job("photos", "0123456789abcdef")
