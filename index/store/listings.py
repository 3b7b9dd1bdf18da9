"""Listings and exports (keyset pages), imports that keep their face ids, and
the idempotency keys of register (a retry gets the first answer back)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.errors import Conflict
from index.audit import AuditAction, AuditEntry
from index.store.base import IN_CHUNK, SqlBase, guarded, labels_out
from index.store.records import (AddResult, CollectionInfo, ImportResult, ListedFace,
                                 PersonSummary, PersonUpsert, face_bucket)


def like_escape(text: str) -> str:
    """``text`` as a LIKE pattern (with ``ESCAPE '\\'``) that matches it literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ListingsMixin(SqlBase):
    """Keyset listings, imports and the replay of idempotent registers."""

    # -- listings and exports: keyset pages, one statement (one snapshot) each
    @guarded
    def list_persons(self, cid: int, after: str = "", limit: int = 100,
                     q: str | None = None) -> list[PersonSummary]:
        """Up to ``limit`` persons with ids after ``after``, in person-id order, each
        with its face count; with ``q``, only those whose name or person id contains
        ``q``, case-insensitively (``%``, ``_`` and ``\\`` in it match themselves).
        Keyset pages: a person that exists while a client pages through is on
        exactly one page, whatever is written meanwhile. A search walks the
        collection's key range in order, so a page costs at most one pass over it."""
        where, params = "p.collection_id = ? AND p.person_id > ?", [cid, after]
        if q:
            # both sides through the same LOWER: PostgreSQL folds as its LC_CTYPE says,
            # SQLite with the Unicode-aware LOWER its connections register (sqlite.py)
            pattern = "%" + like_escape(q) + "%"
            where += (" AND (LOWER(p.name) LIKE LOWER(?) ESCAPE '\\' "
                      "OR LOWER(p.person_id) LIKE LOWER(?) ESCAPE '\\')")
            params += [pattern, pattern]
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT p.person_id, p.name, p.labels, p.created_at, "
                "(SELECT COUNT(*) FROM faces f WHERE f.collection_id = p.collection_id "
                f"AND f.person_id = p.person_id) FROM persons p WHERE {where} "
                "ORDER BY p.person_id LIMIT ?"), [*params, int(limit)])
            return [PersonSummary(r[0], r[1], labels_out(r[2]), float(r[3]), int(r[4]))
                    for r in cur.fetchall()]

    @guarded
    def list_faces(self, cid: int, person_id: str | None = None, after: int = 0,
                   limit: int = 100, with_embedding: bool = False) -> list[ListedFace]:
        """Up to ``limit`` faces with internal ids after ``after`` (of one person when
        ``person_id`` is given), in enrolment order (internal ids are never reused),
        with their persons' names and labels and, for exports, their embeddings."""
        cols = "f.id, f.face_id, f.person_id, p.name, p.labels, f.created_at"
        if with_embedding:
            cols += ", " + self._EMB.replace("embedding", "f.embedding")
        where, params = "f.collection_id = ? AND f.id > ?", [cid, int(after)]
        if person_id is not None:
            where += " AND f.person_id = ?"
            params.append(person_id)
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                f"SELECT {cols} FROM faces f JOIN persons p ON p.collection_id = f.collection_id "
                f"AND p.person_id = f.person_id WHERE {where} ORDER BY f.id LIMIT ?"),
                [*params, int(limit)])
            rows = cur.fetchall()
            sealer = self._sealer_of(cur, cid) if with_embedding else None
            return [ListedFace(int(r[0]), r[1], r[2], r[3], labels_out(r[4]), float(r[5]),
                               self._open_one(sealer, int(r[0]), r[6]) if with_embedding
                               else None) for r in rows]

    # -- imports
    @guarded
    def import_faces(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                     person_ids: Sequence[str], embeddings: np.ndarray,
                     created_at: Sequence[float], persons: Sequence[PersonUpsert], *,
                     create: bool = False, audit: AuditEntry | None = None,
                     copy: bool = False,
                     thumbnails: Sequence[bytes | None] | None = None) -> ImportResult:
        """Add faces that keep the ids (and enrolment times) they had elsewhere, as one
        change; ids the collection already holds are skipped, so an import runs again
        safely, and ids another collection holds are left out (``elsewhere``), or
        with ``copy`` added under new ids (``copied``: old id -> new id; each copy
        remembers its origin, so importing the same lines again skips them).
        ``audit`` is recorded in the same transaction, with the faces added."""
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        n = len(face_ids)
        if emb.shape != (n, dim) or len(person_ids) != n or len(created_at) != n:
            raise ValueError("face_ids, person_ids, embeddings and created_at must match")
        for attempt in range(2):
            try:
                return self._import(collection, model, dim, face_ids, person_ids, emb,
                                    created_at, persons, create, audit, copy, thumbnails)
            except self._integrity as e:
                # the same ids committed by a concurrent import into another
                # collection after the check: the second look sees them
                if attempt:
                    raise Conflict("face ids were imported concurrently elsewhere; retry",
                                   {"collection": collection}) from e
        raise AssertionError("unreachable")

    def _import(self, collection: str, model: str, dim: int, face_ids: Sequence[str],
                person_ids: Sequence[str], emb: np.ndarray, created_at: Sequence[float],
                persons: Sequence[PersonUpsert], create: bool,
                audit: AuditEntry | None, copy: bool = False,
                thumbnails: Sequence[bytes | None] | None = None) -> ImportResult:
        with self._tx(write=True) as cur:
            info, created = self._collection_for_write(cur, collection, model, dim, create)
            # the collection's write lock first: a concurrent import of the same
            # ids into this collection waits here, then finds them below
            seq = self._next_seq(cur, info.id)
            n = len(face_ids)
            where: dict[str, int] = {}
            for i in range(0, n, IN_CHUNK):
                cond, params = self._any("face_id", face_ids[i:i + IN_CHUNK])
                cur.execute(self._q(f"SELECT face_id, collection_id FROM faces WHERE {cond}"),
                            params)
                where.update((r[0], int(r[1])) for r in cur.fetchall())
            skipped = [f for f in face_ids if where.get(f) == info.id]
            elsewhere = [f for f in face_ids if f in where and where[f] != info.id]
            copied: dict[str, str] = {}
            if copy and elsewhere:
                # copies made by an earlier run of this import are skipped, as the
                # faces that kept their ids are
                done: set[str] = set()
                for i in range(0, len(elsewhere), IN_CHUNK):
                    cond, params = self._any("origin", elsewhere[i:i + IN_CHUNK])
                    cur.execute(self._q(
                        f"SELECT origin FROM faces WHERE collection_id = ? AND {cond}"),
                        [info.id, *params])
                    done.update(r[0] for r in cur.fetchall())
                skipped += [f for f in elsewhere if f in done]
                copied = {f: os.urandom(16).hex() for f in elsewhere if f not in done}
                elsewhere = []
            keep = [i for i in range(n) if face_ids[i] not in where or face_ids[i] in copied]
            now = time.time()
            wanted = {person_ids[i] for i in keep}
            stored = self._upsert_persons(
                cur, info.id, [p for p in persons if p.person_id in wanted], now)
            k = len(keep)
            ids = self._next_ids(cur, k) if k else np.empty(0, np.int64)
            kept_ids = [copied.get(face_ids[i], face_ids[i]) for i in keep]
            buckets = np.fromiter((face_bucket(f) for f in kept_ids), dtype=np.int64, count=k)
            kept_emb = emb[keep].reshape(k, dim)
            if k:
                sealer = self._sealer_of(cur, info.id)
                self._insert_faces(cur, [
                    (int(ids[j]), kept_ids[j], info.id, person_ids[i], int(buckets[j]),
                     self._seal(sealer, int(ids[j]), kept_emb[j]), float(created_at[i]), seq)
                    for j, i in enumerate(keep)])
            if thumbnails:
                self._insert_thumbnails(cur, info, [int(ids[j]) for j in range(k)],
                                        [thumbnails[i] for i in keep])
            if copied:
                cur.executemany(self._q(
                    "UPDATE faces SET origin = ? WHERE collection_id = ? AND face_id = ?"),
                    [(old, info.id, new) for old, new in copied.items()])
            if audit is not None:
                if created:
                    self._audit(cur, AuditEntry(
                        AuditAction.COLLECTION_CREATE.value, collection, key_id=audit.key_id,
                        request_id=audit.request_id))
                audit.face_ids = kept_ids
                self._audit(cur, audit)
        added = AddResult(info, kept_ids, [person_ids[i] for i in keep], ids, buckets,
                          kept_emb, seq, now, stored, collection_created=created)
        return ImportResult(added, skipped, elsewhere, copied)

    # -- idempotency keys
    @guarded
    def replay(self, collection: str, key: str, request_hash: str) -> AddResult | None:
        """The stored result of the register made under ``key`` (re-read, as a replay),
        or None when no write under that key was committed; a :class:`Conflict`
        when the key was used with another request."""
        with self._tx(write=False) as cur:
            info = self._find_collection(cur, collection)
            if info is None:
                return None
            cur.execute(self._q(
                "SELECT request_hash, response FROM idempotency_keys "
                "WHERE collection_id = ? AND key = ?"), (info.id, key))
            row = cur.fetchone()
            if row is None or row[1] is None:
                return None
            if row[0] != request_hash:
                raise Conflict(f"idempotency key {key!r} was used with a different request",
                               {"idempotency_key": key})
            return self._replayed(cur, info, row[1])

    def _claim_key(self, cur: Any, info: CollectionInfo,
                   idempotency: tuple[str, ...]) -> AddResult | None:
        key, request_hash = idempotency[0], idempotency[1]
        # Inserting first makes a concurrent retry with the same key wait for this
        # transaction (unique index), then find the stored response.
        cur.execute(self._q(
            "INSERT INTO idempotency_keys (collection_id, key, request_hash, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (collection_id, key) DO NOTHING RETURNING key"),
            (info.id, key, request_hash, time.time()))
        if cur.fetchone() is not None:
            return None
        cur.execute(self._q(
            "SELECT request_hash, response FROM idempotency_keys "
            "WHERE collection_id = ? AND key = ?"), (info.id, key))
        stored_hash, response = cur.fetchone()
        if stored_hash != request_hash or response is None:
            raise Conflict(f"idempotency key {key!r} was used with a different request",
                           {"idempotency_key": key})
        return self._replayed(cur, info, response)

    def _replayed(self, cur: Any, info: CollectionInfo, response: str) -> AddResult:
        """The result of the write whose stored answer is ``response``, re-read."""
        face_ids, person_ids, *rest = json.loads(response)
        rows = self._faces_by_public_id(cur, info.id, face_ids)
        # faces forgotten since the first answer stay forgotten: only the rest are re-sent
        seq = max((int(r[3]) for r in rows), default=0)
        created = min((float(r[4]) for r in rows), default=0.0)
        persons: dict[str, tuple[str | None, dict[str, str]]] = {}
        for pid in dict.fromkeys(person_ids):
            cur.execute(self._q("SELECT name, labels FROM persons WHERE collection_id = ? "
                                "AND person_id = ?"), (info.id, pid))
            row = cur.fetchone()
            persons[pid] = (row[0], labels_out(row[1])) if row else (None, {})
        return AddResult(
            info, face_ids, person_ids,
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            self._open(self._sealer_of(cur, info.id), [int(r[0]) for r in rows],
                       [r[2] for r in rows], info.dim), seq, created, persons,
            replayed=True, extra=rest[0] if rest else None,
            collection_created=bool(rest[1]) if len(rest) > 1 else False)

    def _faces_by_public_id(self, cur: Any, cid: int, face_ids: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        for i in range(0, len(face_ids), IN_CHUNK):
            cond, params = self._any("face_id", face_ids[i:i + IN_CHUNK])
            cur.execute(self._q(
                f"SELECT id, bucket, {self._EMB}, seq, created_at FROM faces "
                f"WHERE collection_id = ? AND {cond}"), [cid, *params])
            rows.extend(cur.fetchall())
        return rows

