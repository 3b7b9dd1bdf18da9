"""/docs and /redoc work offline: their pages reference only the service's own
assets, which the service serves, with or without API keys and during start-up."""

from __future__ import annotations

import asyncio
import hashlib
import re
from urllib.parse import urlsplit

import httpx
import pytest

from configs.settings import Settings
from deployments.http.app import create_app
from pipelines.flow import Flow


def _get_all(settings: Settings, paths: list[str]) -> list[httpx.Response]:
    app = create_app(Flow(settings, None, None, None), settings)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(go())


#: src= / href= / spec-url= attributes, and url: '...' in Swagger UI's script
_REF = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*['"]([^'"]+)['"]""")


def _references(html: str) -> list[str]:
    return [a or b for a, b in _REF.findall(html)]


@pytest.mark.parametrize("keys", [[], [hashlib.sha256(b"k").hexdigest()]], ids=["open", "keys"])
def test_docs_pages_use_only_same_origin_assets_that_are_served(keys):
    s = Settings(api_key_sha256=keys)
    docs, redoc = _get_all(s, ["/docs", "/redoc"])
    assets = set()
    for page in (docs, redoc):
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        refs = _references(page.text)
        assert refs, page.text[:500]
        assert "cdn" not in page.text.lower() and "googleapis" not in page.text
        for ref in refs:
            parts = urlsplit(ref)
            assert not parts.scheme and not parts.netloc, f"{ref} is not same-origin"
            assets.add(parts.path)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
            "/docs/assets/redoc.standalone.js", "/openapi.json"} <= assets
    answers = _get_all(s, sorted(assets))
    for path, r in zip(sorted(assets), answers, strict=True):
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        assert len(r.content) > 1000, path
    js = {p: r for p, r in zip(sorted(assets), answers, strict=True) if p.endswith(".js")}
    assert b"SwaggerUIBundle" in js["/docs/assets/swagger-ui-bundle.js"].content
    assert b"Redoc" in js["/docs/assets/redoc.standalone.js"].content


def test_unknown_asset_is_a_typed_404():
    (r,) = _get_all(Settings(), ["/docs/assets/secret.txt"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
