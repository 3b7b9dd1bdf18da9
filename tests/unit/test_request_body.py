"""Request bodies through a real FastAPI app: JSON, multipart and forms, every cap
enforced while the body streams (chunked, no Content-Length), typed errors only."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import Request

from deployments.http.bodies import AnalyzeBody, RegisterBatchBody, VerifyBody
from deployments.http.errors import install_error_handlers
from deployments.http.app import IngressApp
from deployments.local import free_port
from deployments.http.request_body import BodyLimits, parse_body

MiB = 1 << 20
LIMITS = BodyLimits(max_request_bytes=8 * MiB, max_file_bytes=1 * MiB,
                    max_field_bytes=2 * MiB, max_parts=20)


def make_app() -> IngressApp:
    app = IngressApp()
    install_error_handlers(app)

    async def echo(request: Request, model):
        body, files = await parse_body(request, model, LIMITS)
        return {"body": body.model_dump(),
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}

    @app.post("/analyze")
    async def analyze(request: Request) -> dict:
        return await echo(request, AnalyzeBody)

    @app.post("/verify")
    async def verify(request: Request) -> dict:
        return await echo(request, VerifyBody)

    @app.post("/batch")
    async def batch(request: Request) -> dict:
        return await echo(request, RegisterBatchBody)

    return app


@pytest.fixture(scope="module")
def photo(faces) -> bytes:
    return (faces / "deepface/img3.jpg").read_bytes()  # 0.65 MB


def call(coro_fn):
    async def go():
        transport = httpx.ASGITransport(app=make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await coro_fn(client)

    return asyncio.run(go())


def post(path: str, **kw) -> httpx.Response:
    return call(lambda c: c.post(path, **kw))


class Chunks:
    """A chunked request body that counts how many chunks the server pulled."""

    def __init__(self, data: bytes, size: int = 256 * 1024) -> None:
        self.data, self.size, self.pulled = data, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            self.pulled += 1
            yield self.data[i:i + self.size]


def error_of(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert "Traceback" not in r.text
    return err


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> bytes:
    out = bytearray()
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


MP = {"content-type": "multipart/form-data; boundary=b0und4ry"}


# ---------------------------------------------------------------------- JSON
def test_small_and_large_json(photo):
    small = post("/analyze", json={"img": "abc", "actions": ["age"]})
    assert small.status_code == 200
    assert small.json()["body"]["img"] == "abc" and small.json()["body"]["actions"] == ["age"]
    # ~0.9 MB of base64: over the inline size, so parsed in the worker thread
    img = base64.b64encode(photo).decode()
    big = post("/verify", json={"img1": img, "img2": img, "threshold": 0.3})
    assert big.status_code == 200, big.text
    assert big.json()["body"]["img1"] == img and big.json()["body"]["threshold"] == 0.3


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "valid JSON"),
    (b'{"img": "a"} trailing', "valid JSON"),
    (b"[" * 200_000, "valid JSON"),  # deep nesting: a typed error, not a RecursionError
    (b'{"img": "a", "max_faces": NaN}', "valid JSON"),
    (b"\xff\xfe not utf-8", "valid JSON"),
    (b'["a list"]', "JSON object"),
    (b"", "empty"),
])
def test_bad_json_is_422(raw, reason):
    err = error_of(post("/analyze", content=raw, headers={"content-type": "application/json"}),
                   422, "validation_error")
    assert reason in err["message"]


def test_json_fields_are_validated():
    err = error_of(post("/analyze", json={"img": "a", "bogus": 1}), 422, "validation_error")
    assert err["details"]["errors"][0]["loc"] == ["bogus"]


def test_json_over_the_cap_from_its_length():
    raw = b'{"img": "' + b"A" * (9 * MiB) + b'"}'
    err = error_of(post("/analyze", content=raw, headers={"content-type": "application/json"}),
                   413, "image_too_large")
    assert err["details"]["bytes"] == len(raw)


def test_chunked_json_over_the_cap_is_refused_while_streaming():
    body = Chunks(b'{"img": "' + b"A" * (30 * MiB) + b'"}')

    async def go(c: httpx.AsyncClient):
        return await c.post("/analyze", content=body, headers={"content-type": "application/json"})

    r = call(go)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    error_of(r, 413, "image_too_large")
    # refused once the cap was passed: 8 MiB of 30, not the whole body
    assert body.pulled <= 8 * MiB // body.size + 2


# ---------------------------------------------------------------------- multipart
def test_multipart_files_and_fields(photo):
    r = post("/analyze", files={"img": ("face.jpg", photo)},
             data={"actions": "age, gender", "max_faces": "2"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["body"]["img"] == "@file:img"
    assert out["files"]["img"] == hashlib.sha256(photo).hexdigest()
    assert out["body"]["actions"] == ["age", "gender"] and out["body"]["max_faces"] == 2
    as_json_list = post("/analyze", files={"img": ("face.jpg", photo)},
                        data={"actions": '["emotion"]'})
    assert as_json_list.json()["body"]["actions"] == ["emotion"]


def test_multipart_parts_split_across_tiny_chunks(photo):
    raw = multipart([("img1", "a.jpg", photo), ("img2", None, b"data:image/jpeg;base64,QUJD"),
                     ("threshold", None, b"0.25")])
    body = Chunks(raw, size=7)  # every header and boundary split across writes
    r = call(lambda c: c.post("/verify", content=body, headers=MP))
    assert r.status_code == 200, r.text
    assert r.json()["files"]["img1"] == hashlib.sha256(photo).hexdigest()
    assert r.json()["body"]["img2"] == "data:image/jpeg;base64,QUJD"
    assert r.json()["body"]["threshold"] == 0.25


def test_chunked_multipart_file_over_the_part_cap_is_413():
    # the case from the field: a 30 MiB part under a 1 MiB cap, chunked
    body = Chunks(multipart([("img", "big.jpg", b"\xff" * (30 * MiB))]))
    r = call(lambda c: c.post("/analyze", content=body, headers=MP))
    assert "content-length" not in r.request.headers
    err = error_of(r, 413, "image_too_large")
    assert err["details"] == {"field": "img", "max_bytes": LIMITS.max_file_bytes}
    assert body.pulled <= LIMITS.max_file_bytes // body.size + 2


def test_multipart_field_over_its_cap_is_413():
    raw = multipart([("img", None, b"A" * (3 * MiB))])
    err = error_of(post("/analyze", content=raw, headers=MP), 413, "image_too_large")
    assert err["details"]["field"] == "img"


def test_chunked_multipart_body_over_the_request_cap_is_413():
    # every part is under its own cap; together they pass max_request_bytes
    parts = [(f"f{i}", f"{i}.jpg", b"\x00" * (MiB - 1024)) for i in range(12)]
    body = Chunks(multipart(parts))
    err = error_of(call(lambda c: c.post("/analyze", content=body, headers=MP)), 413,
                   "image_too_large")
    assert err["details"]["max_request_bytes"] == LIMITS.max_request_bytes


@pytest.mark.parametrize("raw, headers, reason", [
    (b"--b0und4ry\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\nabc", MP, "incomplete"),
    (b"garbage", MP, "malformed"),
    (b"--b0und4ry\r\nContent-Type: text/plain\r\n\r\nabc\r\n--b0und4ry--\r\n", MP, "name"),
    (multipart([("img", None, b"\xff\xfe")]), MP, "UTF-8"),
    (multipart([(f"f{i}", None, b"x") for i in range(21)]), MP, "parts"),
    (b"--b0und4ry\r\nX-Pad: " + b"p" * 20_000 + b"\r\n\r\nx\r\n--b0und4ry--\r\n", MP, "header"),
    (b"--b0und4ry\r\n" + b"X-Pad: " + b"p" * 1000 + b"\r\n" * 1 + (b"X-Pad: " + b"p" * 1000
     + b"\r\n") * 30 + b"\r\nx\r\n--b0und4ry--\r\n", MP, "header count"),
    (b"", {"content-type": "multipart/form-data"}, "boundary"),
])
def test_bad_multipart_is_422(raw, headers, reason):
    err = error_of(post("/analyze", content=raw, headers=headers), 422, "validation_error")
    assert reason in err["message"] + err.get("details", {}).get("reason", "")


def test_multipart_items_as_one_big_json_field():
    # faces:batch over multipart: the items list as JSON in one form field, over
    # the inline size, so converted in the worker thread
    items = [{"img": "QUJD" * 400, "person_id": f"p{i}"} for i in range(200)]
    raw = multipart([("items", None, json.dumps(items).encode()), ("model", None, b"dlib")])
    assert len(raw) > 256 * 1024
    out = post("/batch", content=raw, headers=MP).json()
    assert [i["person_id"] for i in out["body"]["items"]] == [f"p{i}" for i in range(200)]
    assert out["body"]["items"][1]["img"] == "QUJD" * 400 and out["body"]["model"] == "dlib"


def test_urlencoded_form():
    r = post("/analyze", data={"img": "QUJD", "actions": "age,emotion"})
    assert r.status_code == 200, r.text
    assert r.json()["body"]["img"] == "QUJD"
    assert r.json()["body"]["actions"] == ["age", "emotion"]


# ---------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server() -> str:
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(), host="127.0.0.1", port=port,
                                        log_level="warning", lifespan="off"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


def test_chunked_upload_over_the_cap_through_uvicorn(server, photo):
    def parts():
        yield multipart([("img", "big.jpg", b"\xff" * (30 * MiB))])

    with httpx.Client(base_url=server, timeout=60) as client:
        r = client.post("/analyze", content=parts(), headers=MP)
        assert r.request.headers["transfer-encoding"] == "chunked"
        err = error_of(r, 413, "image_too_large")
        assert err["details"]["field"] == "img"
        # the same server still parses a good upload
        ok = client.post("/analyze", files={"img": ("face.jpg", photo)})
        assert ok.status_code == 200 and ok.json()["files"]["img"] == \
            hashlib.sha256(photo).hexdigest()
        assert json.loads(client.post("/analyze", json={"img": "x"}).text)["body"]["img"] == "x"


# ---------------------------------------------------------------------- the body's form
def test_json_sent_as_a_form_is_read_as_json(photo):
    # curl -d '{...}' without -H 'content-type: application/json' sends this type
    img = base64.b64encode(photo).decode()
    r = post("/analyze", content=json.dumps({"img": img, "actions": ["age"]}).encode(),
             headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["body"]["img"] == img and r.json()["body"]["actions"] == ["age"]


@pytest.mark.parametrize("ctype", ["image/jpeg", "application/octet-stream", None])
def test_a_bare_image_body_says_what_to_send(photo, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = post("/analyze", content=photo, headers=headers)
    err = error_of(r, 422, "validation_error")
    assert "multipart/form-data" in err["message"] and "-F img=@" in err["message"]
    assert "content-type: application/json" in err["message"]
    assert len(r.content) < 2000  # the image is not echoed back


def test_bad_json_says_what_to_send():
    err = error_of(post("/analyze", content=b"img=abc", headers={"content-type": "text/plain"}),
                   422, "validation_error")
    assert "multipart/form-data" in err["message"] and "application/json" in err["message"]


def test_a_huge_unknown_field_is_not_echoed_back():
    r = post("/analyze", data={"x" * 100_000: ""})
    err = error_of(r, 422, "validation_error")
    locs = [e["loc"] for e in err["details"]["errors"]]
    assert any(loc[0].startswith("x" * 64 + "...") for loc in locs), locs
    assert len(r.content) < 2000
