"""API keys made through ``/v1/keys``: hashed rows, revocation, a version
counter every change bumps (what ingress replicas poll), and last-use times."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from pipelines.errors import NotFound
from index.audit import AuditEntry
from index.store.base import SqlBase, guarded
from index.store.records import KeyRecord


class KeysMixin(SqlBase):
    """The ``api_keys`` table and its version counter."""

    _KEY = "id, name, key_sha256, scopes, collections, created_at, last_used_at, expires_at"

    @staticmethod
    def _key(row: Sequence[Any]) -> KeyRecord:
        colls = json.loads(row[4]) if row[4] is not None else None
        return KeyRecord(row[0], row[1], row[2], tuple(json.loads(row[3])),
                         None if colls is None else tuple(colls), float(row[5]),
                         None if row[6] is None else float(row[6]),
                         None if row[7] is None else float(row[7]))

    def _bump_keys(self, cur: Any) -> None:
        cur.execute("UPDATE counters SET value = value + 1 WHERE name = 'api_keys'")

    @guarded
    def create_key(self, key: KeyRecord, audit: AuditEntry | None = None) -> KeyRecord:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                "INSERT INTO api_keys (id, name, key_sha256, scopes, collections, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                (key.id, key.name, key.key_sha256, json.dumps(list(key.scopes)),
                 None if key.collections is None else json.dumps(list(key.collections)),
                 key.created_at, key.expires_at))
            self._bump_keys(cur)
            if audit is not None:
                audit.target_key_id = key.id
                self._audit(cur, audit)
        return key

    @guarded
    def revoke_key(self, key_id: str, audit: AuditEntry | None = None) -> KeyRecord:
        with self._tx(write=True) as cur:
            cur.execute(self._q(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
                f"RETURNING {self._KEY}"), (time.time(), key_id))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"API key {key_id!r} does not exist", {"key_id": key_id})
            self._bump_keys(cur)
            if audit is not None:
                audit.target_key_id = key_id
                self._audit(cur, audit)
        return self._key(row)

    @guarded
    def list_keys(self) -> list[KeyRecord]:
        return self.key_table()[1]

    @guarded
    def keys_version(self) -> int:
        """Bumped by every key created or revoked: a cheap "has the table changed?"."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT value FROM counters WHERE name = 'api_keys'")
            return int(cur.fetchone()[0])

    @guarded
    def key_table(self) -> tuple[int, list[KeyRecord]]:
        """The version and every live key, read in one snapshot."""
        with self._tx(write=False, snapshot=True) as cur:
            cur.execute("SELECT value FROM counters WHERE name = 'api_keys'")
            version = int(cur.fetchone()[0])
            cur.execute(f"SELECT {self._KEY} FROM api_keys WHERE revoked_at IS NULL "
                        "ORDER BY created_at, id")
            return version, [self._key(r) for r in cur.fetchall()]

    @guarded
    def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (batched by the ingress replicas)."""
        if not used:
            return
        with self._tx(write=True) as cur:
            # sorted: concurrent touches lock rows in one order
            cur.executemany(self._q(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? "
                "AND (last_used_at IS NULL OR last_used_at < ?)"),
                [(at, kid, at) for kid, at in sorted(used.items())])

