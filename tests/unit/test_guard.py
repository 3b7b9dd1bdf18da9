"""Bulk reads and failures accounted for, without Ray: reads and exports are audited,
export has a scope of its own, rate limits answer 429 with Retry-After, failed
authentications are counted and sampled, and an unusable X-Request-Id is replaced
by one id that the answer, its header and the audit trail share.

Everything goes through the real FastAPI app in process over a real gallery
service on SQLite; the request-id check also runs Serve's own request-id
middleware in front of it, as Serve's HTTP servers do.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest

from configs import keyhash
from configs.settings import Settings
from deployments.http.auth import sha256_hex
from deployments.serve.backends import LocalGallery
from deployments.http.app import create_app
from index.gallery import GalleryService, LocalShards
from index.store import SqliteStore
from pipelines.flow import Flow

ADMIN_KEY = "ffs_" + "guard-tests-admin-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def service(tmp_path):
    def make():
        store = SqliteStore(tmp_path / "g.sqlite3")
        return GalleryService(store, LocalShards(store, 1))
    return make


def _app(svc, **settings):
    s = Settings(api_key_sha256=[keyhash.salted(ADMIN_KEY)], **settings)
    app = create_app(Flow(s, None, None, None, LocalGallery(svc)), s)
    app.state.gate.saw({"Gallery": True})
    return app


def _client(app, client=("127.0.0.1", 5000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client),
                             base_url="http://t")


def _metric(text: str, name: str, label: str) -> float:
    m = re.search(rf'^{name}\{{[^}}]*{label}[^}}]*\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_2000_wrong_keys_get_429_after_the_limit(service):
    async def run():
        svc = service()
        app = _app(svc, rate_limits={"failed_auth_per_client": "20/minute"})
        statuses: list[int] = []
        retry: set[str] = set()
        t0 = time.perf_counter()
        async with _client(app) as c:
            for i in range(2000):
                r = await c.get("/v1/collections", headers={"X-API-Key": f"wrong-{i}"})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    retry.add(r.headers["retry-after"])
                    assert r.json()["error"]["code"] == "rate_limited"
            took = time.perf_counter() - t0
            assert statuses[:20] == [401] * 20
            assert statuses[20:] == [429] * 1980
            assert all(1 <= int(s) <= 60 for s in retry)
            # the right key from that client waits too; another client does not
            assert (await c.get("/v1/collections", headers=ADMIN)).status_code == 429
            assert (await c.get("/health")).status_code == 200  # probes are never held
            async with _client(app, ("10.0.0.9", 1)) as other:
                assert (await other.get("/v1/collections", headers=ADMIN)).status_code == 200
                text = (await other.get("/metrics", headers=ADMIN)).text
                await asyncio.sleep(0.2)  # the sampled audit write is not waited for
                trail = (await other.get("/v1/audit?action=auth.failure",
                                         headers=ADMIN)).json()
        print(f"\n2000 wrong keys in {took:.2f}s: {statuses.count(401)} x 401, "
              f"{statuses.count(429)} x 429, Retry-After {sorted(retry)}")
        assert _metric(text, "facefleet_auth_failures_total", 'reason="invalid"') == 20
        assert _metric(text, "facefleet_rate_limited_total", 'limit="failed_auth"') == 1981
        # sampled: one entry for the client's minute, not one per failure
        entries = trail["entries"]
        assert len(entries) == 1 and entries[0]["client"] == "127.0.0.1"
        assert entries[0]["failures"] == 1 and entries[0]["status"] == "refused"
    asyncio.run(run())


def test_per_key_and_per_client_limits(service):
    async def run():
        svc = service()
        app = _app(svc, rate_limits={"per_key": "5/minute", "per_client": "8/minute",
                                     "client_address_header": "X-Forwarded-For"})
        async with _client(app) as c:
            r = await c.post("/v1/keys", headers={**ADMIN, "X-Forwarded-For": "9.9.9.9"},
                             json={"name": "r", "scopes": ["read"]})
            reader = {"X-API-Key": r.json()["key"]}
            got = [(await c.get("/v1/collections",
                                headers={**reader, "X-Forwarded-For": f"1.1.1.{i}"})).status_code
                   for i in range(7)]
            assert got == [200] * 5 + [429] * 2
            r = await c.get("/v1/collections", headers={**reader, "X-Forwarded-For": "1.1.1.99"})
            assert r.status_code == 429 and r.json()["error"]["details"]["limit"] == "key"
            assert 1 <= int(r.headers["retry-after"]) <= 60
        # one client address, several keys: the client's own limit (the last value of
        # the header is the one the proxy appended, whatever the client wrote before it)
        app = _app(svc, rate_limits={"per_client": "8/minute",
                                     "client_address_header": "X-Forwarded-For"})
        async with _client(app) as c:
            keys = []
            for i in range(3):
                r = await c.post("/v1/keys", headers={**ADMIN, "X-Forwarded-For": f"3.3.3.{i}"},
                                 json={"name": f"k{i}", "scopes": ["read"]})
                keys.append({"X-API-Key": r.json()["key"]})
            got = [(await c.get("/v1/collections",
                                headers={**keys[i % 3], "X-Forwarded-For": f"spoof{i}, 2.2.2.2"})
                    ).status_code for i in range(9)]
            assert got == [200] * 8 + [429]
            r = await c.get("/v1/collections", headers={**ADMIN, "X-Forwarded-For": "2.2.2.2"})
            assert r.status_code == 429 and r.json()["error"]["details"]["limit"] == "client"
            r = await c.get("/v1/collections", headers={**ADMIN, "X-Forwarded-For": "4.4.4.4"})
            assert r.status_code == 200
    asyncio.run(run())


def test_reads_and_exports_are_audited_and_export_has_its_own_scope(service):
    async def run():
        svc = service()
        x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
        await svc.register("staff", "m", 16, [{"embedding": v, "person_id": f"p{i}"}
                                              for i, v in enumerate(x)],
                           create_collection=True)
        app = _app(svc)
        async with _client(app) as c:
            made = {}
            for name, scopes in (("reader", ["read"]), ("exporter", ["read", "export"])):
                r = await c.post("/v1/keys", headers=ADMIN, json={
                    "name": name, "scopes": scopes, "collections": ["staff"]})
                made[name] = r.json()
            rd = {"X-API-Key": made["reader"]["key"]}
            ex = {"X-API-Key": made["exporter"]["key"]}
            assert (await c.get("/v1/collections/staff/persons?limit=2", headers=rd)
                    ).status_code == 200
            faces = (await c.get("/v1/collections/staff/faces", headers=rd)).json()["faces"]
            assert (await c.get(f"/v1/collections/staff/faces/{faces[0]['id']}",
                                headers=rd)).status_code == 200
            assert (await c.get("/v1/collections/staff/persons/p1", headers=rd)
                    ).status_code == 200
            r = await c.get("/v1/collections/staff/export", headers=rd)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = await c.get("/v1/collections/staff/export", headers=ex)
            assert r.status_code == 200 and len(r.text.splitlines()) == 3
            assert (await c.get("/v1/collections/staff/export", headers=ADMIN)).status_code == 200
            trail = (await c.get("/v1/audit?collection=staff", headers=ADMIN)).json()["entries"]
        reads = [(e["action"], e["key_id"], e.get("rows")) for e in trail
                 if e["action"] not in ("collection.create", "face.register")]
        rid, eid = made["reader"]["id"], made["exporter"]["id"]
        assert reads == [("persons.list", rid, 2), ("faces.list", rid, 3), ("face.read", rid, 1),
                         ("person.read", rid, 1), ("export", eid, 3),
                         ("export", "settings", 3)]
        assert all(e["collection"] == "staff" for e in trail)
    asyncio.run(run())


def test_an_unusable_request_id_is_replaced_consistently(service):
    """Serve's own request-id middleware echoes whatever id reaches it: with ours in
    front, a 10 KB or odd id is replaced by one id in the header, body and trail."""
    from ray.serve._private.http_util import _apply_middlewares

    from deployments.http.request_ids import proxy_middlewares

    async def run():
        svc = service()
        app = _apply_middlewares(_app(svc), proxy_middlewares())
        async with _client(app) as c:
            for sent in ("x" * 10_000, "bad id\twith <odd> chars", "é".encode()):
                r = await c.post("/v1/keys", headers={**ADMIN, "X-Request-Id": sent},
                                 json={"name": "k", "scopes": ["read"]})
                assert r.status_code == 201, r.text
                header = r.headers.get_list("x-request-id")
                assert len(header) == 1 and header[0] != sent
                assert re.fullmatch(r"[0-9a-f]{32}", header[0])
                trail = (await c.get("/v1/audit?action=key.create",
                                     headers=ADMIN)).json()["entries"]
                assert trail[-1]["target_key_id"] == r.json()["id"]
                assert trail[-1]["request_id"] == header[0]
                r = await c.get("/v1/collections/nope", headers={**ADMIN, "X-Request-Id": sent})
                assert r.json()["error"]["request_id"] == r.headers["x-request-id"] != sent
            # a usable one is kept, everywhere
            r = await c.get("/v1/collections/nope", headers={**ADMIN, "X-Request-Id": "ok-1.2:3"})
            assert r.headers["x-request-id"] == r.json()["error"]["request_id"] == "ok-1.2:3"
    asyncio.run(run())


def test_settings_plain_sha256_keys_still_open_the_api(service):
    async def run():
        s = Settings(api_key_sha256=[sha256_hex(ADMIN_KEY)])
        app = create_app(Flow(s, None, None, None, LocalGallery(service())), s)
        app.state.gate.saw({"Gallery": True})
        async with _client(app) as c:
            assert (await c.get("/v1/collections", headers=ADMIN)).status_code == 200
    asyncio.run(run())


def test_an_import_does_not_confirm_ids_outside_the_keys_collections(service):
    async def run():
        svc = service()
        x = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
        await svc.register("theirs", "m", 16, [{"embedding": v} for v in x],
                           create_collection=True)
        await svc.create_collection("mine", "m", 16)
        app = _app(svc)
        async with _client(app) as c:
            lines = (await c.get("/v1/collections/theirs/export", headers=ADMIN)).content
            r = await c.post("/v1/keys", headers=ADMIN, json={
                "name": "w", "scopes": ["write"], "collections": ["mine"]})
            limited = {"X-API-Key": r.json()["key"]}
            r = await c.post("/v1/collections/mine/import", headers=limited, content=lines)
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["imported"], got["skipped"], got["elsewhere"]) == (0, 3, 0)
            assert got["copied"] == {}  # nor copies them
            # a key that sees every collection copies them, under new ids
            r = await c.post("/v1/collections/mine/import", headers=ADMIN, content=lines)
            got = r.json()
            assert (got["imported"], got["skipped"], got["elsewhere"]) == (3, 0, 0)
            assert len(got["copied"]) == 3
    asyncio.run(run())
