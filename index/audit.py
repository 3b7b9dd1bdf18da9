"""The audit trail's records: who changed or searched what, and when.

An :class:`Actor` says who makes a request (the API key's id, ``"settings"``
for a key from the settings, None when authentication is off) and under which
request id; the ingress builds it and every gallery write carries it to the
store. The store turns it into an :class:`AuditEntry` and inserts the entry
in the very transaction of the change it records, so one cannot exist
without the other. Entries name collections, faces, persons and keys by
their public ids; they never hold an embedding, an image or a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class AuditAction(str, Enum):
    FACE_REGISTER = "face.register"
    FACE_FORGET = "face.forget"
    PERSON_FORGET = "person.forget"
    PERSON_UPDATE = "person.update"
    PERSON_MERGE = "person.merge"
    FACE_IMPORT = "face.import"
    COLLECTION_CREATE = "collection.create"
    COLLECTION_DROP = "collection.drop"
    COLLECTION_UPDATE = "collection.update"
    #: identify enrolled a face that matched nobody as a new person
    FACE_ENROL_UNKNOWN = "face.enrol_unknown"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    IDENTIFY = "identify"
    # reads of stored data (audit.reads): who read how many rows of which collection
    FACE_READ = "face.read"
    PERSON_READ = "person.read"
    PERSONS_LIST = "persons.list"
    FACES_LIST = "faces.list"
    EXPORT = "export"
    #: a clustering run (POST .../clusters): rows are the faces whose templates it read
    CLUSTERS = "clusters"
    #: failed authentications, sampled (at most one entry per client a minute)
    AUTH_FAILURE = "auth.failure"


#: the ``key_id`` of entries made with a key from the settings (``api_key_sha256``)
SETTINGS_KEY_ID = "settings"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a request: the key's id and the request id it came with.

    ``may_create`` says whether an enrolment may create its collection (only
    keys with the ``admin`` scope, or any request when authentication is off).
    """

    key_id: str | None = None
    request_id: str | None = None
    may_create: bool = True
    #: whether the key may write (an identify enrols strangers only for such a key)
    may_write: bool = True

    def entry(self, action: AuditAction, collection: str | None = None,
              **fields: Any) -> AuditEntry:
        return AuditEntry(action.value, collection, key_id=self.key_id,
                          request_id=self.request_id, **fields)


def entry_of(actor: Actor | None, action: AuditAction,
             collection: str | None = None) -> AuditEntry | None:
    """The entry of a change made by ``actor``; None (nothing recorded) without one."""
    return None if actor is None else actor.entry(action, collection)


@dataclass(slots=True)
class AuditEntry:
    """One line of the audit trail. ``seq`` and ``at`` are set by the store when it
    inserts the entry; ``face_ids`` / ``person_id`` are completed there with what the
    change actually touched."""

    action: str
    collection: str | None = None
    face_ids: list[str] | None = None
    person_id: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    status: str = "ok"
    #: register of several persons: the person of each face (aligned with face_ids)
    person_ids: list[str] | None = None
    #: identify: the nearest enrolled face of each probe face (None: nothing enrolled)
    matches: list[str | None] | None = None
    #: key.create / key.revoke: the key created or revoked
    target_key_id: str | None = None
    seq: int = 0
    at: float = 0.0
    #: reads: the rows answered (faces or persons)
    rows: int | None = None
    #: auth.failure: the client address and the failures it made in the window
    client: str | None = None
    failures: int | None = None

    #: optional fields stored together as one JSON column
    DETAIL_FIELDS = ("face_ids", "person_ids", "matches", "target_key_id", "rows", "client",
                     "failures")

    def details_json(self) -> str | None:
        d = {k: getattr(self, k) for k in self.DETAIL_FIELDS if getattr(self, k) is not None}
        return json.dumps(d, separators=(",", ":")) if d else None

    @classmethod
    def from_row(cls, seq: int, at: float, action: str, collection: str | None,
                 person_id: str | None, key_id: str | None, request_id: str | None,
                 status: str, details: str | None) -> AuditEntry:
        d = json.loads(details) if details else {}
        return cls(action, collection, d.get("face_ids"), person_id, key_id, request_id, status,
                   d.get("person_ids"), d.get("matches"), d.get("target_key_id"), int(seq),
                   float(at), d.get("rows"), d.get("client"), d.get("failures"))

    def as_dict(self) -> dict[str, Any]:
        """The entry as ``GET /v1/audit`` shows it (absent optional fields left out)."""
        out: dict[str, Any] = {"seq": self.seq, "at": self.at, "action": self.action}
        if self.collection is not None:
            out["collection"] = self.collection
        for k in ("face_ids", "person_id", "person_ids", "matches", "target_key_id", "rows",
                  "client", "failures"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out.update(key_id=self.key_id, request_id=self.request_id, status=self.status)
        return out
