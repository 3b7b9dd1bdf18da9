"""Clustering of unit face vectors into candidate people (plain Python, no Ray).

Method (chosen on LFW by ``bench.clustering``, where it is compared with DBSCAN,
HDBSCAN and Chinese whispers on the same vectors):

1. a kNN graph (FAISS: exact up to ``exact_below`` vectors, IVF above) keeping
   only the edges within ``t``: the identify threshold of the model times
   ``CUT_FACTOR`` (1.02, see there);
2. its connected components (SciPy): the candidate groups. A component is what
   single linkage (or DBSCAN with ``min_samples`` 2) at ``t`` would call one
   person, and so it can chain two look-alikes through a few in-between faces;
3. each component split again by average linkage (UPGMA, SciPy) cut at the same
   ``t``: two groups stay together only when their faces are, *on average*,
   within (about) the distance identify uses to say "same person". This is what removes
   the chained merges (false merges are what users of photo apps hate most). A
   component too large for a dense distance matrix is split by scikit-learn's
   average linkage over its graph edges instead.
4. groups of at least ``min_size`` faces are clusters; the rest are unclustered.

Incremental (``FaceClusterer.extend``), after Immich's approach: each new face
joins the existing cluster at the smallest average distance (1 - face . mean of
the cluster, kept as a running sum per cluster) among the clusters of its
neighbours, when that distance is within ``t``; the new faces left over are
clustered, with the unclustered old faces in their neighbourhood, by steps
2-4. Existing clusters are neither split nor merged by an extension, so its
cost follows the new faces, not the collection; a full ``fit`` now and then
(the job behind the endpoint) revisits them.

``NamedPeople.suggest`` answers the nearest named person of a cluster within
the identify threshold itself, by the same average distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist

UNCLUSTERED = -1
#: The cut of the clustering, relative to the identify threshold. An average over
#: many pairs of one person varies less than one pair, so a cut 2% above the 1:N
#: threshold keeps precision: on LFW dev (bench.clustering) it raises BCubed F from
#: 0.9819 (cut at the threshold) to 0.9838, pairwise precision 0.9827 -> 0.9810;
#: at 1.03 pairwise precision falls under 0.98. Chosen on the same photos the
#: bench reports, so read that gain as an upper bound.
CUT_FACTOR = 1.02


@dataclass(frozen=True)
class ClusterResult:
    """Clusters as lists of row indices (largest first, rows ascending), the rows
    left unclustered, and per row its cluster number (``UNCLUSTERED``: none)."""

    clusters: list[list[int]]
    unclustered: list[int]
    labels: np.ndarray

    def ids(self, ids: Sequence[Any]) -> tuple[list[list[Any]], list[Any]]:
        """The clusters and the unclustered rows as the caller's ids."""
        return [[ids[i] for i in c] for c in self.clusters], [ids[i] for i in self.unclustered]

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClusterResult:
        labels = np.asarray(labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        cut = np.flatnonzero(np.diff(labels[order])) + 1
        groups = [g for g in np.split(order, cut) if len(g) and labels[g[0]] != UNCLUSTERED]
        groups.sort(key=lambda g: (-len(g), g[0]))
        return cls([g.tolist() for g in groups],
                   np.flatnonzero(labels == UNCLUSTERED).tolist(), labels)


@dataclass(frozen=True)
class Suggestion:
    person_id: Any
    distance: float


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array, not {x.ndim}-d")
    if len(x) and not np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-3):
        raise ValueError("vectors must be L2-normalised")
    return x


class KnnIndex:
    """Inner-product kNN over the vectors seen so far: exact (``IndexFlatIP``)
    while small; above ``exact_below`` vectors, IVF over a PCA projection to
    ``reduced_dim`` (trained once, on the first batch large enough), whose
    candidates the caller re-ranks with exact distances. Why: an exact search of
    100,000 640-d vectors against themselves is ~10^13 flops, minutes on 2 cores,
    and an IVF scan of full vectors is bound by memory traffic (each query reads
    ``nprobe`` cells of 640 floats a vector); the projection cuts that tenfold,
    and faces within the identify threshold are near enough to stay among the
    ``k`` candidates (``bench.clustering`` measures that recall against exact)."""

    def __init__(self, dim: int, exact_below: int, nprobe: int, reduced_dim: int = 64) -> None:
        self.dim, self.exact_below, self.nprobe = dim, exact_below, nprobe
        self.reduced_dim = min(reduced_dim, dim)
        self.index: faiss.Index = faiss.IndexFlatIP(dim)
        self.exact = True

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, x: np.ndarray) -> None:
        if self.exact and self.ntotal + len(x) >= self.exact_below:
            old = (self.index.reconstruct_n(0, self.ntotal) if self.ntotal
                   else np.empty((0, self.dim), np.float32))
            allx = np.vstack([old, x])
            nlist = max(16, int(2 * np.sqrt(len(allx))))
            # (FAISS's Python constructors keep the quantizer and the IVF alive)
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.reduced_dim), self.reduced_dim,
                                     nlist, faiss.METRIC_INNER_PRODUCT)
            index: faiss.Index = ivf
            if self.reduced_dim < self.dim:
                index = faiss.IndexPreTransform(faiss.PCAMatrix(self.dim, self.reduced_dim), ivf)
            # k-means (and PCA) on a sample: ~40 points a cell is what FAISS asks for
            sample = allx[np.random.default_rng(0).permutation(len(allx))[:nlist * 40]]
            index.train(sample)
            ivf.nprobe = self.nprobe
            index.add(allx)
            self.index, self.exact = index, False
        else:
            self.index.add(x)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the ``k`` nearest (self included; -1 padded) and, when the index
        is exact, their cosine distances (None: re-rank them)."""
        sims, rows = self.index.search(x, min(k, max(self.ntotal, 1)))
        return rows, (1.0 - sims if self.exact else None)


def _edges(dist: np.ndarray, rows: np.ndarray, query_rows: np.ndarray, t: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) pairs of the kNN answers within ``t``, self-pairs dropped."""
    keep = (rows >= 0) & (dist <= t) & (rows != query_rows[:, None])
    a = np.repeat(query_rows, keep.sum(axis=1))
    return a, rows[keep]


def _split(x: np.ndarray, members: np.ndarray, a: np.ndarray, b: np.ndarray, t: float,
           max_dense: int) -> list[np.ndarray]:
    """Average-linkage groups (cut at ``t``) of one connected component."""
    m = len(members)
    if m == 2:
        d = 1.0 - float(x[members[0]] @ x[members[1]])
        return [members] if d <= t else [members[:1], members[1:]]
    if m <= max_dense:
        # float64 distances, clipped: rounding can make a self-distance slightly negative
        d = np.clip(pdist(x[members].astype(np.float64), "cosine"), 0.0, 2.0)
        sub = fcluster(linkage(d, "average"), t, "distance")
    else:
        from sklearn.cluster import AgglomerativeClustering

        local = {int(r): i for i, r in enumerate(members)}
        conn = coo_matrix((np.ones(len(a)), ([local[int(i)] for i in a],
                                             [local[int(j)] for j in b])), shape=(m, m))
        sub = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                      connectivity=conn.tocsr(),
                                      distance_threshold=t).fit_predict(x[members])
    order = np.argsort(sub, kind="stable")
    return np.split(members[order], np.flatnonzero(np.diff(sub[order])) + 1)


def _groups(x: np.ndarray, nodes: np.ndarray, a: np.ndarray, b: np.ndarray, t: float,
            min_size: int, max_dense: int) -> list[np.ndarray]:
    """Steps 2-4 over the rows ``nodes`` and the edges (a, b) among them."""
    if len(nodes) == 0:
        return []
    pos = np.full(int(nodes.max()) + 1, -1, dtype=np.int64)
    pos[nodes] = np.arange(len(nodes))
    g = coo_matrix((np.ones(len(a), np.int8), (pos[a], pos[b])), shape=(len(nodes),) * 2)
    _, comp = connected_components(g.tocsr(), directed=False)
    sizes = np.bincount(comp)
    order = np.argsort(comp, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    # edges per component, for the sparse fallback of very large ones
    ecomp = comp[pos[a]]
    out = []
    for c in np.flatnonzero(sizes >= min_size):
        members = nodes[order[bounds[c]:bounds[c + 1]]]
        sel = ecomp == c if sizes[c] > max_dense else slice(0)
        for grp in _split(x, members, a[sel], b[sel], t, max_dense):
            if len(grp) >= min_size:
                out.append(np.sort(grp))
    return out


@dataclass
class FaceClusterer:
    """Clusters unit face vectors at the model's identify threshold, and keeps
    what an incremental run needs: every vector in a kNN index, the label of
    each row, and per cluster the sum and count of its vectors."""

    threshold: float
    cut_factor: float = CUT_FACTOR
    k: int = 16
    min_size: int = 2
    exact_below: int = 10_000
    nprobe: int = 16
    max_dense: int = 6_000
    x: np.ndarray = field(init=False, repr=False)
    labels: np.ndarray = field(init=False, repr=False)
    sums: np.ndarray = field(init=False, repr=False)
    counts: np.ndarray = field(init=False, repr=False)
    index: KnnIndex | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be a cosine distance in (0, 2), not {self.threshold}")
        #: the distance the graph edges, the average-linkage cut and the attachment of
        #: new faces all use
        self.cut = self.threshold * self.cut_factor
        if self.min_size < 2 or self.k < 2:
            raise ValueError("min_size and k must be at least 2")

    def fit(self, vectors: np.ndarray) -> ClusterResult:
        """Cluster ``vectors`` from scratch (this replaces any earlier state)."""
        x = _unit(vectors)
        self.x = x
        self.index = KnnIndex(x.shape[1], self.exact_below, self.nprobe)
        self.index.add(x)
        rows = np.arange(len(x))
        a, b = _edges(*self._search(x), rows, self.cut)
        labels = np.full(len(x), UNCLUSTERED, dtype=np.int64)
        groups = _groups(x, rows, a, b, self.cut, self.min_size, self.max_dense)
        for i, grp in enumerate(groups):
            labels[grp] = i
        self.labels = labels
        self._recount(len(groups))
        return ClusterResult.from_labels(labels)

    def extend(self, vectors: np.ndarray) -> ClusterResult:
        """Add ``vectors`` (rows ``n..n+m-1`` after the earlier ones) and cluster
        them against the existing clusters; cost in proportion to ``m``."""
        if self.index is None:
            return self.fit(vectors)
        new = _unit(vectors)
        if new.shape[1] != self.x.shape[1]:
            raise ValueError(f"vectors are {new.shape[1]}-d, the clusters {self.x.shape[1]}-d")
        n = len(self.x)
        self.x = np.vstack([self.x, new])
        self.index.add(new)
        rows = np.arange(n, n + len(new))
        a, b = _edges(*self._search(new), rows, self.cut)
        labels = np.concatenate([self.labels, np.full(len(new), UNCLUSTERED, np.int64)])
        # 1. a new face joins the nearest existing cluster among its neighbours' ones
        #    when its average distance to that cluster is within the threshold
        nbr_label = labels[b]
        for r in np.unique(a[nbr_label >= 0]):
            cands = np.unique(nbr_label[(a == r) & (nbr_label >= 0)])
            d = 1.0 - (self.sums[cands] @ self.x[r]) / self.counts[cands]
            best = int(np.argmin(d))
            if d[best] <= self.cut:
                labels[r] = cands[best]
                self.sums[cands[best]] += self.x[r]
                self.counts[cands[best]] += 1
        # 2. the new faces left over, with the unclustered faces they reach, as in fit
        left = labels[a] == UNCLUSTERED
        a, b = a[left], b[left]
        both = labels[b] == UNCLUSTERED
        a, b = a[both], b[both]
        nodes = np.union1d(rows[labels[rows] == UNCLUSTERED], b)
        groups = _groups(self.x, nodes, a, b, self.cut, self.min_size, self.max_dense)
        first = len(self.counts)
        for i, grp in enumerate(groups):
            labels[grp] = first + i
        self.labels = labels
        if groups:
            self.sums = np.vstack([self.sums, [self.x[g].sum(axis=0) for g in groups]])
            self.counts = np.concatenate([self.counts, [len(g) for g in groups]])
        return ClusterResult.from_labels(labels)

    def _search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine distances and rows of the ``k`` nearest candidates of ``q``."""
        assert self.index is not None
        rows, dist = self.index.search(q, self.k + 1)  # +1: a row finds itself first
        if dist is None:
            dist = np.empty(rows.shape, dtype=np.float32)
            for i in range(0, len(q), 4096):  # bounded memory: 4096 x k x dim floats
                cand = self.x[np.maximum(rows[i:i + 4096], 0)]
                dist[i:i + 4096] = 1.0 - np.einsum("qkd,qd->qk", cand, q[i:i + 4096])
        return dist, rows

    def _recount(self, nclusters: int) -> None:
        rows = np.flatnonzero(self.labels >= 0)
        member = csr_matrix((np.ones(len(rows)), (self.labels[rows], rows)),
                            shape=(nclusters, len(self.x)))
        self.counts = np.asarray(member.sum(axis=1)).ravel()
        self.sums = np.asarray(member @ self.x, dtype=np.float64)


def cluster_faces(vectors: np.ndarray, threshold: float, **params: Any) -> ClusterResult:
    """One full clustering of ``vectors`` at ``threshold`` (see the module doc)."""
    return FaceClusterer(threshold, **params).fit(vectors)


class NamedPeople:
    """The named people of a gallery, as the mean of each one's face vectors, for
    suggesting a name for a cluster."""

    def __init__(self, vectors: np.ndarray, person_ids: Sequence[Any]) -> None:
        x = _unit(vectors)
        if len(person_ids) != len(x):
            raise ValueError(f"{len(person_ids)} person ids for {len(x)} vectors")
        keys, inverse = np.unique(np.asarray(person_ids, dtype=object).astype(str),
                                  return_inverse=True)
        first = {}
        for pid in person_ids:
            first.setdefault(str(pid), pid)
        self.person_ids = [first[k] for k in keys]
        sums = np.zeros((len(keys), x.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, x)
        self.means = sums / np.bincount(inverse, minlength=len(keys))[:, None]

    def suggest(self, cluster_vectors: np.ndarray, threshold: float) -> Suggestion | None:
        """The named person nearest the cluster by average distance between their
        faces (1 - mean(cluster) . mean(person)), when within ``threshold``."""
        if not len(self.person_ids):
            return None
        c = _unit(cluster_vectors).mean(axis=0, dtype=np.float64)
        d = 1.0 - self.means @ c
        best = int(np.argmin(d))
        if d[best] > threshold:
            return None
        return Suggestion(self.person_ids[best], float(d[best]))


def suggest(cluster_vectors: np.ndarray, named_vectors: np.ndarray,
            named_person_ids: Sequence[Any], threshold: float) -> Suggestion | None:
    """The nearest named person of a cluster within ``threshold`` (or None)."""
    return NamedPeople(named_vectors, named_person_ids).suggest(cluster_vectors, threshold)
