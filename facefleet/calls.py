"""How each call of the facefleet HTTP API is built, shared by both clients.

``Endpoints`` turns every API method into a ``Call``: method, path, body,
headers, the statuses that count as success, how to parse the answer, and
whether a retry is safe (see ``retryable``). :class:`facefleet.client.Client`
and :class:`facefleet.client.AsyncClient` only differ in how they send a
``Call``, so the two cannot drift apart. Also here: the retry policy, the
image encoding, enrolment items and the streamed import body.
"""

from __future__ import annotations

import base64
import contextvars
import json as jsonlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import httpx

from facefleet.errors import envelope, error_from_job, error_from_response
from facefleet.types import (AnalyzeResult, ApiKey, AuditPage, BatchResult,
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
class Call(Generic[T]):
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


def retryable(call: Call[Any], response: httpx.Response | None,
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


def job_result(out: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """What a call that may start a job answered: the result itself, a finished job's
    result, or None while the job runs (until ``deadline``, a ``time.monotonic()``);
    a failed job raises its error."""
    if "job_id" not in out:
        return out
    if out.get("status") == "failed":
        raise error_from_job(out.get("error") or {})
    if out.get("status") == "done":
        return out["result"]
    if time.monotonic() > deadline:
        raise TimeoutError(f"job {out['job_id']} is still running")
    return None


class Endpoints:
    """Request builders shared by both clients: one per API operation."""

    def _detect(self, img: ImageInput, detector: str | None, max_faces: int | None,
                min_confidence: float, return_crops: bool,
                enforce_detection: bool) -> Call[DetectResult]:
        return Call("POST", "/v1/detect", lambda r: DetectResult.from_json(r.json()), _body(
            img=encode_image(img), detector=detector, max_faces=max_faces,
            min_confidence=min_confidence, return_crops=return_crops,
            enforce_detection=enforce_detection))

    def _embed(self, img: ImageInput, model: str | None, detector: str | None,
               max_faces: int | None, enforce_detection: bool) -> Call[EmbedResult]:
        return Call("POST", "/v1/embed", lambda r: EmbedResult.from_json(r.json()), _body(
            img=encode_image(img), model=model, detector=detector, max_faces=max_faces,
            enforce_detection=enforce_detection))

    def _verify(self, img1: ImageInput, img2: ImageInput, model: str | None,
                detector: str | None, threshold: float | None,
                enforce_detection: bool) -> Call[VerifyResult]:
        return Call("POST", "/v1/verify", lambda r: VerifyResult.from_json(r.json()), _body(
            img1=encode_image(img1), img2=encode_image(img2), model=model, detector=detector,
            threshold=threshold, enforce_detection=enforce_detection))

    def _analyze(self, img: ImageInput, actions: Iterable[str], detector: str | None,
                 max_faces: int | None, enforce_detection: bool) -> Call[AnalyzeResult]:
        return Call("POST", "/v1/analyze", lambda r: AnalyzeResult.from_json(r.json()), _body(
            img=encode_image(img), actions=list(actions), detector=detector,
            max_faces=max_faces, enforce_detection=enforce_detection))

    def _create_collection(self, name: str, model: str | None) -> Call[Collection]:
        # creating twice fails with 409 instead of duplicating: safe to retry
        return Call("POST", "/v1/collections", lambda r: Collection.from_json(r.json()),
                     _body(name=name, model=model))

    def _list_collections(self) -> Call[list[Collection]]:
        return Call("GET", "/v1/collections",
                     lambda r: [Collection.from_json(c) for c in r.json()["collections"]])

    def _collection(self, name: str) -> Call[Collection]:
        return Call("GET", f"/v1/collections/{_q(name)}",
                     lambda r: Collection.from_json(r.json()))

    def _drop_collection(self, name: str) -> Call[Collection]:
        return Call("DELETE", f"/v1/collections/{_q(name)}",
                     lambda r: Collection.from_json(r.json()))

    def _register(self, collection: str, img: ImageInput | None, person_id: str | None,
                  name: str | None, labels: Mapping[str, str] | None, model: str | None,
                  detector: str | None, idempotency_key: str | None,
                  embedding: Sequence[float] | None = None) -> Call[Face]:
        # A key per call (unless the caller brings one) makes our own retries safe.
        key = idempotency_key or uuid.uuid4().hex
        item = EnrollItem(img, person_id, name, labels, embedding).body()
        return Call("POST", f"/v1/collections/{_q(collection)}/faces",
                     lambda r: Face.from_json(r.json()),
                     {**item, **_body(model=model, detector=detector)},
                     headers={"Idempotency-Key": key})

    def _register_batch(self, collection: str, items: Sequence[EnrollItem],
                        model: str | None, detector: str | None,
                        idempotency_key: str | None = None) -> Call[BatchResult]:
        # Under one key per call the server answers a repeat with the first answer
        # (failures included) and enrols nothing twice: any retry is safe.
        key = idempotency_key or uuid.uuid4().hex
        return Call("POST", f"/v1/collections/{_q(collection)}/faces:batch",
                     lambda r: BatchResult.from_json(r.json()),
                     _body(items=[it.body() for it in items], model=model, detector=detector),
                     headers={"Idempotency-Key": key})

    def _identify(self, collection: str, img: ImageInput | None, top_k: int,
                  threshold: float | None, model: str | None, detector: str | None,
                  max_faces: int | None, enforce_detection: bool, per_person: bool = False,
                  embedding: Sequence[float] | None = None,
                  enrol_unknown: bool | None = None) -> Call[IdentifyResult]:
        probe = ({"embedding": _vector(embedding)} if embedding is not None
                 else {"img": encode_image(img)})  # type: ignore[arg-type]
        # an identify that enrols strangers writes: resent after a lost answer it could
        # enrol the same face twice
        return Call("POST", f"/v1/collections/{_q(collection)}/identify",
                     lambda r: IdentifyResult.from_json(r.json()), {**probe, **_body(
                         top_k=top_k, threshold=threshold, model=model, detector=detector,
                         max_faces=max_faces, enforce_detection=enforce_detection,
                         per_person=per_person or None, enrol_unknown=enrol_unknown)},
                     idempotent=not enrol_unknown)

    def _thumbnail(self, collection: str, face_id: str) -> Call[bytes]:
        return Call("GET", f"/v1/collections/{_q(collection)}/faces/{_q(face_id)}/thumbnail",
                    lambda r: r.content)

    def _persons(self, collection: str, limit: int, cursor: str | None,
                 q: str | None = None) -> Call[Page[PersonSummary]]:
        return Call("GET", f"/v1/collections/{_q(collection)}/persons?"
                     + urlencode(_body(limit=limit, cursor=cursor, q=q)), _persons_page)

    def _cluster(self, collection: str, scope: str,
                 threshold: float | None) -> Call[dict[str, Any]]:
        # a run changes nothing but its own job row: sending it twice is harmless
        return Call("POST", f"/v1/collections/{_q(collection)}/clusters", _json,
                    json=_body(scope=scope, threshold=threshold))

    def _cluster_job(self, collection: str, job_id: str) -> Call[dict[str, Any]]:
        return Call("GET", f"/v1/collections/{_q(collection)}/clusters/jobs/{_q(job_id)}",
                    _json)

    def _faces(self, collection: str, person_id: str | None, limit: int,
               cursor: str | None) -> Call[Page[Face]]:
        return Call("GET", f"/v1/collections/{_q(collection)}/faces?"
                     + urlencode(_body(person_id=person_id, limit=limit, cursor=cursor)),
                     _faces_page)

    def _update_person(self, collection: str, person_id: str, name: Any,
                       labels: Any) -> Call[Person]:
        body: dict[str, Any] = {}
        if name is not UNSET:
            body["name"] = name
        if labels is not UNSET:
            body["labels"] = None if labels is None else dict(labels)
        # setting the same fields twice leaves them as once: safe to retry
        return Call("PATCH", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     lambda r: Person.from_json(r.json()), body)

    def _merge(self, collection: str, person_id: str, sources: Sequence[str]) -> Call[Person]:
        # a second send after a lost answer finds the sources gone (404): not idempotent
        return Call("POST", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}:merge",
                    lambda r: Person.from_json(r.json()), {"from": list(sources)},
                    idempotent=False)

    def _import(self, collection: str, source: ImportSource,
                on_progress: Callable[[int, int], None] | None) -> Call[ImportResult]:
        content, resendable = _import_body(source, on_progress)
        # idempotent by face id: sending a file again skips what the first try imported
        return Call("POST", f"/v1/collections/{_q(collection)}/import",
                     lambda r: ImportResult.from_json(r.json()),
                     headers={"Content-Type": "application/x-ndjson"}, content=content,
                     idempotent=resendable)

    def _export(self, collection: str) -> Call[None]:
        return Call("GET", f"/v1/collections/{_q(collection)}/export", lambda r: None)

    def _face(self, collection: str, face_id: str) -> Call[Face]:
        return Call("GET", f"/v1/collections/{_q(collection)}/faces/{_q(face_id)}",
                     lambda r: Face.from_json(r.json()))

    def _delete_face(self, collection: str, face_id: str) -> Call[Deleted]:
        return Call("DELETE", f"/v1/collections/{_q(collection)}/faces/{_q(face_id)}",
                     lambda r: Deleted(collection, [face_id]))

    def _person(self, collection: str, person_id: str) -> Call[Person]:
        return Call("GET", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     lambda r: Person.from_json(r.json()))

    def _delete_person(self, collection: str, person_id: str) -> Call[Deleted]:
        def parse(r: httpx.Response) -> Deleted:
            d = r.json()
            return Deleted(d.get("collection", collection), list(d.get("deleted_faces", [])),
                           d.get("person_id", person_id), d)
        return Call("DELETE", f"/v1/collections/{_q(collection)}/persons/{_q(person_id)}",
                     parse)

    def _get(self, path: str, ok_statuses: tuple[int, ...] = ()) -> Call[Any]:
        return Call("GET", path, _json, ok_statuses=ok_statuses)

    # -- keys and the audit trail
    def _create_key(self, name: str, scopes: Iterable[str],
                    collections: Iterable[str] | None,
                    ttl_s: float | None = None) -> Call[ApiKey]:
        body: dict[str, Any] = {"name": name, "scopes": list(scopes),
                                "collections": None if collections is None else list(collections)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        # a repeat after the first one committed would make a second key
        return Call("POST", "/v1/keys", lambda r: ApiKey.from_json(r.json()), body,
                     idempotent=False)

    def _list_keys(self) -> Call[list[ApiKey]]:
        return Call("GET", "/v1/keys", lambda r: [ApiKey.from_json(k) for k in r.json()["keys"]])

    def _revoke_key(self, key_id: str) -> Call[None]:
        # a repeat after the first one committed would answer 404
        return Call("DELETE", f"/v1/keys/{_q(key_id)}", lambda r: None, idempotent=False)

    def _audit(self, collection: str | None, action: str | None, since: float | str | None,
               limit: int, cursor: str | None) -> Call[AuditPage]:
        params = _body(collection=collection, action=action, since=since, limit=limit,
                       cursor=cursor)
        query = "&".join(f"{k}={_q(str(v))}" for k, v in params.items())
        return Call("GET", f"/v1/audit?{query}", lambda r: AuditPage.from_json(r.json()))


async def aiter_chunks(chunks: Iterable[bytes]) -> Any:
    """A sync body as the async iterable httpx's AsyncClient streams."""
    for chunk in chunks:
        yield chunk


def announced_total(r: httpx.Response) -> int | None:
    """The face count an export announces (``X-Facefleet-Faces``)."""
    value = r.headers.get("x-facefleet-faces", "")
    return int(value) if value.isdigit() else None


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def default_headers(api_key: str | None) -> dict[str, str]:
    h = {"User-Agent": USER_AGENT}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def finish(call: Call[T], r: httpx.Response) -> T:
    if r.is_success or r.status_code in call.ok_statuses:
        return call.parse(r)
    raise error_from_response(r)


class RequestIds:
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

    def _headers_of(self, call: Call[Any]) -> dict[str, str]:
        rid = _REQUEST_ID.get() or uuid.uuid4().hex
        self.last_request_id = rid
        return {**call.headers, "X-Request-Id": rid}
