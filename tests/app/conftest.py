"""The real Serve application on a local Ray instance, once per test session.

Started from ``serve_config.yaml`` exactly as ``make serve`` does, with data in
a temp directory, on a free loopback port. A small HTTP server on 127.0.0.1
serves the shared photos for the URL-input tests.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments import local
from tests.app.photos import phone_photo

REPO = Path(__file__).resolve().parent.parent.parent
GALLERY = True


class Service:
    def __init__(self, base_url: str, config: dict) -> None:
        self.base_url = base_url
        self.config = config
        self.client = httpx.Client(base_url=base_url, timeout=120)

    def redeploy(self, config: dict, ready_timeout_s: float = 300) -> None:
        """Apply ``config`` and wait until ``/ready`` answers 200, so the next test does
        not meet the start-up gate's 503 (a loaded machine can take a while)."""
        local.start(config)
        self.config = config
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if self.client.get("/ready", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready {ready_timeout_s} s after a redeploy")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def service(tmp_path_factory, photo_server) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("data")
    port = local.free_port()
    photo_port = int(photo_server.rsplit(":", 1)[1])
    overrides = {"gallery": GALLERY, "settings": {"data_dir": str(data),
                              "model_dir": str(REPO / "data" / "models"),
                              "urls": {"allow_private": True, "timeout_s": 5,
                                       "allowed_ports": [photo_port]}}}
    config = local.load_config(REPO / "serve_config.yaml", overrides, port)
    local.start(config, num_cpus=2)
    svc = Service(f"http://127.0.0.1:{port}", config)
    try:
        yield svc
    finally:
        svc.client.close()
        local.stop()


@pytest.fixture(scope="session")
def api(service) -> httpx.Client:
    return service.client


@pytest.fixture(scope="session")
def phone_photos(faces, tmp_path_factory) -> dict[int, Path]:
    """Real photos of 5, 10 and 19 MiB as phones send them (key: size in MiB)."""
    d = tmp_path_factory.mktemp("phone")
    return {mb: phone_photo(faces / "deepface/img1.jpg", mb << 20, d / f"{mb}mib.jpg")
            for mb in (5, 10, 19)}


@pytest.fixture(scope="session")
def photo_server(faces) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(faces))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass
