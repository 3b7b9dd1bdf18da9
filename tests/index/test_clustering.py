"""Clustering unknown faces (``index.clustering``) on real photos.

Five LFW people with 7-8 photos each and five people with one photo, embedded
in process with the default model exactly as the service embeds an enrolment
(default detector, the largest face of each photo); clustered at that model's
identify threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

from index.clustering import (CUT_FACTOR, FaceClusterer, NamedPeople, cluster_faces,
                              suggest)
from tests.index.lfw_faces import ALONE, PEOPLE, Faces, embedded_faces


@pytest.fixture(scope="module")
def faces() -> Faces:
    return embedded_faces()


def partition(clusters: list[list[int]], people: np.ndarray) -> set[frozenset[str]]:
    """Each cluster as the set of the people in it (one name: a pure cluster)."""
    return {frozenset(people[c].tolist()) for c in clusters}


def test_same_person_together_different_people_apart(faces):
    res = cluster_faces(faces.x, faces.t)
    for c in res.clusters:  # no cluster mixes two people
        assert len(set(faces.people[c])) == 1, faces.people[c]
    for name in PEOPLE:  # every photo of each person in one cluster of their own
        assert sorted(faces.of(name).tolist()) in res.clusters, name
    assert len(res.clusters) == len(PEOPLE)
    # the people with one photo stay alone
    assert sorted(faces.people[res.unclustered].tolist()) == ALONE
    assert (res.labels[res.unclustered] < 0).all()
    ids = [f"face-{i}" for i in range(len(faces.x))]
    named, alone = res.ids(ids)
    assert named[0] == [ids[i] for i in res.clusters[0]] and len(alone) == len(ALONE)


def test_incremental_equals_a_full_run(faces):
    """Half the faces (every other photo) clustered, then the other half added:
    the same clusters as one full run over the faces in that order."""
    first = np.arange(len(faces.x)) % 2 == 0
    order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])
    c = FaceClusterer(faces.t)
    before = c.fit(faces.x[first])
    assert len(before.clusters) == len(PEOPLE)  # 3-4 photos of each in the first half
    inc = c.extend(faces.x[~first])
    full = cluster_faces(faces.x[order], faces.t)
    assert inc.clusters == full.clusters and inc.unclustered == full.unclustered
    assert partition(inc.clusters, faces.people[order]) == {frozenset([n]) for n in PEOPLE}
    # the running sums the next extension uses are those of the clusters' members
    for members in inc.clusters:
        got = np.flatnonzero(c.labels == c.labels[members[0]])
        assert got.tolist() == members
        assert np.allclose(c.sums[c.labels[members[0]]], c.x[members].sum(axis=0), atol=1e-4)
        assert c.counts[c.labels[members[0]]] == len(members)


def test_extension_attaches_new_faces_and_forms_new_clusters(faces):
    """A person seen before gets the new photo into the existing cluster; a person
    first seen in the new faces forms a cluster of the new faces only."""
    blix, lopez = faces.of("Hans_Blix"), faces.of("Jennifer_Lopez")
    old = np.setdiff1d(np.arange(len(faces.x)), np.concatenate([blix[-1:], lopez]))
    c = FaceClusterer(faces.t)
    c.fit(faces.x[old])
    blix_label = c.labels[np.searchsorted(old, blix[0])]
    res = c.extend(faces.x[np.concatenate([blix[-1:], lopez])])
    n = len(old)
    assert res.labels[n] == blix_label  # the new Blix photo joined Blix's cluster
    lopez_rows = list(range(n + 1, n + 1 + len(lopez)))
    assert lopez_rows in res.clusters  # Lopez's photos: a new cluster of their own


def test_large_components_split_by_the_sparse_linkage(faces):
    """Components above ``max_dense`` go through scikit-learn's average linkage
    over the graph edges: on these faces, the same clusters as the dense one."""
    dense = cluster_faces(faces.x, faces.t)
    sparse = cluster_faces(faces.x, faces.t, max_dense=2)
    assert sparse.clusters == dense.clusters


def test_suggest_finds_the_named_person(faces):
    """Three people named in the gallery with half their photos; a cluster of the
    other half of one of them is suggested that person, a cluster of someone
    never named gets no suggestion."""
    named_people = PEOPLE[:3]
    named_rows = np.concatenate([faces.of(n)[::2] for n in named_people])
    gallery = NamedPeople(faces.x[named_rows], [f"id-{p}" for p in faces.people[named_rows]])
    for name in named_people:
        cluster = faces.x[faces.of(name)[1::2]]
        s = gallery.suggest(cluster, faces.t)
        assert s is not None and s.person_id == f"id-{name}" and 0 <= s.distance <= faces.t
        # the functional form answers the same
        assert suggest(cluster, faces.x[named_rows], [f"id-{p}" for p in
                                                      faces.people[named_rows]], faces.t) == s
    for name in PEOPLE[3:]:
        assert gallery.suggest(faces.x[faces.of(name)], faces.t) is None
    assert NamedPeople(faces.x[:0], []).suggest(faces.x[:2], faces.t) is None


def test_bad_input_is_refused(faces):
    with pytest.raises(ValueError, match="L2-normalised"):
        cluster_faces(faces.x * 2, faces.t)
    with pytest.raises(ValueError, match="2-d"):
        cluster_faces(faces.x[0], faces.t)
    with pytest.raises(ValueError, match="threshold"):
        cluster_faces(faces.x, 0.0)
    c = FaceClusterer(faces.t)
    c.fit(faces.x)
    with pytest.raises(ValueError, match="-d"):
        c.extend(faces.x[:, :64] / np.linalg.norm(faces.x[:, :64], axis=1, keepdims=True))
    with pytest.raises(ValueError, match="person ids"):
        NamedPeople(faces.x[:3], ["a"])
    assert CUT_FACTOR >= 1.0 and c.cut == pytest.approx(faces.t * CUT_FACTOR)
    empty = cluster_faces(faces.x[:0], faces.t)
    assert empty.clusters == [] and empty.unclustered == []
