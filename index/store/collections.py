"""Collections: create, read, list, drop, and the steps every write to one takes
(the collection it goes to, bound to a model and dimension, and its next change
number, which is also the collection's write lock)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pipelines.errors import CollectionNotFound, Conflict, ModelMismatch
from index import erasure
from index.audit import AuditEntry
from index.sealing import MasterKey, WrappedKey, rewrap, wrap_new_key
from index.store.base import SqlBase, guarded
from index.store.records import CollectionInfo


class CollectionsMixin(SqlBase):
    """Collections of faces, each bound to one embedding model and dimension."""

    _COLL = "id, name, model, dim, created_at, last_seq, enrol_unknown, thumbnails"

    @staticmethod
    def _coll(row: Sequence[Any]) -> CollectionInfo:
        return CollectionInfo(int(row[0]), row[1], row[2], int(row[3]), float(row[4]),
                              int(row[5]), bool(row[6]), bool(row[7]))

    def _collection_for_write(self, cur: Any, collection: str, model: str, dim: int,
                              create: bool) -> tuple[CollectionInfo, bool]:
        """The collection a write goes to, made first when ``create`` allows it,
        and whether this transaction made it; bound to ``model`` and ``dim``."""
        info = self._find_collection(cur, collection)
        created = False
        if info is None:
            if not create:
                raise CollectionNotFound(f"collection {collection!r} does not exist",
                                         {"collection": collection})
            # two first writes may race here: the loser finds the winner's row
            info = self._create_collection(cur, collection, model, dim)
            created = info is not None
            info = info or self._find_collection(cur, collection)
            if info is None:  # created and dropped again meanwhile
                raise CollectionNotFound(f"collection {collection!r} does not exist",
                                         {"collection": collection})
        if info.model != model or info.dim != dim:
            raise ModelMismatch(
                f"collection {collection!r} holds {info.model} ({info.dim}-d) embeddings, "
                f"not {model} ({dim}-d)",
                {"collection": collection, "collection_model": info.model,
                 "collection_dim": info.dim, "model": model, "dim": dim})
        return info, created

    def _find_collection(self, cur: Any, name: str) -> CollectionInfo | None:
        cur.execute(self._q(f"SELECT {self._COLL} FROM collections WHERE name = ?"), (name,))
        row = cur.fetchone()
        return self._coll(row) if row else None

    @guarded
    def create_collection(self, name: str, model: str, dim: int,
                          audit: AuditEntry | None = None) -> CollectionInfo:
        with self._tx(write=True) as cur:
            info = self._create_collection(cur, name, model, dim)
            if info is None:
                raise Conflict(f"collection {name!r} already exists", {"collection": name})
            self._audit(cur, audit)
        return info

    def _create_collection(self, cur: Any, name: str, model: str,
                           dim: int) -> CollectionInfo | None:
        """Insert a collection; None when one of that name exists (or was just made by a
        concurrent transaction: ON CONFLICT waits for it instead of failing)."""
        cur.execute(self._q(
            "INSERT INTO collections (name, model, dim, created_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {self._COLL}"),
            (name, model, int(dim), time.time()))
        row = cur.fetchone()
        if row is None:
            return None
        info = self._coll(row)
        if self.masters:
            # the collection's own data key, kept only wrapped by the current master key
            key = wrap_new_key(self.masters[0], info.id)
            cur.execute(self._q(
                "UPDATE collections SET data_key = ?, master_key_id = ? WHERE id = ?"),
                (key.wrapped, key.master_key_id, info.id))
        self._collection_created(cur, info)
        return info

    def _collection_created(self, cur: Any, info: CollectionInfo) -> None:
        """Per-collection objects a backend keeps (pgvector: its index and view),
        made in the creating transaction."""

    def _collection_dropped(self, cur: Any, info: CollectionInfo) -> None:
        """Remove what :meth:`_collection_created` made, in the dropping transaction."""

    @guarded
    def get_collection(self, name: str) -> CollectionInfo:
        with self._tx(write=False) as cur:
            info = self._find_collection(cur, name)
        if info is None:
            raise CollectionNotFound(f"collection {name!r} does not exist", {"collection": name})
        return info

    @guarded
    def list_collections(self) -> list[CollectionInfo]:
        with self._tx(write=False) as cur:
            cur.execute(f"SELECT {self._COLL} FROM collections ORDER BY name")
            return [self._coll(r) for r in cur.fetchall()]

    @guarded
    def drop_collection(self, name: str, audit: AuditEntry | None = None) -> CollectionInfo:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                f"DELETE FROM collections WHERE name = ? RETURNING {self._COLL}"), (name,))
            row = cur.fetchone()
            if row is None:
                raise CollectionNotFound(f"collection {name!r} does not exist",
                                         {"collection": name})
            self._collection_dropped(cur, self._coll(row))
            # every person of the collection is forgotten with it
            erasure.pseudonymise_audit(cur, self._q, self.erasure_key, name)
            self._audit(cur, audit)
        return self._coll(row)

    @guarded
    def update_collection(self, name: str, settings: dict[str, bool],
                          audit: AuditEntry | None = None) -> CollectionInfo:
        """Change a collection's settings (``enrol_unknown``, ``thumbnails``), with the
        change's audit entry. Turning thumbnails off deletes the ones kept."""
        sets = [f"{k} = ?" for k in settings if k in ("enrol_unknown", "thumbnails")]
        if len(sets) != len(settings) or not sets:
            raise ValueError(f"unknown collection settings: {sorted(settings)}")
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                f"UPDATE collections SET {', '.join(sets)} WHERE name = ? "
                f"RETURNING {self._COLL}"), [*(int(bool(v)) for v in settings.values()), name])
            row = cur.fetchone()
            if row is None:
                raise CollectionNotFound(f"collection {name!r} does not exist",
                                         {"collection": name})
            if settings.get("thumbnails") is False:
                cur.execute(self._q(
                    "DELETE FROM face_thumbnails WHERE id IN "
                    "(SELECT id FROM faces WHERE collection_id = ?)"), (int(row[0]),))
            self._audit(cur, audit)
        return self._coll(row)

    @guarded
    def rewrap_keys(self, new: MasterKey) -> dict[str, int]:
        """Re-wrap every collection's data key under ``new`` (a master key rotation), in one
        transaction; the templates stay as they are. Keys are opened with :attr:`masters`.
        Counts of collections re-wrapped, already under ``new``, and plain."""
        counts = {"rewrapped": 0, "current": 0, "plain": 0}
        with self._tx(write=True) as cur:
            cur.execute("SELECT id, data_key, master_key_id FROM collections")
            for cid, wrapped, key_id in cur.fetchall():
                if wrapped is None:
                    counts["plain"] += 1
                    continue
                if key_id == new.key_id:
                    counts["current"] += 1
                    continue
                key = rewrap(WrappedKey(bytes(wrapped), key_id), int(cid), self.masters, new)
                cur.execute(self._q(
                    "UPDATE collections SET data_key = ?, master_key_id = ? WHERE id = ?"),
                    (key.wrapped, key.master_key_id, int(cid)))
                counts["rewrapped"] += 1
        return counts

    def _next_seq(self, cur: Any, cid: int) -> int:
        """Take the collection's next change number. The row update is also the
        collection's write lock: its writers commit one at a time, in sequence
        order, and a collection dropped meanwhile is noticed here."""
        cur.execute(self._q(
            "UPDATE collections SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq"),
            (cid,))
        row = cur.fetchone()
        if row is None:
            raise CollectionNotFound("the collection was dropped during the request",
                                     {"collection_id": cid})
        return int(row[0])

