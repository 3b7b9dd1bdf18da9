"""The audit trail in the store: entries inserted as the last statement of the
transaction of the change they record (:meth:`AuditLogMixin._audit`), entries
of their own (identify, reads), filtered reads by cursor, and retention."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from index.audit import AuditEntry
from index.store.base import SqlBase, guarded


class AuditLogMixin(SqlBase):
    """The ``audit_log`` table and its ``seq`` counter."""

    def _audit(self, cur: Any, entry: AuditEntry | None) -> None:
        """Insert ``entry`` in the transaction of ``cur``. Call it last: the counter
        row it updates is locked until the transaction ends (see the module doc)."""
        if entry is None:
            return
        cur.execute("UPDATE counters SET value = value + 1 WHERE name = 'audit' RETURNING value")
        entry.seq = int(cur.fetchone()[0])
        entry.at = time.time()
        cur.execute(self._q(
            "INSERT INTO audit_log (seq, at, action, collection, person_id, key_id, request_id,"
            " status, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (entry.seq, entry.at, entry.action, entry.collection, entry.person_id, entry.key_id,
             entry.request_id, entry.status, entry.details_json()))

    @guarded
    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Record entries that go with no change of their own (identify), in one
        transaction."""
        if not entries:
            return
        with self._tx(write=True) as cur:
            for entry in entries:
                self._audit(cur, entry)

    @guarded
    def audit_entries(self, *, collection: str | None = None, action: str | None = None,
                      since: float | None = None, after_seq: int = 0,
                      limit: int = 100) -> list[AuditEntry]:
        """Entries after ``after_seq``, oldest first, filtered."""
        where, params = ["seq > ?"], [int(after_seq)]
        if collection is not None:
            where.append("collection = ?")
            params.append(collection)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if since is not None:
            where.append("at >= ?")
            params.append(float(since))
        params.append(int(limit))
        with self._tx(write=False) as cur:
            cur.execute(self._q(
                "SELECT seq, at, action, collection, person_id, key_id, request_id, status, "
                f"details FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"),
                params)
            return [AuditEntry.from_row(*r) for r in cur.fetchall()]

    @guarded
    def prune_audit(self, before: float) -> int:
        """Delete the entries recorded before ``before`` (epoch seconds); their seqs are
        never reused, so cursors stay valid."""
        with self._tx(write=True) as cur:
            cur.execute(self._q("DELETE FROM audit_log WHERE at < ?"), (float(before),))
            return max(0, int(cur.rowcount or 0))

