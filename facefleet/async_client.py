"""The asynchronous client of the facefleet HTTP API: :class:`AsyncClient`.

The same methods with the same arguments as :class:`facefleet.client.Client`, for
asyncio code (``async with AsyncClient(url) as c: await c.identify(...)``); both build
their requests with :mod:`facefleet.calls`, and differ only in how a request is sent.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from facefleet.calls import (job_result, DEFAULT_URL, UNSET, EnrollItem, ImageInput, ImportSource,
                             RetryPolicy, T, aiter_chunks, Call, Endpoints, finish, default_headers,
                             part_path, RequestIds, retryable, announced_total)
from facefleet.errors import TransportError, error_from_response
from facefleet.types import (AnalyzeResult, ApiKey, AuditEntry, AuditPage, BatchResult,
                             Collection, Deleted, DetectResult, EmbedResult, Face,
                             IdentifyResult, ImportResult, Page, Person, PersonSummary,
                             VerifyResult)


class AsyncClient(Endpoints, RequestIds):
    """The same API as :class:`Client`, with every method a coroutine."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None,
                 max_connections: int = 16,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("FACEFLEET_URL") or DEFAULT_URL).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
            headers=default_headers(api_key or os.environ.get("FACEFLEET_API_KEY")))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        headers = self._headers_of(call)  # one request id for all of its retries
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, headers=headers,
                    content=aiter_chunks(call.content()) if call.content else None)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries or not retryable(call, None, exc):
                    raise TransportError(f"{call.method} {self.url}{call.path}: {exc!r}") from exc
            else:
                if attempt >= self.retry.max_retries or not retryable(call, response, None):
                    return finish(call, response)
            await asyncio.sleep(self.retry.delay(attempt, response))
            attempt += 1

    async def health(self) -> dict[str, Any]:
        return await self._run(self._get("/health"))

    async def ready(self) -> dict[str, Any]:
        return await self._run(self._get("/ready", (503,)))

    async def models(self) -> dict[str, Any]:
        return await self._run(self._get("/v1/models"))

    async def stats(self) -> dict[str, Any]:
        return await self._run(self._get("/v1/stats"))

    async def detect(self, img: ImageInput, *, detector: str | None = None,
                     max_faces: int | None = None, min_confidence: float = 0.0,
                     return_crops: bool = False, enforce_detection: bool = True) -> DetectResult:
        return await self._run(self._detect(img, detector, max_faces, min_confidence,
                                            return_crops, enforce_detection))

    async def embed(self, img: ImageInput, *, model: str | None = None,
                    detector: str | None = None, max_faces: int | None = None,
                    enforce_detection: bool = True) -> EmbedResult:
        return await self._run(self._embed(img, model, detector, max_faces, enforce_detection))

    async def verify(self, img1: ImageInput, img2: ImageInput, *, model: str | None = None,
                     detector: str | None = None, threshold: float | None = None,
                     enforce_detection: bool = True) -> VerifyResult:
        return await self._run(self._verify(img1, img2, model, detector, threshold,
                                            enforce_detection))

    async def analyze(self, img: ImageInput, *,
                      actions: Iterable[str] = ("age", "gender", "emotion"),
                      detector: str | None = None, max_faces: int | None = None,
                      enforce_detection: bool = True) -> AnalyzeResult:
        return await self._run(self._analyze(img, actions, detector, max_faces,
                                             enforce_detection))

    async def create_collection(self, name: str, *, model: str | None = None) -> Collection:
        return await self._run(self._create_collection(name, model))

    async def list_collections(self) -> list[Collection]:
        return await self._run(self._list_collections())

    async def collection(self, name: str) -> Collection:
        return await self._run(self._collection(name))

    async def drop_collection(self, name: str) -> Collection:
        return await self._run(self._drop_collection(name))

    async def register(self, collection: str, img: ImageInput, *, person_id: str | None = None,
                       name: str | None = None, labels: Mapping[str, str] | None = None,
                       model: str | None = None, detector: str | None = None,
                       idempotency_key: str | None = None) -> Face:
        return await self._run(self._register(collection, img, person_id, name, labels, model,
                                              detector, idempotency_key))

    async def register_embedding(self, collection: str, embedding: Sequence[float], *,
                                 person_id: str | None = None, name: str | None = None,
                                 labels: Mapping[str, str] | None = None,
                                 model: str | None = None,
                                 idempotency_key: str | None = None) -> Face:
        return await self._run(self._register(collection, None, person_id, name, labels, model,
                                              None, idempotency_key, embedding))

    async def register_batch(self, collection: str, items: Sequence[EnrollItem], *,
                             model: str | None = None, detector: str | None = None,
                             idempotency_key: str | None = None) -> BatchResult:
        return await self._run(self._register_batch(collection, items, model, detector,
                                                    idempotency_key))

    async def identify(self, collection: str, img: ImageInput, *, top_k: int = 5,
                       threshold: float | None = None, model: str | None = None,
                       detector: str | None = None, max_faces: int | None = None,
                       enforce_detection: bool = True, per_person: bool = False,
                       enrol_unknown: bool | None = None) -> IdentifyResult:
        return await self._run(self._identify(collection, img, top_k, threshold, model,
                                              detector, max_faces, enforce_detection,
                                              per_person, None, enrol_unknown))

    async def identify_embedding(self, collection: str, embedding: Sequence[float], *,
                                 top_k: int = 5, threshold: float | None = None,
                                 model: str | None = None,
                                 per_person: bool = False) -> IdentifyResult:
        return await self._run(self._identify(collection, None, top_k, threshold, model, None,
                                              None, True, per_person, embedding))

    async def cluster(self, collection: str, *, scope: str = "unnamed",
                      threshold: float | None = None, wait: bool = True, poll_s: float = 1.0,
                      timeout_s: float = 3600.0) -> dict[str, Any]:
        out = await self._run(self._cluster(collection, scope, threshold))
        deadline = time.monotonic() + timeout_s
        while wait and (done := job_result(out, deadline)) is None:
            await asyncio.sleep(poll_s)
            out = await self.cluster_job(collection, out["job_id"])
        return done if wait else out

    async def cluster_job(self, collection: str, job_id: str) -> dict[str, Any]:
        return await self._run(self._cluster_job(collection, job_id))

    async def persons(self, collection: str, *, limit: int = 100, cursor: str | None = None,
                      q: str | None = None) -> Page[PersonSummary]:
        return await self._run(self._persons(collection, limit, cursor, q))

    async def iter_persons(self, collection: str, *, page_size: int = 500,
                           q: str | None = None) -> AsyncIterator[PersonSummary]:
        cursor: str | None = None
        while True:
            page = await self.persons(collection, limit=page_size, cursor=cursor, q=q)
            for p in page.items:
                yield p
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def faces(self, collection: str, *, person_id: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> Page[Face]:
        return await self._run(self._faces(collection, person_id, limit, cursor))

    async def iter_faces(self, collection: str, *, person_id: str | None = None,
                         page_size: int = 500) -> AsyncIterator[Face]:
        cursor: str | None = None
        while True:
            page = await self.faces(collection, person_id=person_id, limit=page_size,
                                    cursor=cursor)
            for f in page.items:
                yield f
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def update_person(self, collection: str, person_id: str, *, name: Any = UNSET,
                            labels: Any = UNSET) -> Person:
        return await self._run(self._update_person(collection, person_id, name, labels))

    async def thumbnail(self, collection: str, face_id: str) -> bytes:
        return await self._run(self._thumbnail(collection, face_id))

    async def merge(self, collection: str, person_id: str, sources: Sequence[str]) -> Person:
        return await self._run(self._merge(collection, person_id, sources))

    async def export(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        async for line in self._export_lines(collection):
            yield jsonlib.loads(line)

    async def export_to(self, collection: str, path: str | os.PathLike[str],
                        on_progress: Callable[[int, int | None], None] | None = None) -> int:
        path = Path(path)
        total: list[int | None] = [None]
        n = 0
        try:
            with part_path(path).open("w") as f:
                async for line in self._export_lines(
                        collection, lambda r: total.__setitem__(0, announced_total(r))):
                    f.write(line + "\n")
                    n += 1
                    if on_progress and n % 100 == 0:
                        on_progress(n, total[0])
        except BaseException:
            part_path(path).unlink(missing_ok=True)
            raise
        part_path(path).replace(path)
        if on_progress:
            on_progress(n, total[0])
        return n

    async def import_faces(self, collection: str, source: ImportSource, *,
                           on_progress: Callable[[int, int], None] | None = None
                           ) -> ImportResult:
        return await self._run(self._import(collection, source, on_progress))

    async def _export_lines(self, collection: str,
                            on_start: Callable[[httpx.Response], None] | None = None
                            ) -> AsyncIterator[str]:
        call = self._export(collection)
        headers = self._headers_of(call)  # one request id for all of its retries
        attempt = 0
        while True:
            started = False
            try:
                async with self._http.stream("GET", call.path, headers=headers) as r:
                    if not r.is_success:
                        if attempt >= self.retry.max_retries or not retryable(call, r, None):
                            await r.aread()
                            raise error_from_response(r)
                        delay = self.retry.delay(attempt, r)
                    else:
                        if on_start:
                            on_start(r)
                        started = True
                        async for line in r.aiter_lines():
                            if line:
                                yield line
                        return
            except httpx.TransportError as exc:
                if started or attempt >= self.retry.max_retries or not retryable(call, None, exc):
                    what = "was cut off" if started else "failed"
                    raise TransportError(f"export of {collection!r} {what}: {exc!r}") from exc
                delay = self.retry.delay(attempt)
            await asyncio.sleep(delay)
            attempt += 1

    async def face(self, collection: str, face_id: str) -> Face:
        return await self._run(self._face(collection, face_id))

    async def delete_face(self, collection: str, face_id: str) -> Deleted:
        return await self._run(self._delete_face(collection, face_id))

    async def person(self, collection: str, person_id: str) -> Person:
        return await self._run(self._person(collection, person_id))

    async def delete_person(self, collection: str, person_id: str) -> Deleted:
        return await self._run(self._delete_person(collection, person_id))

    async def create_key(self, name: str, scopes: Iterable[str], *,
                         collections: Iterable[str] | None = None,
                         ttl_s: float | None = None) -> ApiKey:
        return await self._run(self._create_key(name, scopes, collections, ttl_s))

    async def list_keys(self) -> list[ApiKey]:
        return await self._run(self._list_keys())

    async def revoke_key(self, key_id: str) -> None:
        await self._run(self._revoke_key(key_id))

    async def audit(self, *, collection: str | None = None, action: str | None = None,
                    since: float | str | None = None, limit: int = 100,
                    cursor: str | None = None) -> AuditPage:
        return await self._run(self._audit(collection, action, since, limit, cursor))

    async def iter_audit(self, *, collection: str | None = None, action: str | None = None,
                         since: float | str | None = None, page_size: int = 500,
                         cursor: str | None = None) -> AsyncIterator[AuditEntry]:
        while True:
            page = await self.audit(collection=collection, action=action, since=since,
                                    limit=page_size, cursor=cursor)
            for entry in page.entries:
                yield entry
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
