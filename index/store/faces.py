"""Faces and persons: register, read, forget, rename. Each write is one
transaction with its change number (``collections``), its tombstones
(``changes``) and its audit entry (``audit_log``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.errors import NotFound
from index import erasure
from index.audit import AuditAction, AuditEntry
from index.store.base import IN_CHUNK, SqlBase, guarded, labels_in, labels_out
from index.store.records import (KEEP, AddResult, CollectionInfo, Deleted, DeletedFace,
                                 FaceRecord, HitInfo, PersonRecord, PersonUpsert, face_bucket)


class FacesMixin(SqlBase):
    """Faces with their persons; names and labels live in the person's row."""

    def _upsert_persons(self, cur: Any, cid: int, persons: Sequence[PersonUpsert],
                        now: float) -> dict[str, tuple[str | None, dict[str, str]]]:
        """Create or update the persons a write names; ``{person_id: (name, labels)}``
        as stored (a field the write leaves out keeps its stored value)."""
        stored: dict[str, tuple[str | None, dict[str, str]]] = {}
        # sorted: concurrent writes lock persons in one order (no deadlock)
        for p in sorted(persons, key=lambda p: p.person_id):
            cur.execute(self._q(
                "INSERT INTO persons (collection_id, person_id, name, labels, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection_id, person_id) DO UPDATE "
                "SET name = COALESCE(excluded.name, persons.name), "
                "labels = COALESCE(excluded.labels, persons.labels) "
                "RETURNING person_id, name, labels"),
                (cid, p.person_id, p.name, labels_in(p.labels), now))
            row = cur.fetchone()
            stored[row[0]] = (row[1], labels_out(row[2]))
        return stored


    def _insert_thumbnails(self, cur: Any, info: CollectionInfo, ids: Sequence[int],
                           thumbnails: Sequence[bytes | None] | None) -> None:
        """Keep the JPEG of each new face that has one, when the collection keeps them
        (in the write's transaction; deleted with the face by the foreign key). A
        collection that seals its templates seals them too, under the negated face
        number, so a thumbnail's ciphertext never opens as a template or the reverse."""
        if not thumbnails or not info.thumbnails:
            return
        sealer = self._sealer_of(cur, info.id)
        rows = [(int(i), t if sealer is None else sealer.seal(-int(i), t))
                for i, t in zip(ids, thumbnails, strict=True) if t]
        if rows:
            cur.executemany(self._q("INSERT INTO face_thumbnails (id, jpeg) VALUES (?, ?)"),
                            rows)

    @guarded
    def get_thumbnail(self, cid: int, face_id: str) -> bytes | None:
        """The face's JPEG thumbnail, None when it has none; NotFound for no such face."""
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT f.id, t.jpeg FROM faces f LEFT JOIN face_thumbnails t ON t.id = f.id "
                "WHERE f.collection_id = ? AND f.face_id = ?"), (cid, face_id))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
            return None if row[1] is None else self._open_thumbnail(cur, cid, row[0], row[1])

    def _open_thumbnail(self, cur: Any, cid: int, face_no: int, value: Any) -> bytes:
        sealer = self._sealer_of(cur, cid)
        return bytes(value) if sealer is None else sealer.open(-int(face_no), bytes(value))

    @guarded
    def thumbnails_of(self, cid: int, ids: Sequence[int]) -> dict[int, bytes]:
        """The thumbnails of faces of collection ``cid`` by internal id (an export page's)."""
        out: dict[int, bytes] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(ids), IN_CHUNK):
                cond, params = self._any("id", [int(x) for x in ids[i:i + IN_CHUNK]])
                cur.execute(self._q(f"SELECT id, jpeg FROM face_thumbnails WHERE {cond}"),
                            params)
                out.update((int(r[0]), self._open_thumbnail(cur, cid, r[0], r[1]))
                           for r in cur.fetchall())
        return out

    # -- register
    @guarded
    def add_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                  person_ids: Sequence[str], embeddings: np.ndarray,
                  persons: Sequence[PersonUpsert], *, create: bool = False,
                  idempotency: tuple[Any, ...] | None = None,
                  audit: AuditEntry | None = None,
                  thumbnails: Sequence[bytes | None] | None = None) -> AddResult:
        """Commit new faces (and upsert their persons) as one change, with its audit
        entry.

        ``idempotency`` is ``(key, request hash)`` or ``(key, request hash, extra)``:
        the first write under a key stores its answer (and ``extra``, any JSON value),
        a repeat with the same hash gets it back (``replayed``), another request
        under the same key a :class:`Conflict`.
        """
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        n = len(face_ids)
        if emb.shape != (n, dim) or len(person_ids) != n:
            raise ValueError("face_ids, person_ids and embeddings must have matching lengths")
        with self._tx(write=True) as cur:
            info, created = self._collection_for_write(cur, collection, model, dim, create)
            if idempotency is not None:
                replay = self._claim_key(cur, info, idempotency)
                if replay is not None:
                    return replay
            seq = self._next_seq(cur, info.id)
            now = time.time()
            stored = self._upsert_persons(cur, info.id, persons, now)
            ids = self._next_ids(cur, n)
            buckets = np.fromiter((face_bucket(f) for f in face_ids), dtype=np.int64, count=n)
            row_bytes = emb.reshape(n, dim)
            sealer = self._sealer_of(cur, info.id)
            self._insert_faces(cur, [
                (int(ids[i]), face_ids[i], info.id, person_ids[i], int(buckets[i]),
                 self._seal(sealer, int(ids[i]), row_bytes[i]), now, seq) for i in range(n)])
            self._insert_thumbnails(cur, info, ids, thumbnails)
            if idempotency is not None:
                # [faces, persons, extra, created]: a replay is the first answer, whether
                # this write created the collection included (older rows hold 2-3 items)
                extra = idempotency[2] if len(idempotency) > 2 else None
                answer = [list(face_ids), list(person_ids), extra, created]
                cur.execute(self._q(
                    "UPDATE idempotency_keys SET response = ? WHERE collection_id = ? AND key = ?"),
                    (json.dumps(answer), info.id, idempotency[0]))
            if audit is not None:
                if created:
                    self._audit(cur, AuditEntry(
                        AuditAction.COLLECTION_CREATE.value, collection, key_id=audit.key_id,
                        request_id=audit.request_id))
                audit.face_ids = list(face_ids)
                distinct = list(dict.fromkeys(person_ids))
                audit.person_id = distinct[0] if len(distinct) == 1 else None
                audit.person_ids = None if len(distinct) == 1 else list(person_ids)
                self._audit(cur, audit)
        return AddResult(info, list(face_ids), list(person_ids), ids, buckets, emb, seq, now,
                         stored, collection_created=created)


    # -- faces and persons
    def _face(self, row: Sequence[Any], emb: np.ndarray | None = None) -> FaceRecord:
        return FaceRecord(int(row[0]), row[1], row[2], int(row[3]), float(row[4]), emb)

    @guarded
    def get_face(self, cid: int, face_id: str, with_embedding: bool = False) -> FaceRecord:
        cols = "id, face_id, person_id, bucket, created_at"
        if with_embedding:
            cols += f", {self._EMB}"
        with self._tx(write=False) as cur:
            cur.execute(self._q(f"SELECT {cols} FROM faces WHERE collection_id = ? AND face_id = ?"),
                        (cid, face_id))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"face {face_id!r} does not exist", {"face_id": face_id})
            emb = (self._open_one(self._sealer_of(cur, cid), int(row[0]), row[5])
                   if with_embedding else None)
        return self._face(row, emb)

    @guarded
    def delete_faces(self, cid: int, face_ids: Sequence[str],
                     audit: AuditEntry | None = None) -> Deleted:
        out: list[DeletedFace] = []
        with self._tx(write=True) as cur:
            seq = self._next_seq(cur, cid)
            for i in range(0, len(face_ids), IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + IN_CHUNK])
                cur.execute(self._q(
                    f"DELETE FROM faces WHERE collection_id = ? AND {cond} "
                    "RETURNING id, face_id, bucket"), [cid, *params])
                out.extend(DeletedFace(int(r[0]), r[1], int(r[2])) for r in cur.fetchall())
            self._tombstone(cur, cid, seq, out)
            idem = erasure.forget_idempotency(cur, self._q, cid, [d.face_id for d in out])
            if out:
                self._forget_cluster_jobs(cur, cid)
            if audit is not None and out:  # nothing forgotten, nothing to record
                audit.face_ids = [d.face_id for d in out]
                self._audit(cur, audit)
        return Deleted(out, seq, idem)

    def _person(self, cur: Any, cid: int, person_id: str) -> PersonRecord:
        cur.execute(self._q(
            "SELECT person_id, name, labels, created_at FROM persons "
            "WHERE collection_id = ? AND person_id = ?"), (cid, person_id))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"person {person_id!r} does not exist", {"person_id": person_id})
        person = PersonRecord(row[0], row[1], labels_out(row[2]), float(row[3]))
        cur.execute(self._q(
            "SELECT id, face_id, person_id, bucket, created_at FROM faces "
            "WHERE collection_id = ? AND person_id = ? ORDER BY id"), (cid, person_id))
        person.faces = [self._face(r) for r in cur.fetchall()]
        return person

    @guarded
    def get_person(self, cid: int, person_id: str) -> PersonRecord:
        with self._tx(write=False) as cur:
            return self._person(cur, cid, person_id)

    @guarded
    def delete_person(self, cid: int, person_id: str,
                      audit: AuditEntry | None = None) -> tuple[PersonRecord, Deleted]:
        with self._tx(write=True) as cur:
            seq = self._next_seq(cur, cid)
            person = self._person(cur, cid, person_id)
            cur.execute(self._q(
                "DELETE FROM faces WHERE collection_id = ? AND person_id = ? "
                "RETURNING id, face_id, bucket"), (cid, person_id))
            deleted = [DeletedFace(int(r[0]), r[1], int(r[2])) for r in cur.fetchall()]
            cur.execute(self._q(
                "DELETE FROM persons WHERE collection_id = ? AND person_id = ?"), (cid, person_id))
            self._tombstone(cur, cid, seq, deleted)
            idem = erasure.forget_idempotency(cur, self._q, cid, [d.face_id for d in deleted])
            self._forget_cluster_jobs(cur, cid)
            cur.execute(self._q("SELECT name FROM collections WHERE id = ?"), (cid,))
            cname = cur.fetchone()[0]
            hidden = erasure.pseudonymise_audit(cur, self._q, self.erasure_key, cname,
                                                [person_id])
            if audit is not None:
                # the forget's own entry names the person by its keyed hash too
                audit.person_id = erasure.pseudonym(self.erasure_key, cname, person_id)
                audit.face_ids = [d.face_id for d in deleted]
                self._audit(cur, audit)
        return person, Deleted(deleted, seq, idem, hidden)

    @guarded
    def lookup(self, cid: int, ids: Sequence[int]) -> dict[int, HitInfo]:
        ids = sorted({int(i) for i in ids})
        out: dict[int, HitInfo] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(ids), IN_CHUNK):
                cond, params = self._any("f.id", ids[i:i + IN_CHUNK])
                # by primary key only: with "f.collection_id = ?" in the WHERE, SQLite
                # may walk the (collection_id, person_id) index over the whole collection
                cur.execute(self._q(
                    "SELECT f.id, f.face_id, f.person_id, p.name, p.labels, f.collection_id "
                    "FROM faces f JOIN persons p ON p.collection_id = f.collection_id "
                    f"AND p.person_id = f.person_id WHERE {cond}"), params)
                for r in cur.fetchall():
                    if int(r[5]) == cid:
                        out[int(r[0])] = HitInfo(r[1], r[2], r[3], labels_out(r[4]))
        return out

    @guarded
    def existing_face_ids(self, cid: int, face_ids: Sequence[str]) -> set[str]:
        """Which of ``face_ids`` the collection holds (imports skip those)."""
        found: set[str] = set()
        with self._tx(write=False) as cur:
            for i in range(0, len(face_ids), IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + IN_CHUNK])
                cur.execute(self._q(f"SELECT face_id FROM faces WHERE collection_id = ? AND {cond}"),
                            [cid, *params])
                found.update(r[0] for r in cur.fetchall())
        return found

    @guarded
    def counts(self, cid: int) -> tuple[int, int]:
        with self._tx(write=False) as cur:
            cur.execute(self._q("SELECT COUNT(*) FROM faces WHERE collection_id = ?"), (cid,))
            faces = int(cur.fetchone()[0])
            cur.execute(self._q("SELECT COUNT(*) FROM persons WHERE collection_id = ?"), (cid,))
            return faces, int(cur.fetchone()[0])

    @guarded
    def face_ids_internal(self, cid: int) -> np.ndarray:
        with self._tx(write=False) as cur:
            cur.execute(self._q("SELECT id FROM faces WHERE collection_id = ? ORDER BY id"), (cid,))
            return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)

    # -- persons
    @guarded
    def update_person(self, cid: int, person_id: str, name: Any = KEEP,
                      labels: Any = KEEP, audit: AuditEntry | None = None) -> PersonRecord:
        """Rename (``name``, None clears it) or relabel (``labels`` replaces the map)
        a person; fields left at :data:`KEEP` stay. Names and labels live in the
        person's row only (hits are resolved through it), so no index changes;
        ``audit`` is recorded in the same transaction."""
        sets: list[str] = []
        params: list[Any] = []
        if name is not KEEP:
            sets.append("name = ?")
            params.append(name)
        if labels is not KEEP:
            sets.append("labels = ?")
            params.append(labels_in(labels or {}))
        with self._tx(write=True) as cur:
            if sets:
                cur.execute(self._q(
                    f"UPDATE persons SET {', '.join(sets)} WHERE collection_id = ? "
                    "AND person_id = ?"), [*params, cid, person_id])
            person = self._person(cur, cid, person_id)
            if audit is not None:
                audit.person_id = person_id
                self._audit(cur, audit)
            return person


    # -- merge
    @guarded
    def merge_persons(self, cid: int, into: PersonUpsert, sources: Sequence[str],
                      audit: AuditEntry | None = None) -> tuple[PersonRecord, list[str]]:
        """Move every face of the ``sources`` persons into ``into`` (made when new) and
        remove the emptied persons, as one change with its audit entry. Faces keep
        their internal ids, so the shards hold nothing to change: hits are resolved
        to persons from the store when a search answers. Returns the merged person
        and the faces that moved; a source that does not exist is :class:`NotFound`."""
        with self._tx(write=True) as cur:
            self._next_seq(cur, cid)  # the collection's write lock, as every write takes
            for pid in sources:  # all sources exist, or nothing changes
                cur.execute(self._q("SELECT 1 FROM persons WHERE collection_id = ? "
                                    "AND person_id = ?"), (cid, pid))
                if cur.fetchone() is None:
                    raise NotFound(f"person {pid!r} does not exist", {"person_id": pid})
            self._upsert_persons(cur, cid, [into], time.time())
            cond, params = self._any("person_id", list(sources))
            cur.execute(self._q(
                f"UPDATE faces SET person_id = ? WHERE collection_id = ? AND {cond} "
                "RETURNING face_id"), [into.person_id, cid, *params])
            moved = sorted(r[0] for r in cur.fetchall())
            cur.execute(self._q(f"DELETE FROM persons WHERE collection_id = ? AND {cond}"),
                        [cid, *params])
            person = self._person(cur, cid, into.person_id)
            if audit is not None:
                audit.person_id = into.person_id
                audit.person_ids = list(sources)
                audit.face_ids = moved
                self._audit(cur, audit)
        return person, moved

