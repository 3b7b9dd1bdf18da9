"""The shards of a gallery, wherever they run: the :class:`ShardSet` contract, the
in-process :class:`LocalShards` (FAISS, one lock per shard) and the check that a
collection's index holds exactly the store's faces."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from index.merge import merge_topk
from index.shard import IndexConfig, ShardIndex, ShardOp
from index.store import Store

Plan = list[list[ShardOp]]


def verify_ids(store_ids: np.ndarray, index_ids: np.ndarray) -> dict[str, Any]:
    """Compare the store's and the index's id sets of one collection."""
    missing = np.setdiff1d(store_ids, index_ids)
    extra = np.setdiff1d(index_ids, store_ids)
    dup = len(index_ids) - len(np.unique(index_ids))
    return {"store": int(len(store_ids)), "index": int(len(index_ids)),
            "missing_in_index": missing.tolist()[:100], "extra_in_index": extra.tolist()[:100],
            "duplicates_in_index": int(dup),
            "consistent": not len(missing) and not len(extra) and not dup}


class ShardSet(Protocol):
    """The shards of a gallery, wherever they run."""

    nshards: int

    async def apply(self, plan: Plan) -> None: ...
    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]: ...
    async def sizes(self, cid: int) -> list[int]: ...
    async def ids(self, cid: int) -> np.ndarray: ...
    async def info(self) -> list[dict[str, Any]]: ...
    async def sync(self) -> int: ...


class LocalShards:
    """Shards in this process: one lock each; searches fan out on a small thread
    pool (FAISS releases the GIL). They catch up from ``store`` on a gap and on
    :meth:`sync`."""

    def __init__(self, store: Store, nshards: int, config: IndexConfig | None = None,
                 rebuild: bool = True) -> None:
        self.store = store
        self.nshards = nshards
        self.shards = [ShardIndex(i, nshards, config) for i in range(nshards)]
        self._locks = [threading.Lock() for _ in range(nshards)]
        self._pool = ThreadPoolExecutor(max_workers=nshards, thread_name_prefix="shard")
        if rebuild:
            for shard in self.shards:
                shard.rebuild(store)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def _each(self, fn: Callable[[ShardIndex], Any]) -> list[Any]:
        loop = asyncio.get_running_loop()

        def run(i: int) -> Any:
            with self._locks[i]:
                return fn(self.shards[i])

        return list(await asyncio.gather(*(loop.run_in_executor(self._pool, run, i)
                                           for i in range(self.nshards))))

    async def apply(self, plan: Plan) -> None:
        await self._each(lambda s: s.apply(plan[s.shard_no], self.store)
                         if plan[s.shard_no] else None)

    async def search(self, cid: int, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(await self._each(lambda s: s.search(cid, queries, k)), k)

    async def sizes(self, cid: int) -> list[int]:
        return await self._each(lambda s: s.size(cid))

    async def ids(self, cid: int) -> np.ndarray:
        return np.concatenate(await self._each(lambda s: s.ids(cid)))

    async def info(self) -> list[dict[str, Any]]:
        return await self._each(lambda s: s.info())

    async def sync(self) -> int:
        return sum(await self._each(lambda s: s.sync(self.store)))

