"""The gallery facade: collections, register, identify, forget, persons, stats.

:class:`GalleryCore` holds all the logic that touches the store (validation,
the model binding of collections, commits) and turns each committed write
into per-shard ops; it never calls a shard, so the in-process :class:`Gallery`
below and the Ray deployment (``deployments/gallery.py``) apply the same plans,
one synchronously, the other by awaiting shard actors. Every write is
committed to the store before any shard sees it, and a call returns only
after the shards applied it. Vectors are L2-normalised on the way in, so the
inner products shards return are cosine similarities.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from index.merge import cosine_distance, merge_topk
from index.shard import DropOp, IndexConfig, ShardIndex, ShardOp, shard_ops
from index.store import CollectionInfo, DeletedFace, FaceRecord, PersonUpsert, Store
from configs.errors import CollectionNotFound, ModelMismatch, NotFound, ValidationError

Plan = list[list[ShardOp]]

_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")
_PERSON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_DIM = 4096
MAX_K = 1000
MAX_LABELS = 32


# --------------------------------------------------------------------------- validation


def new_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex characters, generated in one go (bulk
    registers make a million of them)."""
    raw = os.urandom(16 * n).hex()
    return [raw[i:i + 32] for i in range(0, 32 * n, 32)]


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise ValidationError(
            "a collection name is 1-64 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit", {"collection": str(name)[:100]})
    return name


def _check_model(model: Any, dim: Any) -> tuple[str, int]:
    if not isinstance(model, str) or not _MODEL_RE.match(model):
        raise ValidationError("invalid embedding model name", {"model": str(model)[:100]})
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or not 0 < dim <= MAX_DIM:
        raise ValidationError(f"dim must be an integer in 1..{MAX_DIM}", {"dim": str(dim)})
    return model, int(dim)


def _check_person_id(person_id: Any) -> str:
    if not isinstance(person_id, str) or not _PERSON_RE.match(person_id):
        raise ValidationError(
            "a person_id is 1-128 characters: letters, digits, '_', '.', ':', '@', '-'",
            {"person_id": str(person_id)[:140]})
    return person_id


def _check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise ValidationError("a person name is a string of 1-256 characters")
    return name


def _check_labels(labels: Any) -> dict[str, str] | None:
    if labels is None:
        return None
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise ValidationError(f"labels is a map of at most {MAX_LABELS} string keys to strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.match(key):
            raise ValidationError("a label key is 1-64 characters: letters, digits, '_.:-'",
                                  {"label": str(key)[:80]})
        if not isinstance(value, str) or len(value) > 256:
            raise ValidationError("a label value is a string of at most 256 characters",
                                  {"label": key})
    return dict(labels)


def _unit_rows(vectors: Any, dim: int, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous (n, dim) float32 array of unit rows."""
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{what} must be numeric arrays") from e
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValidationError(f"{what} must have {dim} dimensions",
                              {"shape": list(x.shape), "dim": dim})
    if not np.isfinite(x).all():
        raise ValidationError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValidationError(f"{what} must not be zero vectors")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _check_model_binding(info: CollectionInfo, model: str, dim: int) -> None:
    if info.model != model or info.dim != dim:
        raise ModelMismatch(
            f"collection {info.name!r} holds {info.model} ({info.dim}-d) embeddings, "
            f"not {model} ({dim}-d)",
            {"collection": info.name, "collection_model": info.model,
             "collection_dim": info.dim, "model": model, "dim": dim})


def collection_dict(info: CollectionInfo) -> dict[str, Any]:
    return {"collection": info.name, "model": info.model, "dim": info.dim,
            "created_at": info.created_at}


def face_dict(face: FaceRecord, collection: str) -> dict[str, Any]:
    out: dict[str, Any] = {"face_id": face.face_id, "person_id": face.person_id,
                           "collection": collection, "created_at": face.created_at}
    if face.embedding is not None:
        out["embedding"] = face.embedding
    return out


# --------------------------------------------------------------------------- core


class GalleryCore:
    """Store-side half of every operation; returns results plus shard plans."""

    def __init__(self, store: Store, nshards: int) -> None:
        if nshards < 1:
            raise ValueError("nshards must be >= 1")
        self.store = store
        self.nshards = nshards

    def _empty_plan(self) -> Plan:
        return [[] for _ in range(self.nshards)]

    def _removal_plan(self, cid: int, deleted: Sequence[DeletedFace]) -> Plan:
        ids = np.array([d.id for d in deleted], dtype=np.int64)
        buckets = np.array([d.bucket for d in deleted], dtype=np.int64)
        return shard_ops(self.nshards, cid, 0, ids, buckets, None)

    # -- collections
    def create_collection(self, name: str, model: str, dim: int,
                          exist_ok: bool = False) -> dict[str, Any]:
        check_collection_name(name)
        model, dim = _check_model(model, dim)
        if exist_ok:
            try:
                info = self.store.get_collection(name)
            except CollectionNotFound:
                pass
            else:
                _check_model_binding(info, model, dim)
                return collection_dict(info)
        return collection_dict(self.store.create_collection(name, model, dim))

    def collection(self, name: str) -> CollectionInfo:
        return self.store.get_collection(check_collection_name(name))

    def list_collections(self) -> list[dict[str, Any]]:
        return [collection_dict(c) for c in self.store.list_collections()]

    def drop_collection(self, name: str) -> tuple[dict[str, Any], Plan]:
        info = self.store.drop_collection(check_collection_name(name))
        return collection_dict(info), [[DropOp(info.id)] for _ in range(self.nshards)]

    # -- register
    def register(self, collection: str, model: str, dim: int, items: Sequence[Mapping[str, Any]],
                 idempotency_key: str | None = None,
                 create_collection: bool = False) -> tuple[dict[str, Any], Plan]:
        """Items: ``{"embedding": vector, "person_id"?: str, "name"?: str, "labels"?: {..}}``."""
        check_collection_name(collection)
        model, dim = _check_model(model, dim)
        if not items:
            raise ValidationError("nothing to register")
        if not all(isinstance(item, Mapping) for item in items):
            raise ValidationError("each item is a map with an 'embedding'")
        try:
            vectors = [item["embedding"] for item in items]
        except (KeyError, TypeError) as e:
            raise ValidationError("each item needs an 'embedding'") from e
        emb = _unit_rows(vectors, dim, "embeddings")
        person_ids: list[str] = []
        persons: dict[str, PersonUpsert] = {}
        for item in items:
            pid = item.get("person_id")
            pid = new_ids(1)[0] if pid is None else _check_person_id(pid)
            name, labels = _check_name(item.get("name")), _check_labels(item.get("labels"))
            prev = persons.get(pid)
            if prev is not None:  # several faces of one person: keep what was given
                name = name if name is not None else prev.name
                labels = labels if labels is not None else prev.labels
            persons[pid] = PersonUpsert(pid, name, labels)
            person_ids.append(pid)
        idem = None
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 128:
                raise ValidationError("an idempotency key is a string of 1-128 characters")
            digest = hashlib.sha256(f"{model}\0{dim}\0".encode())
            digest.update(emb.tobytes())
            digest.update(json.dumps(
                [[i.get("person_id"), i.get("name"), i.get("labels")] for i in items],
                sort_keys=True, default=str).encode())
            idem = (idempotency_key, digest.hexdigest())
        face_ids = new_ids(len(items))
        res = self.store.add_faces(collection, model, dim, face_ids, person_ids, emb,
                                   list(persons.values()), create=create_collection,
                                   idempotency=idem)
        plan = shard_ops(self.nshards, res.collection.id, dim, res.ids, res.buckets,
                         res.embeddings)
        faces = [{"face_id": f, "person_id": p}
                 for f, p in zip(res.face_ids, res.person_ids, strict=True)]
        return {"collection": collection, "faces": faces, "replayed": res.replayed}, plan

    def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                      person_ids: Sequence[str] | None = None,
                      create_collection: bool = False) -> tuple[dict[str, Any], Plan]:
        """Precomputed embeddings, one new face each (a new person each unless given)."""
        check_collection_name(collection)
        model, dim = _check_model(model, dim)
        emb = _unit_rows(embeddings, dim, "embeddings")
        n = len(emb)
        if n == 0:
            raise ValidationError("nothing to register")
        if person_ids is None:
            pids = new_ids(n)
        else:
            if len(person_ids) != n:
                raise ValidationError("person_ids must match the embeddings one to one")
            pids = [_check_person_id(p) for p in person_ids]
        face_ids = new_ids(n)
        persons = [PersonUpsert(p) for p in dict.fromkeys(pids)]
        res = self.store.add_faces(collection, model, dim, face_ids, pids, emb, persons,
                                   create=create_collection)
        plan = shard_ops(self.nshards, res.collection.id, dim, res.ids, res.buckets,
                         res.embeddings)
        return {"collection": collection, "count": n, "face_ids": face_ids,
                "person_ids": pids}, plan

    # -- search
    def prepare_search(self, collection: str, model: str, vectors: Any,
                       k: int) -> tuple[CollectionInfo, np.ndarray]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 < k <= MAX_K:
            raise ValidationError(f"k must be an integer in 1..{MAX_K}", {"k": str(k)})
        info = self.collection(collection)
        if not isinstance(model, str) or model != info.model:
            raise ModelMismatch(
                f"collection {collection!r} holds {info.model} embeddings, not {model}",
                {"collection": collection, "collection_model": info.model, "model": model})
        queries = _unit_rows(vectors, info.dim, "query vectors")
        if not len(queries):
            raise ValidationError("no query vectors")
        return info, queries

    def resolve(self, info: CollectionInfo, scores: np.ndarray, ids: np.ndarray,
                max_distance: float | None = None) -> list[list[dict[str, Any]]]:
        """Turn merged ``(scores, ids)`` into hits; faces deleted meanwhile are skipped."""
        wanted = ids[ids >= 0]
        found = self.store.lookup(info.id, wanted.tolist()) if wanted.size else {}
        out: list[list[dict[str, Any]]] = []
        for row_s, row_i in zip(scores, ids, strict=True):
            hits = []
            for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True):
                hit = found.get(i) if i >= 0 else None
                if hit is None:
                    continue
                distance = float(cosine_distance(s))
                if max_distance is not None and distance > max_distance:
                    break  # sorted by similarity: the rest are farther
                hits.append({"face_id": hit.face_id, "person_id": hit.person_id,
                             "name": hit.name, "labels": hit.labels,
                             "similarity": float(s), "distance": distance})
            out.append(hits)
        return out

    # -- faces and persons
    def get_face(self, collection: str, face_id: str,
                 with_embedding: bool = False) -> dict[str, Any]:
        info = self.collection(collection)
        face = self.store.get_face(info.id, str(face_id), with_embedding)
        out = face_dict(face, info.name)
        person = self.store.get_person(info.id, face.person_id)  # name and labels live there
        out["name"], out["labels"] = person.name, person.labels
        return out

    def delete_faces(self, collection: str,
                     face_ids: Sequence[str]) -> tuple[list[str], Plan]:
        info = self.collection(collection)
        deleted = self.store.delete_faces(info.id, [str(f) for f in face_ids])
        return [d.face_id for d in deleted], self._removal_plan(info.id, deleted)

    def get_person(self, collection: str, person_id: str) -> dict[str, Any]:
        info = self.collection(collection)
        p = self.store.get_person(info.id, _check_person_id(person_id))
        return {"person_id": p.person_id, "name": p.name, "labels": p.labels,
                "collection": info.name, "created_at": p.created_at,
                "faces": [face_dict(f, info.name) for f in p.faces]}

    def delete_person(self, collection: str, person_id: str) -> tuple[dict[str, Any], Plan]:
        info = self.collection(collection)
        person, deleted = self.store.delete_person(info.id, _check_person_id(person_id))
        return ({"person_id": person.person_id, "collection": info.name,
                 "deleted_faces": [d.face_id for d in deleted]},
                self._removal_plan(info.id, deleted))

    def stats(self, collection: str) -> tuple[CollectionInfo, dict[str, Any]]:
        info = self.collection(collection)
        faces, persons = self.store.counts(info.id)
        out = collection_dict(info)
        out.update(faces=faces, persons=persons, shards=self.nshards)
        return info, out


# --------------------------------------------------------------------------- in-process


def verify_ids(store_ids: np.ndarray, index_ids: np.ndarray) -> dict[str, Any]:
    """Compare the store's and the index's id sets of one collection."""
    missing = np.setdiff1d(store_ids, index_ids)
    extra = np.setdiff1d(index_ids, store_ids)
    dup = len(index_ids) - len(np.unique(index_ids))
    return {"store": int(len(store_ids)), "index": int(len(index_ids)),
            "missing_in_index": missing.tolist()[:100], "extra_in_index": extra.tolist()[:100],
            "duplicates_in_index": int(dup),
            "consistent": not len(missing) and not len(extra) and not dup}


class Gallery:
    """The gallery in one process: a store plus local shards (no Ray).

    Thread-safe: each shard is guarded by its own lock, and searches fan out
    to the shards on a small thread pool (FAISS releases the GIL).
    """

    def __init__(self, store: Store, nshards: int = 1, config: IndexConfig | None = None,
                 rebuild: bool = True) -> None:
        self.core = GalleryCore(store, nshards)
        self.store = store
        self.shards = [ShardIndex(i, nshards, config) for i in range(nshards)]
        self._locks = [threading.Lock() for _ in range(nshards)]
        self._pool = ThreadPoolExecutor(max_workers=nshards, thread_name_prefix="shard")
        if rebuild:
            for shard in self.shards:
                shard.rebuild(store)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _apply(self, plan: Plan) -> None:
        for shard, lock, ops in zip(self.shards, self._locks, plan, strict=True):
            if ops:
                with lock:
                    shard.apply(ops)

    def _on_shards(self, fn: Any) -> list[Any]:
        def run(i: int) -> Any:
            with self._locks[i]:
                return fn(self.shards[i])
        return list(self._pool.map(run, range(len(self.shards))))

    # -- collections
    def create_collection(self, name: str, model: str, dim: int,
                          exist_ok: bool = False) -> dict[str, Any]:
        return self.core.create_collection(name, model, dim, exist_ok)

    def get_collection(self, name: str) -> dict[str, Any]:
        return collection_dict(self.core.collection(name))

    def list_collections(self) -> list[dict[str, Any]]:
        return self.core.list_collections()

    def drop_collection(self, name: str) -> dict[str, Any]:
        result, plan = self.core.drop_collection(name)
        self._apply(plan)
        return result

    # -- faces
    def register(self, collection: str, model: str, dim: int, items: Sequence[Mapping[str, Any]],
                 idempotency_key: str | None = None,
                 create_collection: bool = False) -> dict[str, Any]:
        result, plan = self.core.register(collection, model, dim, items, idempotency_key,
                                          create_collection)
        self._apply(plan)
        return result

    def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                      person_ids: Sequence[str] | None = None,
                      create_collection: bool = False) -> dict[str, Any]:
        result, plan = self.core.register_bulk(collection, model, dim, embeddings, person_ids,
                                               create_collection)
        self._apply(plan)
        return result

    def search(self, collection: str, model: str, vectors: Any, k: int = 10,
               max_distance: float | None = None) -> list[list[dict[str, Any]]]:
        info, queries = self.core.prepare_search(collection, model, vectors, k)
        parts = self._on_shards(lambda s: s.search(info.id, queries, int(k)))
        scores, ids = merge_topk(parts, int(k))
        return self.core.resolve(info, scores, ids, max_distance)

    def get_face(self, collection: str, face_id: str,
                 with_embedding: bool = False) -> dict[str, Any]:
        return self.core.get_face(collection, face_id, with_embedding)

    def delete_face(self, collection: str, face_id: str) -> dict[str, Any]:
        deleted = self.delete_faces(collection, [face_id])
        if not deleted:
            raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
        return {"face_id": face_id, "collection": collection, "deleted": True}

    def delete_faces(self, collection: str, face_ids: Sequence[str]) -> list[str]:
        deleted, plan = self.core.delete_faces(collection, face_ids)
        self._apply(plan)
        return deleted

    def get_person(self, collection: str, person_id: str) -> dict[str, Any]:
        return self.core.get_person(collection, person_id)

    def delete_person(self, collection: str, person_id: str) -> dict[str, Any]:
        result, plan = self.core.delete_person(collection, person_id)
        self._apply(plan)
        return result

    def stats(self, collection: str) -> dict[str, Any]:
        info, out = self.core.stats(collection)
        out["shard_sizes"] = self._on_shards(lambda s: s.size(info.id))
        out["index_type"] = self.shards[0].config.index_type
        return out

    def verify(self, collection: str) -> dict[str, Any]:
        """Store vs index ids of a collection (read at nearly the same time)."""
        info = self.core.collection(collection)
        index_ids = np.concatenate(self._on_shards(lambda s: s.ids(info.id)))
        return verify_ids(self.store.face_ids_internal(info.id), index_ids)
