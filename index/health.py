"""Health of the gallery as numbers: faces per collection, store and shard state, lag.

:func:`read_store` reads what the durable store holds (every collection with
its face and person counts and its last change number); :func:`gallery_report`
sets that beside what each shard copy reports (``ShardIndex.info``: the
change number it has applied per collection, the vectors it holds), so that
a shard's replication lag is the number of committed changes it has not
applied yet. Plain data in, plain data out: the Ray deployment
(``deployments/serve/gallery.py``) and the in-process gallery feed it the same way,
and ``deployments/metrics.py`` turns the report into Prometheus gauges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from index.store import Store


@dataclass(frozen=True)
class CollectionCount:
    name: str
    cid: int
    model: str
    last_seq: int
    faces: int
    persons: int


def read_store(store: Store) -> list[CollectionCount]:
    """Every collection with its counts and last change number (raises when the
    store cannot be read: that is what "store down" means)."""
    out = []
    for info in store.list_collections():
        faces, persons = store.counts(info.id)
        out.append(CollectionCount(info.name, info.id, info.model, info.last_seq, faces, persons))
    return out


def gallery_report(backend: str, collections: list[CollectionCount] | None,
                   store_error: str | None,
                   shards: list[list[dict[str, Any] | None]]) -> dict[str, Any]:
    """The gallery's state from a store read and the shard copies' ``info()``.

    ``collections`` is None when the store could not be read (``store_error``
    says why); ``shards[i][r]`` is copy ``r`` of shard ``i``'s info, None when
    it did not answer. The store must be read *before* the shards: a change
    committed in between then shows as applied early, never as false lag.
    """
    store_seqs = {c.cid: c.last_seq for c in collections or []}
    copies = []
    for shard_no, infos in enumerate(shards):
        for copy_no, info in enumerate(infos):
            row: dict[str, Any] = {"shard": shard_no, "copy": copy_no, "up": info is not None}
            if info is not None:
                applied = {int(cid): int(seq) for cid, seq in info.get("seqs", {}).items()}
                row["faces"] = sum(int(p["size"]) for p in info.get("parts", {}).values())
                row["index_bytes"] = int(info.get("index_bytes") or 0)
                if collections is not None:
                    row["changes_behind"] = sum(max(0, last - applied.get(cid, 0))
                                                for cid, last in store_seqs.items())
            copies.append(row)
    return {
        "store": {"backend": backend, "up": collections is not None, "error": store_error},
        "collections": [{"collection": c.name, "model": c.model, "faces": c.faces,
                         "persons": c.persons, "last_seq": c.last_seq}
                        for c in collections or []],
        "shards": copies,
    }


async def gallery_metrics(store: Store, db: Callable[..., Awaitable[Any]],
                          shard_calls: list[list[Callable[[], Awaitable[Any]]]]) -> dict[str, Any]:
    """The :func:`gallery_report` of a store (read through ``db``, which runs a
    blocking call on the store's threads) and of the shard copies, each fetched by
    its call in ``shard_calls[shard][copy]`` (None: down). The store is read first."""
    try:
        collections, error = await db(read_store, store), None
    except Exception as exc:  # noqa: BLE001 - a store that fails to answer is "down"
        collections, error = None, f"{type(exc).__name__}: {exc}"[:200]
    shards = [list(await asyncio.gather(*(call() for call in copies))) for copies in shard_calls]
    return gallery_report(getattr(store, "backend", "unknown"), collections, error, shards)
