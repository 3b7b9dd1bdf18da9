"""The gallery: collections, register, identify, forget, persons, listings,
export / import, stats.

:class:`GalleryCore` holds the logic that touches the store (validation, the
model binding of collections, commits) and turns each committed write into
per-shard ops carrying the write's change number; it never calls a shard.
:class:`GalleryService` runs every operation, store first and then a
:class:`ShardSet`: the in-process :class:`LocalShards` here, or the shard
actors of the Ray deployment (``deployments/gallery.py``, which *is* this
service with Ray shards), so there is one implementation of the gallery, not
two. Every write is committed to the store before any shard sees it, and a
call returns only after the shards applied it; a shard that missed it catches
up from the store's change log. Vectors are L2-normalised on the way in, so
the inner products shards return are cosine similarities. :class:`Gallery`
drives the service from synchronous code (tests, benchmarks, scripts).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from index.audit import Actor, AuditAction, AuditEntry
from index.merge import cosine_distance, merge_topk
from index.shard import DropOp, IndexConfig, ShardIndex, ShardOp, shard_ops
from index import cursors
from index.store import (KEEP, AddResult, CollectionInfo, Deleted, FaceRecord, KeyRecord,
                         PersonUpsert, Store)
from configs.errors import CollectionNotFound, ModelMismatch, NotFound, ValidationError

Plan = list[list[ShardOp]]

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_COLLECTION_RE = re.compile(COLLECTION_PATTERN)
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")
_PERSON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_FACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_DIM = 4096
MAX_K = 1000
MAX_LABELS = 32
#: rows per page of a listing, and per page an export reads
MAX_PAGE = 1000
MAX_EXPORT_PAGE = 5000


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


def _check_limit(limit: Any, most: int | None = None) -> int:
    most = most or MAX_PAGE
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or not 0 < limit <= most:
        raise ValidationError(f"limit must be an integer in 1..{most}", {"limit": str(limit)})
    return int(limit)


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 128:
        raise ValidationError("an idempotency key is a string of 1-128 characters")
    return key


def _check_face_id(face_id: Any) -> str:
    """A face id as stored: 32 lowercase hex digits; a UUID in any usual spelling
    (dashes, braces, upper case: the recipe's ``uuid`` column) is taken as its digits."""
    if isinstance(face_id, str):
        digits = face_id.strip("{}").replace("-", "").lower()
        if _FACE_ID_RE.match(digits):
            return digits
    raise ValidationError("a face id is 32 hex digits (a UUID)", {"id": str(face_id)[:100]})


def _check_time(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValidationError("created_at is a Unix time in seconds", {"created_at": str(value)})
    return float(value)


def check_import_row(row: Mapping[str, Any], dim: int, now: float | None = None
                     ) -> dict[str, Any]:
    """One face of an import, checked as the gallery will store it: its id as 32 hex
    digits, a valid person id, name and labels, a Unix ``created_at`` (now when
    missing) and a unit embedding of ``dim`` dimensions; a ``ValidationError``
    says what is wrong."""
    if not isinstance(row, Mapping):
        raise ValidationError("a face to import is a JSON object")
    return {"id": _check_face_id(row.get("id")),
            "person_id": _check_person_id(row.get("person_id")),
            "name": _check_name(row.get("name")), "labels": _check_labels(row.get("labels")),
            "created_at": _check_time(row.get("created_at"), time.time() if now is None else now),
            "embedding": _unit_rows(row.get("embedding"), dim, "embedding")[0]}


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
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        # large float32 values overflow the norm to inf (and the vector to zeros)
        norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
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


def _entry(actor: Actor | None, action: AuditAction,
           collection: str | None = None) -> AuditEntry | None:
    return None if actor is None else actor.entry(action, collection)


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

    def _removal_plan(self, cid: int, deleted: Deleted) -> Plan:
        ids = np.array([d.id for d in deleted.faces], dtype=np.int64)
        buckets = np.array([d.bucket for d in deleted.faces], dtype=np.int64)
        return shard_ops(self.nshards, cid, 0, ids, buckets, None, deleted.seq)

    # -- collections
    def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                          actor: Actor | None = None) -> dict[str, Any]:
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
        return collection_dict(self.store.create_collection(
            name, model, dim, _entry(actor, AuditAction.COLLECTION_CREATE, name)))

    def collection(self, name: str) -> CollectionInfo:
        return self.store.get_collection(check_collection_name(name))

    def list_collections(self) -> list[dict[str, Any]]:
        return [collection_dict(c) for c in self.store.list_collections()]

    def drop_collection(self, name: str,
                        actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        info = self.store.drop_collection(check_collection_name(name),
                                          _entry(actor, AuditAction.COLLECTION_DROP, name))
        self.store.checkpoint()  # the dropped rows' bytes leave the write-ahead log
        return collection_dict(info), [[DropOp(info.id)] for _ in range(self.nshards)]

    # -- register
    def register(self, collection: str, model: str, dim: int, items: Sequence[Mapping[str, Any]],
                 idempotency_key: str | None = None, create_collection: bool = False,
                 face_ids: Sequence[str] | None = None, request_hash: str | None = None,
                 extra: Any = None, actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        """Items: ``{"embedding": vector, "person_id"?: str, "name"?: str, "labels"?: {..}}``.

        ``face_ids`` (32 lowercase hex characters each, e.g. a UUID without dashes)
        keep the ids faces had elsewhere, for imports; by default they are new.
        Under an ``idempotency_key`` the request is told apart by ``request_hash``
        (the caller's digest of the request as it was sent; by default one of the
        vectors and items) and ``extra`` (any JSON value) is kept with the answer;
        a replay's answer carries the first write's ``extra``. ``actor`` is who
        makes the change, for its audit entry.
        """
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
        idem: tuple[Any, ...] | None = None
        if idempotency_key is not None:
            _check_key(idempotency_key)
            if request_hash is None:
                digest = hashlib.sha256(f"{model}\0{dim}\0".encode())
                digest.update(emb.tobytes())
                digest.update(json.dumps(
                    [[i.get("person_id"), i.get("name"), i.get("labels")] for i in items],
                    sort_keys=True, default=str).encode())
                request_hash = digest.hexdigest()
            idem = (idempotency_key, str(request_hash), extra)
        if face_ids is None:
            face_ids = new_ids(len(items))
        else:
            face_ids = [str(f) for f in face_ids]
            if len(face_ids) != len(items) or not all(_FACE_ID_RE.match(f) for f in face_ids):
                raise ValidationError("face_ids are 32 lowercase hex characters, one per item")
            if len(set(face_ids)) != len(face_ids):
                raise ValidationError("face_ids repeat within one request")
        res = self.store.add_faces(collection, model, dim, face_ids, person_ids, emb,
                                   list(persons.values()), create=create_collection,
                                   idempotency=idem,
                                   audit=_entry(actor, AuditAction.FACE_REGISTER, collection))
        plan = shard_ops(self.nshards, res.collection.id, dim, res.ids, res.buckets,
                         res.embeddings, res.seq)
        return self._register_answer(collection, res), plan

    @staticmethod
    def _register_answer(collection: str, res: AddResult) -> dict[str, Any]:
        faces = []
        for f, p in zip(res.face_ids, res.person_ids, strict=True):
            name, labels = res.persons.get(p, (None, {}))
            faces.append({"face_id": f, "person_id": p, "name": name, "labels": labels,
                          "collection": collection, "created_at": res.created_at})
        out = {"collection": collection, "model": res.collection.model, "faces": faces,
               "replayed": res.replayed, "collection_created": res.collection_created}
        if res.replayed and res.extra is not None:
            out["extra"] = res.extra
        return out

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
                         res.embeddings, res.seq)
        return {"collection": collection, "count": n, "face_ids": face_ids,
                "person_ids": pids}, plan

    # -- search
    @staticmethod
    def check_search(info: CollectionInfo, model: str, vectors: Any, k: int) -> np.ndarray:
        """The query vectors of a search of ``info`` (no store access)."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 < k <= MAX_K:
            raise ValidationError(f"k must be an integer in 1..{MAX_K}", {"k": str(k)})
        collection = info.name
        if not isinstance(model, str) or model != info.model:
            raise ModelMismatch(
                f"collection {collection!r} holds {info.model} embeddings, not {model}",
                {"collection": collection, "collection_model": info.model, "model": model})
        queries = _unit_rows(vectors, info.dim, "query vectors")
        if not len(queries):
            raise ValidationError("no query vectors")
        return queries

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

    def delete_faces(self, collection: str, face_ids: Sequence[str],
                     actor: Actor | None = None) -> tuple[list[str], Plan]:
        info = self.collection(collection)
        deleted = self.store.delete_faces(info.id, [str(f) for f in face_ids],
                                          _entry(actor, AuditAction.FACE_FORGET, info.name))
        if deleted.faces:
            self.store.checkpoint()
        return [d.face_id for d in deleted.faces], self._removal_plan(info.id, deleted)

    def get_person(self, collection: str, person_id: str) -> dict[str, Any]:
        info = self.collection(collection)
        p = self.store.get_person(info.id, _check_person_id(person_id))
        return {"person_id": p.person_id, "name": p.name, "labels": p.labels,
                "collection": info.name, "created_at": p.created_at,
                "faces": [face_dict(f, info.name) for f in p.faces]}

    def delete_person(self, collection: str, person_id: str,
                      actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        info = self.collection(collection)
        person, deleted = self.store.delete_person(
            info.id, _check_person_id(person_id),
            _entry(actor, AuditAction.PERSON_FORGET, info.name))
        log_state = self.store.checkpoint()
        n = len(deleted.faces)
        # what was removed where; the shards drop the same faces before the answer
        erased: dict[str, Any] = {
            "store": {"faces": n, "persons": 1, "idempotency_keys": deleted.idempotency_keys},
            "shards": {"entries": n},
            "audit": {"entries_pseudonymised": deleted.audit_pseudonymised + (actor is not None)},
        }
        if log_state is not None:
            erased["store"]["write_ahead_log"] = log_state
        return ({"person_id": person.person_id, "collection": info.name,
                 "deleted_faces": [d.face_id for d in deleted.faces], "erased": erased},
                self._removal_plan(info.id, deleted))

    # -- listings
    def list_persons(self, collection: str, limit: int = 100,
                     cursor: str | None = None) -> dict[str, Any]:
        """One page of the collection's persons in person-id order, and the cursor of
        the next page (None after the last)."""
        info = self.collection(collection)
        limit = _check_limit(limit)
        after = cursors.decode(cursor, "persons", info.id) if cursor else ""
        rows = self.store.list_persons(info.id, after, limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        return {"collection": info.name,
                "persons": [{"person_id": p.person_id, "name": p.name, "labels": p.labels,
                             "created_at": p.created_at, "faces": p.faces} for p in rows],
                "next_cursor": cursors.encode("persons", info.id, rows[-1].person_id)
                if more else None}

    def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                   cursor: str | None = None) -> dict[str, Any]:
        """One page of the collection's faces (of one person, when given) in enrolment
        order, and the cursor of the next page (None after the last)."""
        info = self.collection(collection)
        limit = _check_limit(limit)
        if person_id is not None:
            _check_person_id(person_id)
        after = cursors.decode(cursor, "faces", info.id, person_id) if cursor else 0
        rows = self.store.list_faces(info.id, person_id, after, limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        return {"collection": info.name,
                "faces": [{"face_id": f.face_id, "person_id": f.person_id, "name": f.name,
                           "labels": f.labels, "collection": info.name,
                           "created_at": f.created_at} for f in rows],
                "next_cursor": cursors.encode("faces", info.id, rows[-1].id, person_id)
                if more else None}

    def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                      actor: Actor | None = None) -> dict[str, Any]:
        """Rename / relabel a person: ``changes`` holds ``name`` (None clears it) and/or
        ``labels`` (replaces the map); keys left out stay as they are."""
        info = self.collection(collection)
        _check_person_id(person_id)
        unknown = set(changes) - {"name", "labels"}
        if unknown:
            raise ValidationError("a person's name and labels are what can change",
                                  {"fields": sorted(unknown)})
        name = _check_name(changes["name"]) if "name" in changes else KEEP
        labels = KEEP
        if "labels" in changes:
            labels = _check_labels(changes["labels"]) or {}
        p = self.store.update_person(info.id, person_id, name, labels,
                                     _entry(actor, AuditAction.PERSON_UPDATE, info.name))
        return {"person_id": p.person_id, "name": p.name, "labels": p.labels,
                "collection": info.name, "created_at": p.created_at,
                "faces": [face_dict(f, info.name) for f in p.faces]}

    # -- export and import
    def export_page(self, collection: str, after: int = 0,
                    limit: int = 1000) -> dict[str, Any]:
        """Faces after internal id ``after`` with their embeddings, for an export that
        streams a collection page by page; ``after`` of the answer is the next call's
        (None after the last page)."""
        info = self.collection(collection)
        limit = _check_limit(limit, MAX_EXPORT_PAGE)
        rows = self.store.list_faces(info.id, None, int(after), limit, with_embedding=True)
        faces = [{"id": f.face_id, "person_id": f.person_id, "name": f.name,
                  "labels": f.labels, "model": info.model, "created_at": f.created_at,
                  "embedding": f.embedding} for f in rows]
        return {"collection": info.name, "model": info.model, "dim": info.dim,
                "faces": faces, "after": rows[-1].id if len(rows) == limit else None}

    def import_faces(self, collection: str, model: str, dim: int,
                     rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                     actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        """Faces exported elsewhere, with their ids: ``{"id", "embedding", "person_id",
        "name"?, "labels"?, "created_at"?}`` each. Ids the collection holds already
        are skipped (an import can be run again), ids another collection holds are
        reported in ``elsewhere``; embeddings are normalised as every vector is."""
        check_collection_name(collection)
        model, dim = _check_model(model, dim)
        if not rows:
            raise ValidationError("nothing to import")
        now = time.time()
        rows = [check_import_row(r, dim, now) for r in rows]
        face_ids = [r["id"] for r in rows]
        if len(set(face_ids)) != len(face_ids):
            raise ValidationError("face ids repeat within one import chunk")
        emb = np.stack([r["embedding"] for r in rows])
        created = [r["created_at"] for r in rows]
        persons: dict[str, PersonUpsert] = {}
        person_ids = []
        for r in rows:
            pid, name, labels = r["person_id"], r["name"], r["labels"]
            prev = persons.get(pid)
            if prev is not None:
                name = name if name is not None else prev.name
                labels = labels if labels is not None else prev.labels
            persons[pid] = PersonUpsert(pid, name, labels)
            person_ids.append(pid)
        res = self.store.import_faces(collection, model, dim, face_ids, person_ids, emb,
                                      created, list(persons.values()),
                                      create=create_collection,
                                      audit=_entry(actor, AuditAction.FACE_IMPORT, collection))
        a = res.added
        plan = shard_ops(self.nshards, a.collection.id, dim, a.ids, a.buckets, a.embeddings,
                         a.seq)
        return {"collection": collection, "model": a.collection.model, "dim": a.collection.dim,
                "imported": a.face_ids, "skipped": res.skipped,
                "elsewhere": res.elsewhere}, plan

    def replay_register(self, collection: str, idempotency_key: str,
                        request_hash: str) -> tuple[dict[str, Any] | None, Plan]:
        """The answer of the register committed under ``idempotency_key`` (its faces
        re-read, and re-sent to the shards as a replay is), or None when there is none."""
        check_collection_name(collection)
        _check_key(idempotency_key)
        res = self.store.replay(collection, idempotency_key, request_hash)
        if res is None:
            return None, self._empty_plan()
        plan = shard_ops(self.nshards, res.collection.id, res.collection.dim, res.ids,
                         res.buckets, res.embeddings, res.seq)
        return self._register_answer(collection, res), plan

    def stats(self, collection: str) -> tuple[CollectionInfo, dict[str, Any]]:
        info = self.collection(collection)
        faces, persons = self.store.counts(info.id)
        out = collection_dict(info)
        out.update(faces=faces, persons=persons, shards=self.nshards)
        sql_view = getattr(self.store, "sql_view", None)
        if sql_view is not None:  # pgvector: the collection's recipe-shaped view
            out["sql_view"] = sql_view(info)
        return info, out



# --------------------------------------------------------------------------- the service


def verify_ids(store_ids: np.ndarray, index_ids: np.ndarray) -> dict[str, Any]:
    """Compare the store's and the index's id sets of one collection."""
    missing = np.setdiff1d(store_ids, index_ids)
    extra = np.setdiff1d(index_ids, store_ids)
    dup = len(index_ids) - len(np.unique(index_ids))
    return {"store": int(len(store_ids)), "index": int(len(index_ids)),
            "missing_in_index": missing.tolist()[:100], "extra_in_index": extra.tolist()[:100],
            "duplicates_in_index": int(dup),
            "consistent": not len(missing) and not len(extra) and not dup}


class ShardSet(Protocol):
    """The shards of a gallery, wherever they run."""

    nshards: int

    async def apply(self, plan: Plan) -> None: ...
    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]: ...
    async def sizes(self, cid: int) -> list[int]: ...
    async def ids(self, cid: int) -> np.ndarray: ...
    async def info(self) -> list[dict[str, Any]]: ...
    async def sync(self) -> int: ...


class LocalShards:
    """Shards in this process: one lock each; searches fan out on a small thread
    pool (FAISS releases the GIL). They catch up from ``store`` on a gap and on
    :meth:`sync`."""

    def __init__(self, store: Store, nshards: int, config: IndexConfig | None = None,
                 rebuild: bool = True) -> None:
        self.store = store
        self.nshards = nshards
        self.shards = [ShardIndex(i, nshards, config) for i in range(nshards)]
        self._locks = [threading.Lock() for _ in range(nshards)]
        self._pool = ThreadPoolExecutor(max_workers=nshards, thread_name_prefix="shard")
        if rebuild:
            for shard in self.shards:
                shard.rebuild(store)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def _each(self, fn: Callable[[ShardIndex], Any]) -> list[Any]:
        loop = asyncio.get_running_loop()

        def run(i: int) -> Any:
            with self._locks[i]:
                return fn(self.shards[i])

        return list(await asyncio.gather(*(loop.run_in_executor(self._pool, run, i)
                                           for i in range(self.nshards))))

    async def apply(self, plan: Plan) -> None:
        await self._each(lambda s: s.apply(plan[s.shard_no], self.store)
                         if plan[s.shard_no] else None)

    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(await self._each(lambda s: s.search(cid, queries, k)), k)

    async def sizes(self, cid: int) -> list[int]:
        return await self._each(lambda s: s.size(cid))

    async def ids(self, cid: int) -> np.ndarray:
        return np.concatenate(await self._each(lambda s: s.ids(cid)))

    async def info(self) -> list[dict[str, Any]]:
        return await self._each(lambda s: s.info())

    async def sync(self) -> int:
        return sum(await self._each(lambda s: s.sync(self.store)))


class GalleryService:
    """Every gallery operation: validate, commit to the store, update the shards.

    Store calls block (sqlite3 / psycopg), so they run on a small pool of
    threads of their own (each keeps its own connection). The collections a
    search names are cached for ``cache_ttl_s`` (the same period in which
    shards catch up on changes they missed), so an identify reads the store
    once, to resolve its hits; this replica's own drops invalidate at once.
    """

    def __init__(self, store: Store, shards: ShardSet, store_threads: int = 8,
                 cache_ttl_s: float = 2.0, audit_identify: bool = True,
                 audit_retention_days: float | None = None, audit_reads: bool = True) -> None:
        self.store = store
        self.shards = shards
        self.core = GalleryCore(store, shards.nshards)
        self._db_pool = ThreadPoolExecutor(max_workers=store_threads,
                                           thread_name_prefix="store")
        self._ttl = cache_ttl_s
        self._infos: dict[str, tuple[float, CollectionInfo]] = {}
        self.audit_identify = audit_identify
        self.audit_retention_days = audit_retention_days
        self.audit_reads = audit_reads
        # identify entries waiting for the next group commit (see _record)
        self._pending: list[tuple[AuditEntry, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def _info(self, name: str) -> CollectionInfo:
        hit = self._infos.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        info = await self._db(self.core.collection, name)
        self._infos[name] = (time.monotonic(), info)
        return info

    def _forget_info(self, name: str) -> None:
        self._infos.pop(name, None)

    async def _apply(self, plan: Plan) -> None:
        """Send a committed write's ops to the shards."""
        await self.shards.apply(plan)

    # -- collections
    async def create_collection(self, name: str, model: str, dim: int, exist_ok: bool = False,
                                actor: Actor | None = None) -> dict[str, Any]:
        return await self._db(self.core.create_collection, name, model, dim, exist_ok, actor)

    async def get_collection(self, name: str) -> dict[str, Any]:
        return collection_dict(await self._db(self.core.collection, name))

    async def list_collections(self) -> list[dict[str, Any]]:
        return await self._db(self.core.list_collections)

    async def drop_collection(self, name: str, actor: Actor | None = None) -> dict[str, Any]:
        self._forget_info(name)
        result, plan = await self._db(self.core.drop_collection, name, actor)
        await self._apply(plan)
        return result

    # -- faces
    async def register(self, collection: str, model: str, dim: int,
                       items: Sequence[Mapping[str, Any]], idempotency_key: str | None = None,
                       create_collection: bool = False,
                       face_ids: Sequence[str] | None = None, request_hash: str | None = None,
                       extra: Any = None, actor: Actor | None = None) -> dict[str, Any]:
        result, plan = await self._db(functools.partial(
            self.core.register, collection, model, dim, items, idempotency_key,
            create_collection, face_ids=face_ids, request_hash=request_hash, extra=extra,
            actor=actor))
        await self._apply(plan)
        return result

    async def replay_register(self, collection: str, idempotency_key: str,
                              request_hash: str) -> dict[str, Any] | None:
        """The first answer of a register made under ``idempotency_key`` (its faces
        re-sent to the shards, as any replay does), or None when none was committed."""
        result, plan = await self._db(self.core.replay_register, collection,
                                      idempotency_key, request_hash)
        if result is not None:
            await self._apply(plan)
        return result

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                           actor: Actor | None = None) -> dict[str, Any]:
        result, plan = await self._db(self.core.import_faces, collection, model, dim, rows,
                                      create_collection, actor)
        await self._apply(plan)
        return result

    async def export_page(self, collection: str, after: int = 0,
                          limit: int = 1000) -> dict[str, Any]:
        return await self._db(self.core.export_page, collection, after, limit)

    async def list_persons(self, collection: str, limit: int = 100,
                           cursor: str | None = None, actor: Actor | None = None
                           ) -> dict[str, Any]:
        out = await self._db(self.core.list_persons, collection, limit, cursor)
        await self.record_read(AuditAction.PERSONS_LIST, collection, len(out["persons"]), actor)
        return out

    async def list_faces(self, collection: str, person_id: str | None = None,
                         limit: int = 100, cursor: str | None = None,
                         actor: Actor | None = None) -> dict[str, Any]:
        out = await self._db(self.core.list_faces, collection, person_id, limit, cursor)
        await self.record_read(AuditAction.FACES_LIST, collection, len(out["faces"]), actor)
        return out

    async def record_read(self, action: AuditAction | str, collection: str, rows: int,
                          actor: Actor | None = None) -> None:
        """Record that ``actor`` read ``rows`` rows of ``collection`` (``audit.reads``);
        durable before the caller answers, so no read leaves unrecorded."""
        if actor is None or not self.audit_reads:
            return
        entry = actor.entry(AuditAction(action), collection)
        entry.rows = int(rows)
        await self._record(entry)

    async def record(self, entry: AuditEntry) -> None:
        """Record an entry made outside the gallery (a sampled failed authentication)."""
        await self._record(entry)

    async def update_person(self, collection: str, person_id: str, changes: Mapping[str, Any],
                            actor: Actor | None = None) -> dict[str, Any]:
        return await self._db(self.core.update_person, collection, person_id, changes, actor)

    async def register_bulk(self, collection: str, model: str, dim: int, embeddings: np.ndarray,
                            person_ids: Sequence[str] | None = None,
                            create_collection: bool = False) -> dict[str, Any]:
        result, plan = await self._db(self.core.register_bulk, collection, model, dim,
                                      embeddings, person_ids, create_collection)
        await self._apply(plan)
        return result

    async def search(self, collection: str, model: str, vectors: Any, k: int = 10,
                     max_distance: float | None = None,
                     actor: Actor | None = None) -> list[list[dict[str, Any]]]:
        """The nearest faces of each query vector; with an ``actor`` (and
        ``audit_identify``) the search is recorded before it is answered."""
        info = await self._info(check_collection_name(collection))
        try:
            queries = self.core.check_search(info, model, vectors, k)
        except ModelMismatch:
            self._forget_info(collection)  # perhaps dropped and made again with another model
            info = await self._info(collection)
            queries = self.core.check_search(info, model, vectors, k)
        scores, ids = await self._search_shards(info.id, queries, int(k))
        hits = await self._db(self.core.resolve, info, scores, ids, max_distance)
        if actor is not None and self.audit_identify:
            entry = actor.entry(AuditAction.IDENTIFY, info.name)
            entry.matches = [row[0]["face_id"] if row else None for row in hits]
            await self._record(entry)
        return hits

    async def _record(self, entry: AuditEntry) -> None:
        """Commit an entry of its own (identify) and return once it is durable.

        Group commit: entries that arrive while a write is in flight go together
        in the next transaction, so concurrent identifies share one commit (one
        fsync on SQLite) instead of queueing for one each.
        """
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((entry, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())
        await fut

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._db(self.store.append_audit, [e for e, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each waiting search fails with it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    # -- the audit trail and API keys (the ingress reaches the store only through here)
    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[dict[str, Any]]:
        entries = await self._db(functools.partial(
            self.store.audit_entries, collection=collection, action=action, since=since,
            after_seq=after_seq, limit=limit))
        return [e.as_dict() for e in entries]

    async def prune_audit(self, now: float | None = None) -> int:
        """Delete entries older than the retention (nothing when it is unset)."""
        if self.audit_retention_days is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.audit_retention_days * 86400.0
        return await self._db(self.store.prune_audit, cutoff)

    async def create_key(self, key: KeyRecord, actor: Actor | None = None) -> dict[str, Any]:
        rec = await self._db(self.store.create_key, key, _entry(actor, AuditAction.KEY_CREATE))
        return rec.public()

    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> dict[str, Any]:
        rec = await self._db(self.store.revoke_key, key_id,
                             _entry(actor, AuditAction.KEY_REVOKE))
        return rec.public()

    async def list_keys(self) -> list[dict[str, Any]]:
        return [k.public() for k in await self._db(self.store.list_keys)]

    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None
                        ) -> tuple[int, list[KeyRecord] | None]:
        """What an ingress replica polls: the key table's version, and the table itself
        only when it changed since ``known_version``. ``used`` (key id -> last use)
        is written first, so ``last_used_at`` costs one write per poll, not one per
        request."""
        if used:
            await self._db(self.store.touch_keys, used)
        version = await self._db(self.store.keys_version)
        if version == known_version:
            return version, None
        return await self._db(self.store.key_table)

    async def _search_shards(self, cid: int, queries: np.ndarray,
                             k: int) -> tuple[np.ndarray, np.ndarray]:
        """The merged top-k of every shard (the Ray deployment batches this)."""
        return await self.shards.search(cid, queries, k)

    async def get_face(self, collection: str, face_id: str,
                       with_embedding: bool = False, actor: Actor | None = None
                       ) -> dict[str, Any]:
        out = await self._db(self.core.get_face, collection, face_id, with_embedding)
        await self.record_read(AuditAction.FACE_READ, collection, 1, actor)
        return out

    async def delete_face(self, collection: str, face_id: str,
                          actor: Actor | None = None) -> dict[str, Any]:
        deleted = await self.delete_faces(collection, [face_id], actor)
        if not deleted:
            raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
        return {"face_id": face_id, "collection": collection, "deleted": True}

    async def delete_faces(self, collection: str, face_ids: Sequence[str],
                           actor: Actor | None = None) -> list[str]:
        deleted, plan = await self._db(self.core.delete_faces, collection, face_ids, actor)
        await self._apply(plan)
        return deleted

    async def get_person(self, collection: str, person_id: str,
                         actor: Actor | None = None) -> dict[str, Any]:
        out = await self._db(self.core.get_person, collection, person_id)
        await self.record_read(AuditAction.PERSON_READ, collection, len(out["faces"]), actor)
        return out

    async def delete_person(self, collection: str, person_id: str,
                            actor: Actor | None = None) -> dict[str, Any]:
        result, plan = await self._db(self.core.delete_person, collection, person_id, actor)
        await self._apply(plan)
        return result

    async def stats(self, collection: str) -> dict[str, Any]:
        info, out = await self._db(self.core.stats, collection)
        out["shard_sizes"] = await self.shards.sizes(info.id)
        return out

    async def verify(self, collection: str) -> dict[str, Any]:
        """Store vs index ids of a collection (an admin / test check)."""
        info = await self._db(self.core.collection, collection)
        index_ids = await self.shards.ids(info.id)
        return verify_ids(await self._db(self.store.face_ids_internal, info.id), index_ids)

    async def shard_info(self) -> list[dict[str, Any]]:
        return await self.shards.info()

    async def sync_shards(self) -> int:
        """Make every shard catch up on changes it missed now (they also do on a timer)."""
        return await self.shards.sync()


class Gallery:
    """The in-process gallery (a store plus its shards), called synchronously.

    The shards are :class:`LocalShards` (FAISS), or for a pgvector store the
    SQL search of ``index.pgvector_shards`` (``search="sql"``, its default);
    ``search="faiss"`` serves a pgvector store from FAISS shards too, as its
    change log allows. Each method of :class:`GalleryService` is run to
    completion on a private event loop thread, so tests, benchmarks and scripts
    use the one gallery implementation without asyncio; it is safe to call
    from several threads.
    """

    def __init__(self, store: Store, nshards: int = 1, config: IndexConfig | None = None,
                 rebuild: bool = True, search: str | None = None,
                 ef_search: int | None = None) -> None:
        self.store = store
        if search is None:
            search = "sql" if store.backend == "pgvector" else "faiss"
        self.local: Any
        if search == "sql":
            from index.pgvector_shards import SqlShards

            self.local = SqlShards(store, ef_search=ef_search)  # type: ignore[arg-type]
            self.shards: list[ShardIndex] = []
        elif search == "faiss":
            self.local = LocalShards(store, nshards, config, rebuild)
            self.shards = self.local.shards
        else:
            raise ValueError(f"unknown search {search!r}: 'faiss' or 'sql'")
        self.service = GalleryService(store, self.local)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="gallery-loop")
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.service, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            fut = asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), self._loop)
            return fut.result()

        return call

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.local.close()
