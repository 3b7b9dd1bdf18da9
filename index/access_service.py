"""The access service: the audit trail and the API keys, over the store's audit and
key part (:class:`index.store.AccessStore`).

It is apart from the gallery's face code: an ingress replica's key table is fed
by :meth:`AccessService.key_table`, ``/v1/keys`` and ``/v1/audit`` by the other
methods, and the gallery records its identify and read entries through
:meth:`AccessService.record`. The Serve ``Gallery`` deployment hosts one (same
process, same store connections) and calls it explicitly.

Store calls block (sqlite3 / psycopg), so they run on a thread pool: the
gallery's own when it shares one, else a small pool of this service's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from index.audit import Actor, AuditAction, AuditEntry, entry_of
from index.store import AccessStore, KeyRecord


class AccessService:
    """Audit entries (group-committed), their reading and retention, and API keys.

    ``retention_days``: entries older than that are deleted by :meth:`prune_audit`
    (None: kept for ever).
    """

    def __init__(self, store: AccessStore, pool: Executor | None = None,
                 retention_days: float | None = None, store_threads: int = 2) -> None:
        self.store = store
        self.retention_days = retention_days
        self._own_pool = pool is None
        self._pool = pool or ThreadPoolExecutor(max_workers=store_threads,
                                                thread_name_prefix="access-store")
        # entries waiting for the next group commit (see record)
        self._pending: list[tuple[AuditEntry, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=True)

    # -- the audit trail
    async def record(self, entry: AuditEntry) -> None:
        """Commit an entry of its own (identify, a read, a sampled failed
        authentication) and return once it is durable.

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
            except Exception as exc:  # noqa: BLE001 - each waiting caller fails with it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[dict[str, Any]]:
        entries = await self._db(functools.partial(
            self.store.audit_entries, collection=collection, action=action, since=since,
            after_seq=after_seq, limit=limit))
        return [e.as_dict() for e in entries]

    async def prune_audit(self, now: float | None = None) -> int:
        """Delete entries older than the retention (nothing when it is unset)."""
        return await self._db(self.prune_expired, now)

    def prune_expired(self, now: float | None = None) -> int:
        """:meth:`prune_audit` on the calling thread (a periodic pass of its own)."""
        if self.retention_days is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400.0
        return self.store.prune_audit(cutoff)

    # -- API keys
    async def create_key(self, key: KeyRecord, actor: Actor | None = None) -> dict[str, Any]:
        rec = await self._db(self.store.create_key, key, entry_of(actor, AuditAction.KEY_CREATE))
        return rec.public()

    async def revoke_key(self, key_id: str, actor: Actor | None = None) -> dict[str, Any]:
        rec = await self._db(self.store.revoke_key, key_id,
                             entry_of(actor, AuditAction.KEY_REVOKE))
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
