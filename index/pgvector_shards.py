"""The gallery's ``ShardSet`` over SQL, for the pgvector backend.

With pgvector the database is the index: a committed write is already in the
collection's HNSW index, so :meth:`SqlShards.apply` has nothing to do, and a
search is one SQL statement (``PgvectorStore.nearest``). There is a single
"shard" (the table), no actor and no catch-up: the change log is still
written by every commit (it is the store's), but nothing here needs to read it.
Searches run on a small thread pool of their own, each thread with its own
connection, so they do not queue behind the gallery's writes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from index.store.pgvector import PgvectorStore


class SqlShards:
    """``index.gallery.ShardSet`` for a :class:`PgvectorStore`."""

    nshards = 1

    def __init__(self, store: PgvectorStore, search_threads: int = 4,
                 ef_search: int | None = None) -> None:
        self.store = store
        self.ef_search = ef_search
        self._pool = ThreadPoolExecutor(max_workers=search_threads,
                                        thread_name_prefix="pgvector-search")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def apply(self, plan: Any) -> None:
        """Nothing to do: the commit that produced the plan updated the index."""

    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(self.store.nearest, cid, queries, k, self.ef_search)

    async def sizes(self, cid: int) -> list[int]:
        faces, _persons = await self._run(self.store.counts, cid)
        return [faces]

    async def ids(self, cid: int) -> np.ndarray:
        return await self._run(self.store.face_ids_internal, cid)

    async def info(self) -> list[dict[str, Any]]:
        return [{"shard": 0, "nshards": 1, "index_type": "pgvector-hnsw",
                 "collections": await self._run(self.store.index_info)}]

    async def sync(self) -> int:
        return 0

    async def ready(self) -> None:
        await self._run(self.store.schema_version)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
