"""The store-side half of every gallery operation: validate, commit (with the
change's audit entry), and turn each committed write into per-shard ops
carrying the write's change number. It never calls a shard."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.errors import CollectionNotFound, ModelMismatch, NotFound, ValidationError
from index import cursors
from index.audit import Actor, AuditAction, entry_of
from index.gallery.checks import (FACE_ID_RE, MAX_EXPORT_PAGE, MAX_K, check_collection_name,
                                  check_import_row, check_key, check_labels, check_limit,
                                  check_model, check_model_binding, check_name,
                                  check_person_id, check_query, check_thumbnail, new_ids,
                                  unit_rows)
from index.gallery.shards import Plan
from index.merge import cosine_distance
from index.shard import DropOp, shard_ops
from index.store import KEEP, AddResult, CollectionInfo, Deleted, FaceRecord, PersonUpsert, Store


def collection_dict(info: CollectionInfo) -> dict[str, Any]:
    return {"collection": info.name, "model": info.model, "dim": info.dim,
            "created_at": info.created_at, "enrol_unknown": info.enrol_unknown,
            "thumbnails": info.thumbnails}


def face_dict(face: FaceRecord, collection: str) -> dict[str, Any]:
    out: dict[str, Any] = {"face_id": face.face_id, "person_id": face.person_id,
                           "collection": collection, "created_at": face.created_at}
    if face.embedding is not None:
        out["embedding"] = face.embedding
    return out


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
        model, dim = check_model(model, dim)
        if exist_ok:
            try:
                info = self.store.get_collection(name)
            except CollectionNotFound:
                pass
            else:
                check_model_binding(info, model, dim)
                return collection_dict(info)
        return collection_dict(self.store.create_collection(
            name, model, dim, entry_of(actor, AuditAction.COLLECTION_CREATE, name)))

    def update_collection(self, name: str, changes: Mapping[str, Any],
                          actor: Actor | None = None) -> dict[str, Any]:
        """Change a collection's settings: ``enrol_unknown`` (a bool) is what can change."""
        check_collection_name(name)
        unknown = set(changes) - {"enrol_unknown", "thumbnails"}
        if unknown or not changes:
            raise ValidationError("'enrol_unknown' and 'thumbnails' are the settings a "
                                  "collection can change", {"fields": sorted(unknown)})
        if not all(isinstance(v, bool) for v in changes.values()):
            raise ValidationError("a collection's settings are true or false")
        return collection_dict(self.store.update_collection(
            name, dict(changes), entry_of(actor, AuditAction.COLLECTION_UPDATE, name)))

    def collection(self, name: str) -> CollectionInfo:
        return self.store.get_collection(check_collection_name(name))

    def list_collections(self) -> list[dict[str, Any]]:
        return [collection_dict(c) for c in self.store.list_collections()]

    def drop_collection(self, name: str,
                        actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        info = self.store.drop_collection(check_collection_name(name),
                                          entry_of(actor, AuditAction.COLLECTION_DROP, name))
        self.store.checkpoint()  # the dropped rows' bytes leave the write-ahead log
        return collection_dict(info), [[DropOp(info.id)] for _ in range(self.nshards)]

    # -- register
    def register(self, collection: str, model: str, dim: int, items: Sequence[Mapping[str, Any]],
                 idempotency_key: str | None = None, create_collection: bool = False,
                 face_ids: Sequence[str] | None = None, request_hash: str | None = None,
                 extra: Any = None, actor: Actor | None = None,
                 action: AuditAction | str = AuditAction.FACE_REGISTER
                 ) -> tuple[dict[str, Any], Plan]:
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
        model, dim = check_model(model, dim)
        if not items:
            raise ValidationError("nothing to register")
        if not all(isinstance(item, Mapping) for item in items):
            raise ValidationError("each item is a map with an 'embedding'")
        try:
            vectors = [item["embedding"] for item in items]
        except (KeyError, TypeError) as e:
            raise ValidationError("each item needs an 'embedding'") from e
        emb = unit_rows(vectors, dim, "embeddings")
        person_ids: list[str] = []
        persons: dict[str, PersonUpsert] = {}
        for item in items:
            pid = item.get("person_id")
            pid = new_ids(1)[0] if pid is None else check_person_id(pid)
            name, labels = check_name(item.get("name")), check_labels(item.get("labels"))
            prev = persons.get(pid)
            if prev is not None:  # several faces of one person: keep what was given
                name = name if name is not None else prev.name
                labels = labels if labels is not None else prev.labels
            persons[pid] = PersonUpsert(pid, name, labels)
            person_ids.append(pid)
        idem: tuple[Any, ...] | None = None
        if idempotency_key is not None:
            check_key(idempotency_key)
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
            if len(face_ids) != len(items) or not all(FACE_ID_RE.match(f) for f in face_ids):
                raise ValidationError("face_ids are 32 lowercase hex characters, one per item")
            if len(set(face_ids)) != len(face_ids):
                raise ValidationError("face_ids repeat within one request")
        thumbnails = [check_thumbnail(item.get("thumbnail")) for item in items]
        res = self.store.add_faces(collection, model, dim, face_ids, person_ids, emb,
                                   list(persons.values()), create=create_collection,
                                   idempotency=idem, thumbnails=thumbnails,
                                   audit=entry_of(actor, AuditAction(action), collection))
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
        model, dim = check_model(model, dim)
        emb = unit_rows(embeddings, dim, "embeddings")
        n = len(emb)
        if n == 0:
            raise ValidationError("nothing to register")
        if person_ids is None:
            pids = new_ids(n)
        else:
            if len(person_ids) != n:
                raise ValidationError("person_ids must match the embeddings one to one")
            pids = [check_person_id(p) for p in person_ids]
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
        queries = unit_rows(vectors, info.dim, "query vectors")
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

    def thumbnail(self, collection: str, face_id: str) -> bytes:
        """The face's JPEG thumbnail; NotFound when the face, or its thumbnail, is not
        there (enrolled by embedding, or in a collection that keeps none)."""
        info = self.collection(collection)
        jpeg = self.store.get_thumbnail(info.id, str(face_id))
        if jpeg is None:
            raise NotFound(f"face {face_id!r} has no thumbnail",
                           {"face_id": str(face_id), "thumbnail": False})
        return jpeg

    def delete_faces(self, collection: str, face_ids: Sequence[str],
                     actor: Actor | None = None) -> tuple[list[str], Plan]:
        info = self.collection(collection)
        deleted = self.store.delete_faces(info.id, [str(f) for f in face_ids],
                                          entry_of(actor, AuditAction.FACE_FORGET, info.name))
        if deleted.faces:
            self.store.checkpoint()
        return [d.face_id for d in deleted.faces], self._removal_plan(info.id, deleted)

    def get_person(self, collection: str, person_id: str) -> dict[str, Any]:
        info = self.collection(collection)
        p = self.store.get_person(info.id, check_person_id(person_id))
        return {"person_id": p.person_id, "name": p.name, "labels": p.labels,
                "collection": info.name, "created_at": p.created_at,
                "faces": [face_dict(f, info.name) for f in p.faces]}

    def delete_person(self, collection: str, person_id: str,
                      actor: Actor | None = None) -> tuple[dict[str, Any], Plan]:
        info = self.collection(collection)
        person, deleted = self.store.delete_person(
            info.id, check_person_id(person_id),
            entry_of(actor, AuditAction.PERSON_FORGET, info.name))
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
    def list_persons(self, collection: str, limit: int = 100, cursor: str | None = None,
                     q: str | None = None) -> dict[str, Any]:
        """One page of the collection's persons in person-id order (with ``q``, of those
        whose name or person id contains it, case-insensitively), and the cursor of
        the next page (None after the last). A cursor is bound to its ``q``."""
        info = self.collection(collection)
        limit = check_limit(limit)
        q = check_query(q)
        # the cursor carries a digest of the search, not the text: a 200-character
        # search would not fit the route's 512-character cursor, and logs of URLs do
        # not spell searches out twice (a short search can still be guessed from it)
        scope = "q:" + hashlib.sha256(q.encode()).hexdigest()[:16] if q else None
        after = cursors.decode(cursor, "persons", info.id, scope) if cursor else ""
        rows = self.store.list_persons(info.id, after, limit + 1, q)
        more, rows = len(rows) > limit, rows[:limit]
        return {"collection": info.name,
                "persons": [{"person_id": p.person_id, "name": p.name, "labels": p.labels,
                             "created_at": p.created_at, "faces": p.faces} for p in rows],
                "next_cursor": cursors.encode("persons", info.id, rows[-1].person_id, scope)
                if more else None}

    def list_faces(self, collection: str, person_id: str | None = None, limit: int = 100,
                   cursor: str | None = None) -> dict[str, Any]:
        """One page of the collection's faces (of one person, when given) in enrolment
        order, and the cursor of the next page (None after the last)."""
        info = self.collection(collection)
        limit = check_limit(limit)
        if person_id is not None:
            check_person_id(person_id)
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
        check_person_id(person_id)
        unknown = set(changes) - {"name", "labels"}
        if unknown:
            raise ValidationError("a person's name and labels are what can change",
                                  {"fields": sorted(unknown)})
        name = check_name(changes["name"]) if "name" in changes else KEEP
        labels = KEEP
        if "labels" in changes:
            labels = check_labels(changes["labels"]) or {}
        p = self.store.update_person(info.id, person_id, name, labels,
                                     entry_of(actor, AuditAction.PERSON_UPDATE, info.name))
        return {"person_id": p.person_id, "name": p.name, "labels": p.labels,
                "collection": info.name, "created_at": p.created_at,
                "faces": [face_dict(f, info.name) for f in p.faces]}

    def merge_persons(self, collection: str, person_id: str, sources: Sequence[str],
                      actor: Actor | None = None) -> dict[str, Any]:
        """Move every face of the ``sources`` persons into ``person_id`` (made, unnamed,
        when new) and remove the emptied persons, in one transaction with its audit
        entry. No shard op: the faces keep their internal ids, and hits are resolved
        to persons from the store, so identify answers the merged id at once."""
        info = self.collection(collection)
        into = check_person_id(person_id)
        if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
            raise ValidationError("'from' lists the person ids to merge")
        srcs = list(dict.fromkeys(check_person_id(s) for s in sources))
        if into in srcs:
            raise ValidationError("a person cannot be merged into itself",
                                  {"person_id": into})
        person, moved = self.store.merge_persons(
            info.id, PersonUpsert(into), srcs,
            entry_of(actor, AuditAction.PERSON_MERGE, info.name))
        return {"person_id": person.person_id, "name": person.name, "labels": person.labels,
                "collection": info.name, "created_at": person.created_at,
                "merged": srcs, "moved_faces": moved,
                "faces": [face_dict(f, info.name) for f in person.faces]}

    # -- export and import
    def export_page(self, collection: str, after: int = 0,
                    limit: int = 1000) -> dict[str, Any]:
        """Faces after internal id ``after`` with their embeddings, for an export that
        streams a collection page by page; ``after`` of the answer is the next call's
        (None after the last page)."""
        info = self.collection(collection)
        limit = check_limit(limit, MAX_EXPORT_PAGE)
        rows = self.store.list_faces(info.id, None, int(after), limit, with_embedding=True)
        thumbs = self.store.thumbnails_of(info.id, [f.id for f in rows]) if rows else {}
        faces = [{"id": f.face_id, "person_id": f.person_id, "name": f.name,
                  "labels": f.labels, "model": info.model, "created_at": f.created_at,
                  "embedding": f.embedding, "thumbnail": thumbs.get(f.id)} for f in rows]
        return {"collection": info.name, "model": info.model, "dim": info.dim,
                "faces": faces, "after": rows[-1].id if len(rows) == limit else None}

    def import_faces(self, collection: str, model: str, dim: int,
                     rows: Sequence[Mapping[str, Any]], create_collection: bool = False,
                     actor: Actor | None = None,
                     copy: bool = False) -> tuple[dict[str, Any], Plan]:
        """Faces exported elsewhere, with their ids: ``{"id", "embedding", "person_id",
        "name"?, "labels"?, "created_at"?}`` each. Ids the collection holds already
        are skipped (an import can be run again), ids another collection holds are
        reported in ``elsewhere``, or with ``copy`` added under new ids (``copied``:
        old id -> new id; a copy of a collection); embeddings are normalised as every
        vector is."""
        check_collection_name(collection)
        model, dim = check_model(model, dim)
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
                                      audit=entry_of(actor, AuditAction.FACE_IMPORT, collection),
                                      copy=copy, thumbnails=[r["thumbnail"] for r in rows])
        a = res.added
        plan = shard_ops(self.nshards, a.collection.id, dim, a.ids, a.buckets, a.embeddings,
                         a.seq)
        return {"collection": collection, "model": a.collection.model, "dim": a.collection.dim,
                "imported": a.face_ids, "skipped": res.skipped,
                "elsewhere": res.elsewhere, "copied": res.copied}, plan

    def replay_register(self, collection: str, idempotency_key: str,
                        request_hash: str) -> tuple[dict[str, Any] | None, Plan]:
        """The answer of the register committed under ``idempotency_key`` (its faces
        re-read, and re-sent to the shards as a replay is), or None when there is none."""
        check_collection_name(collection)
        check_key(idempotency_key)
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
