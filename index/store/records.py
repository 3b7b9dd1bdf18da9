"""The store's record types: what its methods take and return (plain dataclasses),
and the stable bucket of a face id that places it on a shard."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_BUCKET_MASK = 0x7FFFFFFF


def face_bucket(face_id: str) -> int:
    """Stable 31-bit hash of a public face id (same on every machine and run)."""
    digest = hashlib.blake2b(face_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & _BUCKET_MASK


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    id: int
    name: str
    model: str
    dim: int
    created_at: float
    #: sequence number of the collection's last committed change
    last_seq: int = 0
    #: identify enrols a face that matches nobody as a new unnamed person
    enrol_unknown: bool = False
    #: a small JPEG of each enrolled face is kept (for review)
    thumbnails: bool = True


@dataclass(frozen=True, slots=True)
class PersonUpsert:
    """A person to create, or to update where ``name`` / ``labels`` are not None."""

    person_id: str
    name: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class FaceRecord:
    id: int
    face_id: str
    person_id: str
    bucket: int
    created_at: float
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class PersonRecord:
    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: list[FaceRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HitInfo:
    face_id: str
    person_id: str
    name: str | None
    labels: dict[str, str]


@dataclass(slots=True)
class AddResult:
    """What a register committed (or had committed, for a replayed key).

    ``ids``/``buckets``/``embeddings`` are the rows the shards must hold and
    ``seq`` the change that added them; on a replay they are re-read (with
    their original ``seq``) so a retry also repairs shards that missed the add.
    ``persons`` holds each person's name and labels after the write, so the
    answer needs no read-back.
    """

    collection: CollectionInfo
    face_ids: list[str]
    person_ids: list[str]
    ids: np.ndarray
    buckets: np.ndarray
    embeddings: np.ndarray
    seq: int = 0
    created_at: float = 0.0
    persons: dict[str, tuple[str | None, dict[str, str]]] = field(default_factory=dict)
    replayed: bool = False
    #: what the caller stored beside the key with the first write (``idempotency[2]``)
    extra: Any = None
    #: the write created the collection (a replay: the first write did)
    collection_created: bool = False


@dataclass(frozen=True, slots=True)
class PersonSummary:
    """A person as a listing shows it: its record and how many faces it has."""

    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    faces: int


@dataclass(frozen=True, slots=True)
class ListedFace:
    """A face as a listing or an export shows it, with its person's name and labels."""

    id: int
    face_id: str
    person_id: str
    name: str | None
    labels: dict[str, str]
    created_at: float
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class ImportResult:
    """What an import chunk committed: the faces added (``added``, as a register's
    result, for the shards) and the ids left out because the collection holds them
    already (``skipped``) or another collection does (``elsewhere``), and the faces
    copied under new ids (``copied``: old id -> new id)."""

    added: AddResult
    skipped: list[str]
    elsewhere: list[str]
    copied: dict[str, str] = field(default_factory=dict)


#: "leave this field as it is" in :meth:`_SqlStore.update_person`
KEEP: Any = object()


@dataclass(frozen=True, slots=True)
class DeletedFace:
    id: int
    face_id: str
    bucket: int


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a forget committed: the faces removed and the change's sequence number."""

    faces: list[DeletedFace]
    seq: int
    #: idempotency rows removed with the faces they created (index.erasure)
    idempotency_keys: int = 0
    #: audit entries whose person id was replaced by its keyed hash
    audit_pseudonymised: int = 0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key made through ``/v1/keys``: its public id and the SHA-256 of its secret."""

    id: str
    name: str
    key_sha256: str
    scopes: tuple[str, ...]
    #: None: every collection; else only these (exact names)
    collections: tuple[str, ...] | None
    created_at: float
    last_used_at: float | None = None
    #: Unix time after which the key is refused; None: never
    expires_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The key as ``GET /v1/keys`` shows it: everything but the hash."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "scopes": list(self.scopes),
                               "collections": (None if self.collections is None
                                               else list(self.collections)),
                               "created_at": self.created_at}
        if self.last_used_at is not None:
            out["last_used_at"] = self.last_used_at
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        return out


@dataclass(slots=True)
class Changes:
    """One shard's share of a collection's changes after some sequence number.

    ``full`` means the tombstones no longer reach back that far, so ``ids`` /
    ``vectors`` hold every face of the shard and the shard must replace its
    part instead of patching it. ``exists`` is False when the collection was
    dropped.
    """

    cid: int
    dim: int
    last_seq: int
    ids: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray
    full: bool = False
    exists: bool = True
