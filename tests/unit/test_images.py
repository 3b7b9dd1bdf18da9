"""Image fields of requests: base64, data URIs, URLs (with SSRF guard and size cap), files."""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import threading
from pathlib import Path

import pytest

from configs.settings import Settings
from deployments.images import ImageResolver
from configs.errors import ImageDecodeError, ImageTooLarge, UrlFetchFailed, ValidationError


def resolve(settings: Settings, value) -> bytes:
    async def go():
        r = ImageResolver(settings)
        try:
            return await r.resolve(value)
        finally:
            await r.aclose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def jpeg(faces) -> bytes:
    return (faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory, jpeg):
    root = tmp_path_factory.mktemp("www")
    (root / "face.jpg").write_bytes(jpeg)
    (root / "big.bin").write_bytes(b"\xff" * (3 * 1024 * 1024))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_base64_forms(jpeg):
    s = Settings()
    raw = base64.b64encode(jpeg).decode()
    assert resolve(s, raw) == jpeg
    assert resolve(s, "data:image/jpeg;base64," + raw) == jpeg
    assert resolve(s, "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))) == jpeg
    assert resolve(s, base64.urlsafe_b64encode(jpeg).decode().rstrip("=")) == jpeg


def test_bad_strings():
    s = Settings()
    with pytest.raises(ImageDecodeError):
        resolve(s, "definitely not base64 !!!")
    with pytest.raises(ValidationError):
        resolve(s, "   ")


def test_oversized_base64_is_refused_before_decoding():
    s = Settings(images={"max_bytes": 1000})
    with pytest.raises(ImageTooLarge):
        resolve(s, "A" * 5000)


def test_loopback_urls_are_refused_by_default(server):
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(Settings(), f"{server}/face.jpg")
    assert "non-public" in exc.value.message
    with pytest.raises(UrlFetchFailed):
        resolve(Settings(), "http://[::1]:9/face.jpg")


def test_allowed_url_fetch_and_size_cap(server, jpeg):
    s = Settings(urls={"allow_private": True}, images={"max_bytes": 2 * 1024 * 1024})
    assert resolve(s, f"{server}/face.jpg") == jpeg
    with pytest.raises(ImageTooLarge):
        resolve(s, f"{server}/big.bin")
    with pytest.raises(UrlFetchFailed) as exc:
        resolve(s, f"{server}/missing.jpg")
    assert exc.value.details["status"] == 404


def test_urls_can_be_disabled(server):
    with pytest.raises(ValidationError):
        resolve(Settings(urls={"enabled": False}), f"{server}/face.jpg")


def test_file_paths_only_under_the_configured_root(tmp_path: Path, jpeg):
    inside = tmp_path / "in" / "face.jpg"
    inside.parent.mkdir()
    inside.write_bytes(jpeg)
    outside = tmp_path / "out.jpg"
    outside.write_bytes(jpeg)
    # off by default: a path is just a (bad) base64 string
    with pytest.raises(ImageDecodeError):
        resolve(Settings(), str(inside))
    s = Settings(file_root=tmp_path / "in")
    assert resolve(s, str(inside)) == jpeg
    with pytest.raises(ValidationError):
        resolve(s, str(outside))
    with pytest.raises(ValidationError):
        resolve(s, str(tmp_path / "in" / ".." / "out.jpg"))
