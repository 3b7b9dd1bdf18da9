"""Python client of the facefleet HTTP API: :class:`Client` (blocking).

:class:`Client` and :class:`facefleet.async_client.AsyncClient` expose the same
methods with the same arguments; both build their requests through one set of
``Endpoints`` builders (:mod:`facefleet.calls`), so the two cannot drift apart,
and differ only in how a request is sent. Images may be a path, raw bytes, an
http(s) URL or a data URI; they
travel as base64 in JSON. Answers come back as the dataclasses of
:mod:`facefleet.types` and errors as the exceptions of :mod:`facefleet.errors`.
Requests are retried with exponential backoff and jitter on 429, on 503 and on
connection failures, but a request that may have changed server state is only
repeated when a retry cannot apply it twice (see ``retryable``): enrolments,
single and batched, carry an ``Idempotency-Key`` (one per call), so a retry
after a lost answer gets the first answer back instead of enrolling twice,
and imports are idempotent by face id. Every call sends an ``X-Request-Id``
(the same one on each of its retries): a fresh one, or the one set with
``with client.request_id("..."):``, and keeps it in ``last_request_id``; the
server's audit trail records it. Exports stream JSON Lines; imports stream
them up, from a file or any iterable of faces, with progress callbacks.
"""

from __future__ import annotations

import json as jsonlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from facefleet.calls import (job_result, DEFAULT_URL, UNSET, EnrollItem, ImageInput, ImportSource,
                             RetryPolicy, T, Call, Endpoints, finish, default_headers,
                             part_path, RequestIds, retryable, announced_total)
from facefleet.errors import TransportError, error_from_response
from facefleet.types import (AnalyzeResult, ApiKey, AuditEntry, AuditPage, BatchResult,
                             Collection, Deleted, DetectResult, EmbedResult, Face,
                             IdentifyResult, ImportResult, Page, Person, PersonSummary,
                             VerifyResult)


class Client(Endpoints, RequestIds):
    """Blocking client. ``Client(url, api_key=...)``; use as a context manager or
    call :meth:`close`. ``url`` and ``api_key`` default to ``FACEFLEET_URL`` and
    ``FACEFLEET_API_KEY``."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("FACEFLEET_URL") or DEFAULT_URL).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers=default_headers(api_key or os.environ.get("FACEFLEET_API_KEY")))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        headers = self._headers_of(call)  # one request id for all of its retries
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, headers=headers,
                    content=call.content() if call.content else None)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries or not retryable(call, None, exc):
                    raise TransportError(f"{call.method} {self.url}{call.path}: {exc!r}") from exc
            else:
                if attempt >= self.retry.max_retries or not retryable(call, response, None):
                    return finish(call, response)
            time.sleep(self.retry.delay(attempt, response))
            attempt += 1

    # -- ops
    def health(self) -> dict[str, Any]:
        return self._run(self._get("/health"))

    def ready(self) -> dict[str, Any]:
        """``{"ready": bool, "deployments": {...}}``; a 503 here is an answer, not an error."""
        return self._run(self._get("/ready", (503,)))

    def models(self) -> dict[str, Any]:
        return self._run(self._get("/v1/models"))

    def stats(self) -> dict[str, Any]:
        return self._run(self._get("/v1/stats"))

    # -- faces
    def detect(self, img: ImageInput, *, detector: str | None = None,
               max_faces: int | None = None, min_confidence: float = 0.0,
               return_crops: bool = False, enforce_detection: bool = True) -> DetectResult:
        return self._run(self._detect(img, detector, max_faces, min_confidence, return_crops,
                                      enforce_detection))

    def embed(self, img: ImageInput, *, model: str | None = None, detector: str | None = None,
              max_faces: int | None = None, enforce_detection: bool = True) -> EmbedResult:
        return self._run(self._embed(img, model, detector, max_faces, enforce_detection))

    def verify(self, img1: ImageInput, img2: ImageInput, *, model: str | None = None,
               detector: str | None = None, threshold: float | None = None,
               enforce_detection: bool = True) -> VerifyResult:
        return self._run(self._verify(img1, img2, model, detector, threshold, enforce_detection))

    def analyze(self, img: ImageInput, *, actions: Iterable[str] = ("age", "gender", "emotion"),
                detector: str | None = None, max_faces: int | None = None,
                enforce_detection: bool = True) -> AnalyzeResult:
        return self._run(self._analyze(img, actions, detector, max_faces, enforce_detection))

    # -- gallery
    def create_collection(self, name: str, *, model: str | None = None) -> Collection:
        return self._run(self._create_collection(name, model))

    def list_collections(self) -> list[Collection]:
        return self._run(self._list_collections())

    def collection(self, name: str) -> Collection:
        """One collection with its face and person counts."""
        return self._run(self._collection(name))

    def drop_collection(self, name: str) -> Collection:
        return self._run(self._drop_collection(name))

    def register(self, collection: str, img: ImageInput, *, person_id: str | None = None,
                 name: str | None = None, labels: Mapping[str, str] | None = None,
                 model: str | None = None, detector: str | None = None,
                 idempotency_key: str | None = None) -> Face:
        """Enrol the largest face of ``img`` (the collection is created if needed)."""
        return self._run(self._register(collection, img, person_id, name, labels, model,
                                        detector, idempotency_key))

    def register_embedding(self, collection: str, embedding: Sequence[float], *,
                           person_id: str | None = None, name: str | None = None,
                           labels: Mapping[str, str] | None = None, model: str | None = None,
                           idempotency_key: str | None = None) -> Face:
        """Enrol an embedding of the collection's model as it is (no image)."""
        return self._run(self._register(collection, None, person_id, name, labels, model,
                                        None, idempotency_key, embedding))

    def register_batch(self, collection: str, items: Sequence[EnrollItem], *,
                       model: str | None = None, detector: str | None = None,
                       idempotency_key: str | None = None) -> BatchResult:
        """Enrol up to 256 images / embeddings in one request; failures are reported
        per item. Sent under an Idempotency-Key (one per call unless given), so it is
        retried safely: a repeat gets the first answer back."""
        return self._run(self._register_batch(collection, items, model, detector,
                                              idempotency_key))

    def identify(self, collection: str, img: ImageInput, *, top_k: int = 5,
                 threshold: float | None = None, model: str | None = None,
                 detector: str | None = None, max_faces: int | None = None,
                 enforce_detection: bool = True, per_person: bool = False,
                 enrol_unknown: bool | None = None) -> IdentifyResult:
        """Every face of ``img`` against the collection; ``per_person``: each person's
        nearest face only; ``enrol_unknown``: faces matching nobody become new persons."""
        return self._run(self._identify(collection, img, top_k, threshold, model, detector,
                                        max_faces, enforce_detection, per_person, None,
                                        enrol_unknown))

    def identify_embedding(self, collection: str, embedding: Sequence[float], *,
                           top_k: int = 5, threshold: float | None = None,
                           model: str | None = None,
                           per_person: bool = False) -> IdentifyResult:
        """One embedding against the collection (one face in the answer, no box)."""
        return self._run(self._identify(collection, None, top_k, threshold, model, None, None,
                                        True, per_person, embedding))

    def cluster(self, collection: str, *, scope: str = "unnamed", threshold: float | None = None,
                wait: bool = True, poll_s: float = 1.0, timeout_s: float = 3600.0
                ) -> dict[str, Any]:
        """Group the collection's unnamed faces (``scope="all"``: every face) into
        candidate people, each with a suggested named person or None. A large collection
        runs as a job: with ``wait`` this polls it and returns its result, else it returns
        ``{"job_id", "status"}`` (see :meth:`cluster_job`)."""
        out = self._run(self._cluster(collection, scope, threshold))
        deadline = time.monotonic() + timeout_s
        while wait and (done := job_result(out, deadline)) is None:
            time.sleep(poll_s)
            out = self.cluster_job(collection, out["job_id"])
        return done if wait else out

    def cluster_job(self, collection: str, job_id: str) -> dict[str, Any]:
        """A clustering job: ``status`` running / done / failed, ``progress``, ``result``."""
        return self._run(self._cluster_job(collection, job_id))

    def persons(self, collection: str, *, limit: int = 100, cursor: str | None = None,
                q: str | None = None) -> Page[PersonSummary]:
        """One page of persons (person-id order); pass ``next_cursor`` for the next.
        ``q``: only persons whose name or id contains it, ignoring case (the server
        searches; give the same ``q`` with the cursor of its pages)."""
        return self._run(self._persons(collection, limit, cursor, q))

    def iter_persons(self, collection: str, *, page_size: int = 500,
                     q: str | None = None) -> Iterator[PersonSummary]:
        """Every person of the collection (whose name or id contains ``q``), a page
        at a time."""
        cursor: str | None = None
        while True:
            page = self.persons(collection, limit=page_size, cursor=cursor, q=q)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def faces(self, collection: str, *, person_id: str | None = None, limit: int = 100,
              cursor: str | None = None) -> Page[Face]:
        """One page of faces (enrolment order), of one person with ``person_id``."""
        return self._run(self._faces(collection, person_id, limit, cursor))

    def iter_faces(self, collection: str, *, person_id: str | None = None,
                   page_size: int = 500) -> Iterator[Face]:
        cursor: str | None = None
        while True:
            page = self.faces(collection, person_id=person_id, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def update_person(self, collection: str, person_id: str, *, name: Any = UNSET,
                      labels: Any = UNSET) -> Person:
        """Rename (``name``; None clears it) or relabel (``labels`` replaces them) a
        person; what is not given stays."""
        return self._run(self._update_person(collection, person_id, name, labels))

    def thumbnail(self, collection: str, face_id: str) -> bytes:
        """The face's 112 px JPEG thumbnail (``NotFound`` when it has none)."""
        return self._run(self._thumbnail(collection, face_id))

    def merge(self, collection: str, person_id: str, sources: Sequence[str]) -> Person:
        """Move every face of the persons ``sources`` into ``person_id`` (made when new)
        and remove them; ``raw["moved_faces"]`` lists the faces that moved."""
        return self._run(self._merge(collection, person_id, sources))

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        """Every face of the collection with its embedding, streamed (one dict each)."""
        for line in self._export_lines(collection):
            yield jsonlib.loads(line)

    def export_to(self, collection: str, path: str | os.PathLike[str],
                  on_progress: Callable[[int, int | None], None] | None = None) -> int:
        """Write the collection's export (JSON Lines) to ``path``; returns the faces
        written. ``on_progress(faces, total)``. The file appears only once complete."""
        path = Path(path)
        total: list[int | None] = [None]
        n = 0
        try:
            with part_path(path).open("w") as f:
                for line in self._export_lines(collection,
                                               lambda r: total.__setitem__(0, announced_total(r))):
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

    def import_faces(self, collection: str, source: ImportSource, *,
                     on_progress: Callable[[int, int], None] | None = None) -> ImportResult:
        """Import faces as an export wrote them: a JSON Lines file, or an iterable of
        face dicts (or their lines). Idempotent by face id, so a file is simply sent
        again after a failure. ``on_progress(lines, bytes)`` as the body goes up."""
        return self._run(self._import(collection, source, on_progress))

    def _export_lines(self, collection: str,
                      on_start: Callable[[httpx.Response], None] | None = None) -> Iterator[str]:
        call = self._export(collection)
        headers = self._headers_of(call)  # one request id for all of its retries
        attempt = 0
        while True:
            started = False
            try:
                with self._http.stream("GET", call.path, headers=headers) as r:
                    if not r.is_success:
                        if attempt >= self.retry.max_retries or not retryable(call, r, None):
                            r.read()
                            raise error_from_response(r)
                        delay = self.retry.delay(attempt, r)
                    else:
                        if on_start:
                            on_start(r)
                        started = True
                        for line in r.iter_lines():
                            if line:
                                yield line
                        return
            except httpx.TransportError as exc:
                if started or attempt >= self.retry.max_retries or not retryable(call, None, exc):
                    what = "was cut off" if started else "failed"
                    raise TransportError(f"export of {collection!r} {what}: {exc!r}") from exc
                delay = self.retry.delay(attempt)
            time.sleep(delay)
            attempt += 1

    def face(self, collection: str, face_id: str) -> Face:
        return self._run(self._face(collection, face_id))

    def delete_face(self, collection: str, face_id: str) -> Deleted:
        return self._run(self._delete_face(collection, face_id))

    def person(self, collection: str, person_id: str) -> Person:
        return self._run(self._person(collection, person_id))

    def delete_person(self, collection: str, person_id: str) -> Deleted:
        return self._run(self._delete_person(collection, person_id))

    # -- keys and the audit trail (admin keys only)
    def create_key(self, name: str, scopes: Iterable[str], *,
                   collections: Iterable[str] | None = None,
                   ttl_s: float | None = None) -> ApiKey:
        """A new API key; its secret is in ``.key``, and only in this answer. ``ttl_s``:
        it expires this many seconds from now (default: the server's longest lifetime)."""
        return self._run(self._create_key(name, scopes, collections, ttl_s))

    def list_keys(self) -> list[ApiKey]:
        return self._run(self._list_keys())

    def revoke_key(self, key_id: str) -> None:
        self._run(self._revoke_key(key_id))

    def audit(self, *, collection: str | None = None, action: str | None = None,
              since: float | str | None = None, limit: int = 100,
              cursor: str | None = None) -> AuditPage:
        """One page of the audit trail, oldest first."""
        return self._run(self._audit(collection, action, since, limit, cursor))

    def iter_audit(self, *, collection: str | None = None, action: str | None = None,
                   since: float | str | None = None, page_size: int = 500,
                   cursor: str | None = None) -> Iterator[AuditEntry]:
        """Every entry after ``cursor``, page after page."""
        while True:
            page = self.audit(collection=collection, action=action, since=since,
                              limit=page_size, cursor=cursor)
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
