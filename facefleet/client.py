"""Python client of the facefleet HTTP API, synchronous and asynchronous.

:class:`Client` and :class:`AsyncClient` expose the same methods with the same
arguments; both build their requests through one set of ``_Endpoints``
builders, so the two cannot drift apart, and differ only in how a request is
sent. Images may be a path, raw bytes, an http(s) URL or a data URI; they
travel as base64 in JSON. Answers come back as the dataclasses of
:mod:`facefleet.types` and errors as the exceptions of :mod:`facefleet.errors`.
Requests are retried with exponential backoff and jitter on 429, on 503 and on
connection failures, but a request that may have changed server state is only
repeated when a retry cannot apply it twice (see ``_retryable``): enrolments,
single and batched, carry an ``Idempotency-Key`` (one per call), so a retry
after a lost answer gets the first answer back instead of enrolling twice,
and imports are idempotent by face id. Every call sends an ``X-Request-Id``
(the same one on each of its retries): a fresh one, or the one set with
``with client.request_id("..."):``, and keeps it in ``last_request_id``; the
server's audit trail records it. Exports stream JSON Lines; imports stream
them up, from a file or any iterable of faces, with progress callbacks.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json as jsonlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import httpx

from facefleet.errors import TransportError, envelope, error_from_response
from facefleet.types import (AnalyzeResult, ApiKey, AuditEntry, AuditPage, BatchResult,
                             Collection, Deleted, DetectResult, EmbedResult, Face,
                             IdentifyResult, ImportResult, Page, Person, PersonSummary,
                             VerifyResult)

T = TypeVar("T")
ImageInput = str | os.PathLike[str] | bytes

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "facefleet-client/0.1"
#: the request id the next calls send (``Client.request_id``); unset: a fresh one per call
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "facefleet_request_id", default=None)


def encode_image(img: ImageInput) -> str:
    """The ``img`` field for an image: URLs and data URIs pass through, the rest is base64."""
    if isinstance(img, bytes | bytearray):
        return base64.b64encode(bytes(img)).decode()
    if isinstance(img, str) and img[:8].lower().startswith(("http://", "https://", "data:")):
        return img
    path = Path(img)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return base64.b64encode(path.read_bytes()).decode()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is repeated."""

    max_retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds before retry number ``attempt`` (0-based): Retry-After when the server
        sent one, else full-jitter exponential backoff so concurrent clients spread out."""
        if response is not None:
            after = _retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_backoff_s)
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class EnrollItem:
    """One face of a batch enrolment: an image, or an ``embedding`` of the
    collection's model."""

    img: ImageInput | None = None
    person_id: str | None = None
    name: str | None = None
    labels: Mapping[str, str] | None = None
    embedding: Sequence[float] | None = None

    def body(self) -> dict[str, Any]:
        if (self.img is None) == (self.embedding is None):
            raise ValueError("an EnrollItem has an img or an embedding (one of them)")
        return _body(img=None if self.img is None else encode_image(self.img),
                     embedding=_vector(self.embedding), person_id=self.person_id,
                     name=self.name, labels=dict(self.labels) if self.labels is not None
                     else None)


#: "leave as it is" for :meth:`Client.update_person`
UNSET: Any = object()
#: lines per chunk read from an import source
_IMPORT_BUFFER = 256 * 1024
ImportSource = str | os.PathLike[str] | Iterable[Mapping[str, Any] | bytes | str]


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: a streamed body, made afresh for each attempt
    content: Callable[[], Iterable[bytes]] | None = None
    # True when sending it twice has the effect of sending it once
    idempotent: bool = True
    ok_statuses: tuple[int, ...] = ()  # non-2xx answers that are results, not errors


# Errors after which the request certainly never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _retryable(call: _Call[Any], response: httpx.Response | None,
               exc: Exception | None) -> bool:
    if exc is not None:
        return isinstance(exc, _NOT_SENT) or (call.idempotent
                                              and isinstance(exc, httpx.TransportError))
    assert response is not None
    if response.status_code == 429:
        return True
    if response.status_code in (502, 503, 504):
        # A bare 503 comes from Serve's proxy shedding load before the app saw the
        # request; facefleet's own 503 may follow a committed write (a shard restarting).
        return call.idempotent or envelope(response) is None
    return False


def _q(part: str) -> str:
    return quote(str(part), safe="")


def _body(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _json(r: httpx.Response) -> Any:
    return r.json()


def _vector(v: Sequence[float] | None) -> list[float] | None:
    if v is None:
        return None
    return [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]


def _import_body(source: ImportSource,
                 on_progress: Callable[[int, int], None] | None) -> tuple[
                     Callable[[], Iterable[bytes]], bool]:
    """The body factory of an import and whether a retry may send it again: a file
    (read in chunks, ``on_progress(lines, bytes)`` as they go) can be sent again,
    an iterable of faces only once."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"import file not found: {path}")

        def from_file() -> Iterator[bytes]:
            lines = sent = 0
            with path.open("rb") as f:
                while chunk := f.read(_IMPORT_BUFFER):
                    lines += chunk.count(b"\n")
                    sent += len(chunk)
                    yield chunk
                    if on_progress:
                        on_progress(lines, sent)
        return from_file, True
    it = iter(source)

    def from_iterable() -> Iterator[bytes]:
        lines = sent = 0
        buf: list[bytes] = []
        size = 0
        for face in it:
            line = face if isinstance(face, bytes) else (
                face.encode() if isinstance(face, str) else jsonlib.dumps(
                    {k: _vector(v) if k == "embedding" else v for k, v in face.items()}
                ).encode())
            line = line.rstrip(b"\n") + b"\n"
            buf.append(line)
            size += len(line)
            lines += 1
            if size >= _IMPORT_BUFFER:
                sent += size
                yield b"".join(buf)
                buf, size = [], 0
                if on_progress:
                    on_progress(lines, sent)
        if buf:
            yield b"".join(buf)
        if on_progress:
            on_progress(lines, sent + size)
    return from_iterable, False


def _faces_page(r: httpx.Response) -> Page[Face]:
    d = r.json()
    return Page(d.get("collection", ""), [Face.from_json(f) for f in d.get("faces", [])],
                d.get("next_cursor"), d)


def _persons_page(r: httpx.Response) -> Page[PersonSummary]:
    d = r.json()
    return Page(d.get("collection", ""),
                [PersonSummary.from_json(p) for p in d.get("persons", [])],
                d.get("next_cursor"), d)


class _Endpoints:
    """Request builders shared by both clients: one per API operation."""

    def _detect(self, img: ImageInput, detector: str | None, max_faces: int | None,
                min_confidence: float, return_crops: bool,
                enforce_detection: bool) -> _Call[DetectResult]:
        return _Call("POST", "/v1/detect", lambda r: DetectResult.from_json(r.json()), _body(
            img=encode_image(img), detector=detector, max_faces=max_faces,
            min_confidence=min_confidence, return_crops=return_crops,
            enforce_detection=enforce_detection))

    def _embed(self, img: ImageInput, model: str | None, detector: str | None,
               max_faces: int | None, enforce_detection: bool) -> _Call[EmbedResult]:
        return _Call("POST", "/v1/embed", lambda r: EmbedResult.from_json(r.json()), _body(
            img=encode_image(img), model=model, detector=detector, max_faces=max_faces,
            enforce_detection=enforce_detection))

    def _verify(self, img1: ImageInput, img2: ImageInput, model: str | None,
                detector: str | None, threshold: float | None,
                enforce_detection: bool) -> _Call[VerifyResult]:
        return _Call("POST", "/v1/verify", lambda r: VerifyResult.from_json(r.json()), _body(
            img1=encode_image(img1), img2=encode_image(img2), model=model, detector=detector,
            threshold=threshold, enforce_detection=enforce_detection))

    def _analyze(self, img: ImageInput, actions: Iterable[str], detector: str | None,
                 max_faces: int | None, enforce_detection: bool) -> _Call[AnalyzeResult]:
        return _Call("POST", "/v1/analyze", lambda r: AnalyzeResult.from_json(r.json()), _body(
            img=encode_image(img), actions=list(actions), detector=detector,
            max_faces=max_faces, enforce_detection=enforce_detection))

    def _create_collection(self, name: str, model: str | None) -> _Call[Collection]:
        # creating twice fails with 409 instead of duplicating: safe to retry
        return _Call("POST", "/v1/collections", lambda r: Collection.from_json(r.json()),
                     _body(name=name, model=model))

    def _list_collections(self) -> _Call[list[Collection]]:
        return _Call("GET", "/v1/collections",
                     lambda r: [Collection.from_json(c) for c in r.json()["collections"]])

    def _collection(self, name: str) -> _Call[Collection]:
        return _Call("GET", f"/v1/collections/{_q(name)}",
                     lambda r: Collection.from_json(r.json()))

    def _drop_collection(self, name: str) -> _Call[Collection]:
        return _Call("DELETE", f"/v1/collections/{_q(name)}",
                     lambda r: Collection.from_json(r.json()))

    def _register(self, collection: str, img: ImageInput | None, person_id: str | None,
                  name: str | None, labels: Mapping[str, str] | None, model: str | None,
                  detector: str | None, idempotency_key: str | None,
                  embedding: Sequence[float] | None = None) -> _Call[Face]:
        # A key per call (unless the caller brings one) makes our own retries safe.
        key = idempotency_key or uuid.uuid4().hex
        item = EnrollItem(img, person_id, name, labels, embedding).body()
        return _Call("POST", f"/v1/collections/{_q(collection)}/faces",
                     lambda r: Face.from_json(r.json()),
                     {**item, **_body(model=model, detector=detector)},
                     headers={"Idempotency-Key": key})

    def _register_batch(self, collection: str, items: Sequence[EnrollItem],
                        model: str | None, detector: str | None,
                        idempotency_key: str | None = None) -> _Call[BatchResult]:
        # Under one key per call the server answers a repeat with the first answer
        # (failures included) and enrols nothing twice: any retry is safe.
        key = idempotency_key or uuid.uuid4().hex
        return _Call("POST", f"/v1/collections/{_q(collection)}/faces:batch",
                     lambda r: BatchResult.from_json(r.json()),
                     _body(items=[it.body() for it in items], model=model, detector=detector),
                     headers={"Idempotency-Key": key})

    def _identify(self, collection: str, img: ImageInput | None, top_k: int,
                  threshold: float | None, model: str | None, detector: str | None,
                  max_faces: int | None, enforce_detection: bool, per_person: bool = False,
                  embedding: Sequence[float] | None = None) -> _Call[IdentifyResult]:
        probe = ({"embedding": _vector(embedding)} if embedding is not None
                 else {"img": encode_image(img)})  # type: ignore[arg-type]
        return _Call("POST", f"/v1/collections/{_q(collection)}/identify",
                     lambda r: IdentifyResult.from_json(r.json()), {**probe, **_body(
                         top_k=top_k, threshold=threshold, model=model, detector=detector,
                         max_faces=max_faces, enforce_detection=enforce_detection,
                         per_person=per_person or None)})

    def _persons(self, collection: str, limit: int,
                 cursor: str | None) -> _Call[Page[PersonSummary]]:
        return _Call("GET", f"/v1/collections/{_q(collection)}/persons?"
                     + urlencode(_body(limit=limit, cursor=cursor)), _persons_page)

    def _faces(self, collection: str, person_id: str | None, limit: int,
               cursor: str | None) -> _Call[Page[Face]]:
        return _Call("GET", f"/v1/collections/{_q(collection)}/faces?"
                     + urlencode(_body(person_id=person_id, limit=limit, cursor=cursor)),
                     _faces_page)

    def _update_person(self, collection: str, person_id: str, name: Any,
                       labels: Any) -> _Call[Person]:
        body: dict[str, Any] = {}
        if name is not UNSET:
            body["name"] = name
        if labels is not UNSET:
            body["labels"] = None if labels is None else dict(labels)
        # setting the same fields twice leaves them as once: safe to retry
        return _Call("PATCH", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     lambda r: Person.from_json(r.json()), body)

    def _import(self, collection: str, source: ImportSource,
                on_progress: Callable[[int, int], None] | None) -> _Call[ImportResult]:
        content, resendable = _import_body(source, on_progress)
        # idempotent by face id: sending a file again skips what the first try imported
        return _Call("POST", f"/v1/collections/{_q(collection)}/import",
                     lambda r: ImportResult.from_json(r.json()),
                     headers={"Content-Type": "application/x-ndjson"}, content=content,
                     idempotent=resendable)

    def _export(self, collection: str) -> _Call[None]:
        return _Call("GET", f"/v1/collections/{_q(collection)}/export", lambda r: None)

    def _face(self, collection: str, face_id: str) -> _Call[Face]:
        return _Call("GET", f"/v1/collections/{_q(collection)}/faces/{_q(face_id)}",
                     lambda r: Face.from_json(r.json()))

    def _delete_face(self, collection: str, face_id: str) -> _Call[Deleted]:
        return _Call("DELETE", f"/v1/collections/{_q(collection)}/faces/{_q(face_id)}",
                     lambda r: Deleted(collection, [face_id]))

    def _person(self, collection: str, person_id: str) -> _Call[Person]:
        return _Call("GET", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     lambda r: Person.from_json(r.json()))

    def _delete_person(self, collection: str, person_id: str) -> _Call[Deleted]:
        def parse(r: httpx.Response) -> Deleted:
            d = r.json()
            return Deleted(d.get("collection", collection), list(d.get("deleted_faces", [])),
                           d.get("person_id", person_id), d)
        return _Call("DELETE", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     parse)

    def _get(self, path: str, ok_statuses: tuple[int, ...] = ()) -> _Call[Any]:
        return _Call("GET", path, _json, ok_statuses=ok_statuses)

    # -- keys and the audit trail
    def _create_key(self, name: str, scopes: Iterable[str],
                    collections: Iterable[str] | None,
                    ttl_s: float | None = None) -> _Call[ApiKey]:
        body: dict[str, Any] = {"name": name, "scopes": list(scopes),
                                "collections": None if collections is None else list(collections)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        # a repeat after the first one committed would make a second key
        return _Call("POST", "/v1/keys", lambda r: ApiKey.from_json(r.json()), body,
                     idempotent=False)

    def _list_keys(self) -> _Call[list[ApiKey]]:
        return _Call("GET", "/v1/keys", lambda r: [ApiKey.from_json(k) for k in r.json()["keys"]])

    def _revoke_key(self, key_id: str) -> _Call[None]:
        # a repeat after the first one committed would answer 404
        return _Call("DELETE", f"/v1/keys/{_q(key_id)}", lambda r: None, idempotent=False)

    def _audit(self, collection: str | None, action: str | None, since: float | str | None,
               limit: int, cursor: str | None) -> _Call[AuditPage]:
        params = _body(collection=collection, action=action, since=since, limit=limit,
                       cursor=cursor)
        query = "&".join(f"{k}={_q(str(v))}" for k, v in params.items())
        return _Call("GET", f"/v1/audit?{query}", lambda r: AuditPage.from_json(r.json()))


async def _aiter(chunks: Iterable[bytes]) -> Any:
    """A sync body as the async iterable httpx's AsyncClient streams."""
    for chunk in chunks:
        yield chunk


def _total(r: httpx.Response) -> int | None:
    """The face count an export announces (``X-Facefleet-Faces``)."""
    value = r.headers.get("x-facefleet-faces", "")
    return int(value) if value.isdigit() else None


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"User-Agent": USER_AGENT}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def _finish(call: _Call[T], r: httpx.Response) -> T:
    if r.is_success or r.status_code in call.ok_statuses:
        return call.parse(r)
    raise error_from_response(r)


class _RequestIds:
    """``X-Request-Id`` handling shared by both clients."""

    last_request_id: str | None = None

    @staticmethod
    @contextmanager
    def request_id(request_id: str) -> Iterator[None]:
        """Send ``request_id`` as the ``X-Request-Id`` of the calls made in this block
        (letters, digits and ``._:-``, up to 128; the server makes its own otherwise)."""
        token = _REQUEST_ID.set(request_id)
        try:
            yield
        finally:
            _REQUEST_ID.reset(token)

    def _headers_of(self, call: _Call[Any]) -> dict[str, str]:
        rid = _REQUEST_ID.get() or uuid.uuid4().hex
        self.last_request_id = rid
        return {**call.headers, "X-Request-Id": rid}


class Client(_Endpoints, _RequestIds):
    """Blocking client. ``Client(url, api_key=...)``; use as a context manager or
    call :meth:`close`. ``url`` and ``api_key`` default to ``FACEFLEET_URL`` and
    ``FACEFLEET_API_KEY``."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("FACEFLEET_URL") or DEFAULT_URL).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers=_headers(api_key or os.environ.get("FACEFLEET_API_KEY")))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        attempt = 0
        headers = self._headers_of(call)  # one request id for all of its retries
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, headers=headers,
                    content=call.content() if call.content else None)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries or not _retryable(call, None, exc):
                    raise TransportError(f"{call.method} {self.url}{call.path}: {exc!r}") from exc
            else:
                if attempt >= self.retry.max_retries or not _retryable(call, response, None):
                    return _finish(call, response)
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
                 enforce_detection: bool = True, per_person: bool = False) -> IdentifyResult:
        """Every face of ``img`` against the collection; ``per_person``: each person's
        nearest face only."""
        return self._run(self._identify(collection, img, top_k, threshold, model, detector,
                                        max_faces, enforce_detection, per_person))

    def identify_embedding(self, collection: str, embedding: Sequence[float], *,
                           top_k: int = 5, threshold: float | None = None,
                           model: str | None = None,
                           per_person: bool = False) -> IdentifyResult:
        """One embedding against the collection (one face in the answer, no box)."""
        return self._run(self._identify(collection, None, top_k, threshold, model, None, None,
                                        True, per_person, embedding))

    def persons(self, collection: str, *, limit: int = 100,
                cursor: str | None = None) -> Page[PersonSummary]:
        """One page of persons (person-id order); pass ``next_cursor`` for the next."""
        return self._run(self._persons(collection, limit, cursor))

    def iter_persons(self, collection: str, *, page_size: int = 500) -> Iterator[PersonSummary]:
        """Every person of the collection, a page at a time."""
        cursor: str | None = None
        while True:
            page = self.persons(collection, limit=page_size, cursor=cursor)
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
            with _part(path).open("w") as f:
                for line in self._export_lines(collection,
                                               lambda r: total.__setitem__(0, _total(r))):
                    f.write(line + "\n")
                    n += 1
                    if on_progress and n % 100 == 0:
                        on_progress(n, total[0])
        except BaseException:
            _part(path).unlink(missing_ok=True)
            raise
        _part(path).replace(path)
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
                        if attempt >= self.retry.max_retries or not _retryable(call, r, None):
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
                if started or attempt >= self.retry.max_retries or not _retryable(call, None, exc):
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


class AsyncClient(_Endpoints, _RequestIds):
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
            headers=_headers(api_key or os.environ.get("FACEFLEET_API_KEY")))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        attempt = 0
        headers = self._headers_of(call)  # one request id for all of its retries
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, headers=headers,
                    content=_aiter(call.content()) if call.content else None)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries or not _retryable(call, None, exc):
                    raise TransportError(f"{call.method} {self.url}{call.path}: {exc!r}") from exc
            else:
                if attempt >= self.retry.max_retries or not _retryable(call, response, None):
                    return _finish(call, response)
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
                       enforce_detection: bool = True,
                       per_person: bool = False) -> IdentifyResult:
        return await self._run(self._identify(collection, img, top_k, threshold, model,
                                              detector, max_faces, enforce_detection,
                                              per_person))

    async def identify_embedding(self, collection: str, embedding: Sequence[float], *,
                                 top_k: int = 5, threshold: float | None = None,
                                 model: str | None = None,
                                 per_person: bool = False) -> IdentifyResult:
        return await self._run(self._identify(collection, None, top_k, threshold, model, None,
                                              None, True, per_person, embedding))

    async def persons(self, collection: str, *, limit: int = 100,
                      cursor: str | None = None) -> Page[PersonSummary]:
        return await self._run(self._persons(collection, limit, cursor))

    async def iter_persons(self, collection: str, *,
                           page_size: int = 500) -> AsyncIterator[PersonSummary]:
        cursor: str | None = None
        while True:
            page = await self.persons(collection, limit=page_size, cursor=cursor)
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

    async def export(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        async for line in self._export_lines(collection):
            yield jsonlib.loads(line)

    async def export_to(self, collection: str, path: str | os.PathLike[str],
                        on_progress: Callable[[int, int | None], None] | None = None) -> int:
        path = Path(path)
        total: list[int | None] = [None]
        n = 0
        try:
            with _part(path).open("w") as f:
                async for line in self._export_lines(
                        collection, lambda r: total.__setitem__(0, _total(r))):
                    f.write(line + "\n")
                    n += 1
                    if on_progress and n % 100 == 0:
                        on_progress(n, total[0])
        except BaseException:
            _part(path).unlink(missing_ok=True)
            raise
        _part(path).replace(path)
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
                        if attempt >= self.retry.max_retries or not _retryable(call, r, None):
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
                if started or attempt >= self.retry.max_retries or not _retryable(call, None, exc):
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
