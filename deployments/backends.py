"""The backends of ``pipelines.flow.Flow``: Serve deployment handles, or stages in-process.

Over Serve, every stage call returns the handle's ``DeploymentResponse`` at
once and the next stage receives it as an argument, so Serve hands the
Detector's result to the Embedder (and the Embedder's to the Gallery) without
the ingress awaiting, decoding and re-sending it. In-process (the fused
topology, and tests without Ray), a reference is an ``asyncio`` task: the next
stage awaits it where it runs. The Gallery is always a deployment when the
app has one; given an in-process reference it awaits it first (there is no
hop to save).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import Any

from pipelines.flow import identify_embedded, register_embedded
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest


def _is_serve_response(value: Any) -> bool:
    from ray.serve.handle import DeploymentResponse

    return isinstance(value, DeploymentResponse)


# --------------------------------------------------------------------------- Serve


class ServeDetector:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def detect(self, request: DetectRequest) -> Awaitable[Any]:
        return self._h.detect.remote(request)

    def __getattr__(self, name: str) -> Any:  # ready, stats
        return getattr(self._h, name).remote


class ServeEmbedder:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def embed(self, detected: Any, model: str) -> Awaitable[Any]:
        return self._h.embed.remote(detected, model)

    def embed_chips(self, request: EmbedRequest) -> Awaitable[Any]:
        return self._h.embed_chips.remote(request)

    async def info(self, model: str) -> Any:
        return await self._h.embedder_info.remote(model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name).remote


class ServeAnalyzer:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def analyze(self, detected: Any, actions: tuple[str, ...]) -> Awaitable[Any]:
        return self._h.analyze.remote(detected, actions)

    def analyze_chips(self, request: AnalyzeRequest) -> Awaitable[Any]:
        return self._h.analyze_chips.remote(request)

    async def info(self, action: str) -> Any:
        return await self._h.attribute_info.remote(action)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name).remote


class ServeGallery:
    """The Gallery deployment; any of its methods is ``await gallery.method(...)``."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @staticmethod
    async def _value(ref: Any) -> Any:
        if _is_serve_response(ref) or not inspect.isawaitable(ref):
            return ref  # Serve resolves a response argument where the Gallery runs
        return await ref

    async def identify_embedded(self, embedded: Any, collection: str, k: int,
                                per_person: bool, actor: Any = None) -> Any:
        return await self._h.identify_embedded.remote(await self._value(embedded), collection,
                                                      k, per_person, actor)

    async def register_embedded(self, collection: str, metas: list[dict[str, Any]],
                                idempotency_key: str | None, embedded: list[Any],
                                actor: Any = None, *, request_hash: str | None = None,
                                create: bool = True) -> Any:
        refs = [await self._value(e) for e in embedded]
        return await self._h.register_embedded.remote(collection, metas, idempotency_key, actor,
                                                      *refs, request_hash=request_hash,
                                                      create=create)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name).remote


# --------------------------------------------------------------------------- in-process


class _Local:
    def __init__(self, stages: Any) -> None:
        self.stages = stages

    def __getattr__(self, name: str) -> Any:  # ready, stats
        return getattr(self.stages, name)


class LocalDetector(_Local):
    def detect(self, request: DetectRequest) -> Awaitable[Any]:
        return asyncio.ensure_future(self.stages.detect(request))


class LocalEmbedder(_Local):
    def embed(self, detected: Any, model: str) -> Awaitable[Any]:
        async def run() -> Any:
            return await self.stages.embed(await detected, model)

        return asyncio.ensure_future(run())

    def embed_chips(self, request: EmbedRequest) -> Awaitable[Any]:
        return asyncio.ensure_future(self.stages.embed_chips(request))

    async def info(self, model: str) -> Any:
        return await self.stages.embedder_info(model)


class LocalAnalyzer(_Local):
    def analyze(self, detected: Any, actions: tuple[str, ...]) -> Awaitable[Any]:
        async def run() -> Any:
            return await self.stages.analyze(await detected, actions)

        return asyncio.ensure_future(run())

    def analyze_chips(self, request: AnalyzeRequest) -> Awaitable[Any]:
        return asyncio.ensure_future(self.stages.analyze_chips(request))

    async def info(self, action: str) -> Any:
        return await self.stages.attribute_info(action)


class LocalGallery:
    """An ``index.gallery.GalleryService`` in this process (tests without Ray)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def identify_embedded(self, embedded: Any, collection: str, k: int,
                                per_person: bool, actor: Any = None) -> Any:
        return await identify_embedded(self.service, await embedded, collection, k, per_person,
                                       actor)

    async def register_embedded(self, collection: str, metas: list[dict[str, Any]],
                                idempotency_key: str | None, embedded: list[Any],
                                actor: Any = None, *, request_hash: str | None = None,
                                create: bool = True) -> Any:
        values = [await e if inspect.isawaitable(e) else e for e in embedded]
        return await register_embedded(self.service, collection, metas, idempotency_key, values,
                                       actor, request_hash, create)

    async def ready(self) -> bool:
        return True

    async def metrics(self) -> dict[str, Any]:
        from index.health import gallery_metrics

        shards = self.service.shards
        fetch: list[asyncio.Future] = []

        async def info(i: int) -> dict[str, Any]:  # one copy per in-process shard
            if not fetch:  # all shards at once, after the store was read
                fetch.append(asyncio.ensure_future(shards.info()))
            return (await fetch[0])[i]

        return await gallery_metrics(self.service.store, self.service._db,
                                     [[lambda i=i: info(i)] for i in range(shards.nshards)])

    # API keys and the audit trail: the access service beside the gallery service
    async def key_table(self, known_version: int | None = None,
                        used: dict[str, float] | None = None) -> Any:
        return await self.service.access.key_table(known_version, used)

    async def create_key(self, key: Any, actor: Any = None) -> dict[str, Any]:
        return await self.service.access.create_key(key, actor)

    async def revoke_key(self, key_id: str, actor: Any = None) -> dict[str, Any]:
        return await self.service.access.revoke_key(key_id, actor)

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self.service.access.list_keys()

    async def audit_entries(self, collection: str | None = None, action: str | None = None,
                            since: float | None = None, after_seq: int = 0,
                            limit: int = 100) -> list[dict[str, Any]]:
        return await self.service.access.audit_entries(collection, action, since, after_seq,
                                                       limit)

    async def record(self, entry: Any) -> None:
        await self.service.access.record(entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)
