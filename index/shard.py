"""One shard of the gallery: a FAISS index per collection over the faces whose
bucket maps to this shard, rebuilt from the store and kept current by ops.

Writes reach a shard only after the store committed them, possibly from
several writers (Gallery replicas), late, twice, or never (a writer that died
between its commit and the shard update). Every write carries its
collection's change number (``seq``, see ``index.store``): the shard applies
the next number, skips one it already holds, and on a gap catches up from the
store (:meth:`ShardIndex.catch_up`); :meth:`ShardIndex.sync`, run on a short
period, catches up on changes no writer delivered and drops collections that
no longer exist. Internal ids are never reused, so the shard also keeps one
state byte per id (absent / present / gone): a forgotten face cannot
reappear, whatever order updates arrive in. Collections are keyed by their
internal id, which is never reused either, so a late add to a dropped
collection is ignored too.

The default index is exact (``IndexIDMap2`` over ``IndexFlatIP``); with
``index_type="ivf"`` a collection's part of the shard switches to
``IndexIVFFlat`` (inner product, ids stored by the IVF lists, removals
supported) once it holds ``39 * nlist`` vectors, the least FAISS trains on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

if TYPE_CHECKING:
    from index.store import Store

log = logging.getLogger(__name__)

_ABSENT, _PRESENT, _GONE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class AddOp:
    cid: int
    dim: int
    ids: np.ndarray
    vectors: np.ndarray
    #: the change that added them (0: apply without sequence checks)
    seq: int = 0


@dataclass(frozen=True, slots=True)
class RemoveOp:
    cid: int
    ids: np.ndarray
    seq: int = 0


@dataclass(frozen=True, slots=True)
class DropOp:
    cid: int


ShardOp = AddOp | RemoveOp | DropOp


@dataclass(frozen=True, slots=True)
class IndexConfig:
    index_type: str = "flat"  # "flat" (exact) or "ivf"
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    #: FAISS wants ~39 training points per list; below that a part stays exact
    ivf_min_points_per_list: int = 39
    seed: int = 1234

    @property
    def ivf_threshold(self) -> int:
        return self.ivf_nlist * self.ivf_min_points_per_list


class _IdStates:
    """One byte per internal id: absent, present or gone (removed for good)."""

    def __init__(self) -> None:
        self._a = np.zeros(1 << 12, dtype=np.uint8)

    def _fit(self, ids: np.ndarray) -> None:
        top = int(ids.max()) + 1 if ids.size else 0
        if top > self._a.size:
            grown = np.zeros(max(top, self._a.size * 2), dtype=np.uint8)
            grown[: self._a.size] = self._a
            self._a = grown

    def get(self, ids: np.ndarray) -> np.ndarray:
        self._fit(ids)
        return self._a[ids]

    def set(self, ids: np.ndarray, state: int) -> None:
        self._fit(ids)
        self._a[ids] = state

    @property
    def nbytes(self) -> int:
        return int(self._a.nbytes)


class _Part:
    """The index of one collection inside one shard."""

    def __init__(self, dim: int, config: IndexConfig) -> None:
        self.dim = dim
        self.config = config
        self.kind = "flat"
        self.index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._quantizer: Any = None  # kept alive while the IVF index uses it

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, convert: bool = True) -> None:
        self.index.add_with_ids(vectors, ids)
        if convert:
            self.maybe_convert()

    def maybe_convert(self) -> None:
        cfg = self.config
        if cfg.index_type != "ivf" or self.kind != "flat" or self.ntotal < cfg.ivf_threshold:
            return
        t0 = time.perf_counter()
        n = self.ntotal
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        xb = self.index.index.reconstruct_n(0, n)  # the flat storage, in id_map order
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, cfg.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(cfg.seed)
        # 64 points per centroid train well enough and 4x faster than FAISS's 256
        cap = cfg.ivf_nlist * 64
        sample = xb if n <= cap else xb[rng.choice(n, cap, replace=False)]
        ivf.train(sample)
        ivf.add_with_ids(xb, ids)
        ivf.nprobe = cfg.ivf_nprobe
        self.index, self._quantizer, self.kind = ivf, quantizer, "ivf"
        log.info("index part switched to IVF (%d vectors, nlist=%d) in %.2fs",
                 n, cfg.ivf_nlist, time.perf_counter() - t0)

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def all_ids(self) -> np.ndarray:
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self.index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    @property
    def nbytes(self) -> int:
        # vectors + ids (+ IDMap2's reverse map, ~4 words per entry, for flat)
        per = self.dim * 4 + 8 + (32 if self.kind == "flat" else 0)
        centroids = self.config.ivf_nlist * self.dim * 4 if self.kind == "ivf" else 0
        return self.ntotal * per + centroids


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64))


class ShardIndex:
    """Shard ``shard_no`` of ``nshards``: faces whose ``bucket % nshards == shard_no``."""

    def __init__(self, shard_no: int, nshards: int, config: IndexConfig | None = None) -> None:
        if not 0 <= shard_no < nshards:
            raise ValueError(f"shard {shard_no} out of range for {nshards} shards")
        self.shard_no = shard_no
        self.nshards = nshards
        self.config = config or IndexConfig()
        self._parts: dict[int, _Part] = {}
        self._states = _IdStates()
        self._dropped: set[int] = set()
        #: collection id -> last change number applied (absent: none, i.e. 0)
        self._seq: dict[int, int] = {}
        self.rebuild_seconds: float | None = None
        #: changes fetched from the store instead of received from a writer
        self.catch_ups = 0

    # -- building
    def rebuild(self, store: Store, chunk: int = 20000) -> int:
        """Replace the contents with this shard's faces from the store; returns the count."""
        t0 = time.perf_counter()
        self._parts.clear()
        self._states = _IdStates()
        seqs: dict[int, tuple[int, int]] = {}
        n = 0
        for cid, dim, ids, vectors in store.iter_shard(self.shard_no, self.nshards, chunk,
                                                        seqs=seqs):
            self._add(cid, dim, ids, vectors, convert=False)
            n += len(ids)
        # the snapshot's sequence numbers: everything up to them is in the shard now
        self._seq = {cid: last for cid, (_dim, last) in seqs.items()}
        for part in self._parts.values():
            part.maybe_convert()
        self.rebuild_seconds = time.perf_counter() - t0
        log.info("shard %d/%d rebuilt from the %s store: %d faces in %.2fs", self.shard_no,
                 self.nshards, getattr(store, "backend", "?"), n, self.rebuild_seconds)
        return n

    def apply(self, ops: Iterable[ShardOp], store: Store | None = None) -> None:
        """Apply committed writes (safe to repeat, safe to receive late or out of order).

        An op whose ``seq`` is past the next one means a change never reached
        this shard: with a ``store`` the shard catches up from it (which also
        covers the op, being committed), without one it applies the op as is.
        """
        for op in ops:
            if isinstance(op, DropOp):
                self._drop(op.cid)
                continue
            if not isinstance(op, AddOp | RemoveOp):
                raise TypeError(f"unknown shard op {type(op).__name__}")
            if op.cid in self._dropped:
                continue
            last = self._seq.get(op.cid, 0)
            if op.seq:
                if op.seq <= last:
                    continue  # already held: a retry, or fetched by a catch-up
                if op.seq > last + 1 and store is not None:
                    self.catch_up(store, op.cid)
                    continue
                self._seq[op.cid] = op.seq
            if isinstance(op, AddOp):
                self._add(op.cid, op.dim, op.ids, op.vectors)
            else:
                self._remove(op.cid, op.ids)

    def catch_up(self, store: Store, cid: int) -> int:
        """Fetch this shard's changes of ``cid`` after the last one applied; returns
        the number of faces added or removed."""
        ch = store.changes_since(cid, self._seq.get(cid, 0), self.shard_no, self.nshards)
        if not ch.exists:
            self._drop(cid)
            return 0
        if ch.full:  # the tombstones do not reach back far enough: reload the part
            part = self._parts.pop(cid, None)
            if part is not None:
                keep = np.isin(part.all_ids(), ch.ids)
                self._states.set(part.all_ids()[~keep], _GONE)
                self._states.set(part.all_ids()[keep], _ABSENT)
        self._remove(cid, ch.removed)
        added = self._add(cid, ch.dim, ch.ids, ch.vectors) if len(ch.ids) else 0
        self._seq[cid] = max(self._seq.get(cid, 0), ch.last_seq)
        self.catch_ups += 1
        if added or len(ch.removed):
            log.info("shard %d/%d caught up on collection %d to change %d: +%d -%d faces",
                     self.shard_no, self.nshards, cid, ch.last_seq, added, len(ch.removed))
        return added + len(ch.removed)

    def sync(self, store: Store) -> int:
        """Catch up on every collection the store is ahead on, and drop the ones it no
        longer has; returns the number of collections caught up."""
        seqs = store.collection_seqs()
        for cid in list(self._parts):
            if cid not in seqs:
                self._drop(cid)
        behind = [cid for cid, (_dim, last) in seqs.items()
                  if last > self._seq.get(cid, 0) and cid not in self._dropped]
        for cid in behind:
            self.catch_up(store, cid)
        return len(behind)

    def _add(self, cid: int, dim: int, ids: np.ndarray, vectors: np.ndarray,
             convert: bool = True) -> int:
        if cid in self._dropped or len(ids) == 0:
            return 0
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        fresh = self._states.get(ids) == _ABSENT
        if not fresh.all():
            ids, vectors = ids[fresh], vectors[fresh]
            if len(ids) == 0:
                return 0
        part = self._parts.get(cid)
        if part is None:
            part = self._parts[cid] = _Part(dim, self.config)
        elif part.dim != dim:
            raise ValueError(f"collection {cid} holds {part.dim}-d vectors, got {dim}-d")
        part.add(ids, np.ascontiguousarray(vectors, dtype=np.float32), convert=convert)
        self._states.set(ids, _PRESENT)
        return len(ids)

    def _remove(self, cid: int, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        present = ids[self._states.get(ids) == _PRESENT]
        # mark gone even when absent: the add may still be on its way
        self._states.set(ids, _GONE)
        part = self._parts.get(cid)
        # one remove_ids call per batch: its cost is a scan, whatever the count
        return part.remove(present) if part is not None and len(present) else 0

    def _drop(self, cid: int) -> None:
        self._dropped.add(cid)
        self._seq.pop(cid, None)
        part = self._parts.pop(cid, None)
        if part is not None:
            self._states.set(part.all_ids(), _GONE)

    # -- reading
    def search(self, cid: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of each query in this shard: ``(scores, ids)``, ``-1`` pads."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        part = self._parts.get(cid)
        if part is None or part.ntotal == 0:
            return _empty(len(queries), k)
        scores, ids = part.search(queries, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    def size(self, cid: int) -> int:
        part = self._parts.get(cid)
        return part.ntotal if part else 0

    def sizes(self) -> dict[int, int]:
        return {cid: p.ntotal for cid, p in self._parts.items()}

    def ids(self, cid: int) -> np.ndarray:
        part = self._parts.get(cid)
        return np.sort(part.all_ids()) if part else np.empty(0, np.int64)

    def info(self) -> dict[str, Any]:
        return {
            "shard": self.shard_no,
            "nshards": self.nshards,
            "index_type": self.config.index_type,
            "parts": {cid: {"size": p.ntotal, "kind": p.kind, "seq": self._seq.get(cid, 0)}
                      for cid, p in self._parts.items()},
            "catch_ups": self.catch_ups,
            # every collection's applied change number, parts or not (replication lag)
            "seqs": dict(self._seq),
            "index_bytes": sum(p.nbytes for p in self._parts.values()) + self._states.nbytes,
            "rebuild_seconds": self.rebuild_seconds,
        }


def shard_ops(nshards: int, cid: int, dim: int, ids: np.ndarray, buckets: np.ndarray,
              vectors: np.ndarray | None, seq: int = 0) -> list[list[ShardOp]]:
    """Split an add (``vectors`` given) or a removal into per-shard op lists.

    With a ``seq`` every shard gets an op, empty when none of the faces are its
    own, so that each shard sees every change number of the collection and
    can tell a missed change from one that was not for it.
    """
    ops: list[list[ShardOp]] = [[] for _ in range(nshards)]
    if len(ids) == 0 and not seq:
        return ops
    shard = np.asarray(buckets, dtype=np.int64) % nshards
    for s in range(nshards):
        sel = np.flatnonzero(shard == s)
        if not len(sel) and not seq:
            continue
        if vectors is None:
            ops[s].append(RemoveOp(cid, np.ascontiguousarray(ids[sel], dtype=np.int64), seq))
        else:
            ops[s].append(AddOp(cid, dim, np.ascontiguousarray(ids[sel], dtype=np.int64),
                                np.ascontiguousarray(vectors[sel]).reshape(len(sel), dim), seq))
    return ops

