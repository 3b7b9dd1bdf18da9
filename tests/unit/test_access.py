"""Access control without Ray: the route map covers every route, keys are what they
claim, and an ingress replica's key table fails closed.

The key table reads a real gallery service over a real SQLite store; the
HTTP checks go through the real FastAPI app in process (``create_app``), on
routes that need no model.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import httpx
import pytest

from pipelines.errors import Unavailable
from configs.settings import AuthSettings, Settings
from deployments.http.access import BODY, RULES, UNMAPPED, rule_of
from deployments.http.auth import SETTINGS_ADMIN, KeyTable, key_id_of, new_key, sha256_hex
from deployments.serve.backends import LocalGallery
from deployments.http.app import create_app
from index.audit import Actor
from index.gallery import GalleryService, LocalShards
from index.store import KeyRecord, SqliteStore
from pipelines.flow import Flow

ADMIN_KEY = "bootstrap-admin-key"


def app_routes(app) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, as its OpenAPI document lists them."""
    return {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}


def test_every_route_has_a_rule_and_every_rule_a_route():
    s = Settings()
    app = create_app(Flow(s, None, None, None), s)
    routes = app_routes(app)
    assert routes - set(RULES) == set(), "routes without a rule (they need an unlimited admin)"
    assert set(RULES) - routes == set(), "rules naming no route"
    for (method, path), rule in RULES.items():
        if rule.collection not in (None, BODY):
            assert "{" + rule.collection + "}" in path, (method, path)
    assert rule_of("GET", "/v1/not-a-route") is UNMAPPED


def test_new_keys_carry_256_random_bits_behind_a_public_id():
    made = [new_key() for _ in range(50)]
    assert len({k for _, k, _ in made}) == 50
    for kid, key, digest in made:
        assert key_id_of(key) == kid and len(kid) == 16
        secret = key.rsplit("_", 1)[-1] if key.count("_") == 2 else key[len("ffk_") + 17:]
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        assert len(raw) == 32
        assert digest == hashlib.sha256(key.encode()).hexdigest() and key not in digest
    assert key_id_of("not-a-facefleet-key") is None
    assert key_id_of("ffk_ZZZZZZZZZZZZZZZZ_secret") is None


@pytest.fixture
def service(tmp_path):
    """A real gallery service over SQLite, made inside the test's own event loop."""
    def make():
        store = SqliteStore(tmp_path / "g.sqlite3")
        return GalleryService(store, LocalShards(store, 1))
    return make


def test_key_table_accepts_live_keys_and_refuses_revoked_ones_within_max_age(service):
    async def run():
        svc = service()
        cfg = AuthSettings(refresh_s=0.05, max_age_s=0.3)
        table = KeyTable([sha256_hex(ADMIN_KEY)], svc.access.key_table, cfg)
        assert table.enabled
        assert await table.authenticate(ADMIN_KEY) == SETTINGS_ADMIN
        assert await table.authenticate("wrong") is None
        kid, key, digest = new_key()
        await svc.access.create_key(KeyRecord(kid, "reader", digest, ("read",), ("a",), time.time()))
        p = await table.authenticate(key)
        assert p.key_id == kid and p.has("read") and not p.has("write")
        assert p.sees("a") and not p.sees("b")
        # a key made elsewhere a moment ago is found at once, though the copy is fresh
        # (a slow-polling table: only the re-read on a missing id can find it)
        slow = KeyTable([], svc.access.key_table, AuthSettings(refresh_s=10, max_age_s=10))
        assert (await slow.authenticate(key)).key_id == kid
        kid2, key2, digest2 = new_key()
        await svc.access.create_key(KeyRecord(kid2, "new", digest2, ("write",), None, time.time()))
        # made just after that read, with no pause: still found on first use
        assert (await slow.authenticate(key2)).key_id == kid2
        # an unknown id waits for one fresh read and is refused, without a read each
        reads = {"n": 0}

        async def counted(version, used):
            reads["n"] += 1
            return await svc.access.key_table(version, used)

        counting = KeyTable([], counted, AuthSettings(refresh_s=10, max_age_s=10))
        assert (await counting.authenticate(key)).key_id == kid
        unknown = [new_key()[1] for _ in range(50)]
        assert await asyncio.gather(*(counting.authenticate(k) for k in unknown)) \
            == [None] * 50
        assert reads["n"] <= 4
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert await table.authenticate(forged) is None  # right id, wrong secret
        await asyncio.sleep(0.2)  # a later poll writes the use back, for last_used_at
        assert {k["id"]: k.get("last_used_at", 0) for k in await svc.access.list_keys()}[kid] \
            > time.time() - 5
        await svc.access.revoke_key(kid, Actor("settings"))  # from another replica
        t0 = time.monotonic()
        while await table.authenticate(key) is not None:
            await asyncio.sleep(0.01)
        assert time.monotonic() - t0 <= cfg.max_age_s + 0.2
        assert [k["id"] for k in await svc.access.list_keys()] == [kid2]

    asyncio.run(run())


def test_key_table_fails_closed_when_the_store_is_unreachable(service):
    async def run():
        svc = service()
        calls = {"n": 0}

        async def flaky(version, used):
            calls["n"] += 1
            if calls["n"] > 1:
                raise Unavailable("the store is down")
            return await svc.access.key_table(version, used)

        kid, key, digest = new_key()
        await svc.access.create_key(KeyRecord(kid, "w", digest, ("write",), None, time.time()))
        table = KeyTable([sha256_hex(ADMIN_KEY)], flaky, AuthSettings(refresh_s=5, max_age_s=0.2))
        assert (await table.authenticate(key)).key_id == kid
        await asyncio.sleep(0.25)
        with pytest.raises(Unavailable):
            await table.authenticate(key)
        assert await table.authenticate(ADMIN_KEY) == SETTINGS_ADMIN  # settings keys still work

    asyncio.run(run())


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _app(settings: Settings, svc):
    app = create_app(Flow(settings, None, None, None, LocalGallery(svc)), settings)
    # no model stages here, so the start-up gate would hold every route: these
    # checks are about access, so let it count the service as started
    app.state.gate.saw({"Gallery": True})
    return app


def test_http_answers_without_models(service):
    async def run():
        svc = service()
        off = Settings()
        async with _client(_app(off, svc)) as c:
            r = await c.get("/v1/keys")
            assert r.status_code == 409 and r.json()["error"]["code"] == "auth_disabled"
            # the trail works without auth, and says nobody's key made the change
            await svc.create_collection("off", "dlib", 128, actor=Actor(None, "rid-off"))
            r = await c.get("/v1/audit")
            assert r.status_code == 200
            assert r.json()["entries"][-1] == {
                "seq": 1, "at": r.json()["entries"][-1]["at"], "action": "collection.create",
                "collection": "off", "key_id": None, "request_id": "rid-off", "status": "ok"}
            assert r.json()["next_cursor"] is None
        on = Settings(api_key_sha256=[sha256_hex(ADMIN_KEY)])
        app = _app(on, svc)
        admin = {"X-API-Key": ADMIN_KEY}
        async with _client(app) as c:
            assert (await c.get("/health")).status_code == 200
            r = await c.get("/v1/keys")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await c.post("/v1/keys", headers=admin,
                             json={"name": "ro", "scopes": ["read"], "collections": ["a"]})
            assert r.status_code == 201, r.text
            made = r.json()
            assert made["key"].startswith("ffk_") and made["collections"] == ["a"]
            ro = {"Authorization": f"Bearer {made['key']}"}
            for method, path in [("GET", "/v1/keys"), ("GET", "/v1/audit"),
                                 ("DELETE", "/v1/collections/a"), ("GET", "/metrics")]:
                r = await c.request(method, path, headers=ro)
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", path
            r = await c.get("/metrics", headers=admin)  # names every collection
            assert r.status_code == 200 and "facefleet_" in r.text
            hidden = await c.get("/v1/collections/b", headers=ro)
            missing = await c.get("/v1/collections/b", headers=admin)
            assert hidden.status_code == missing.status_code == 404
            strip = lambda r: {k: v for k, v in r.json()["error"].items() if k != "request_id"}
            assert strip(hidden) == strip(missing)
            listed = (await c.get("/v1/keys", headers=admin)).json()["keys"]
            assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
            assert set(listed[0]) - {"last_used_at"} == {"id", "name", "scopes", "collections",
                                                         "created_at", "expires_at"}
            for q in ("limit=0", "limit=1001", "cursor=abc", "action=nope", "since=yesterday"):
                r = await c.get(f"/v1/audit?{q}", headers=admin)
                assert r.status_code == 422, q
            assert (await c.delete(f"/v1/keys/{made['id']}", headers=admin)).status_code == 204
            assert (await c.get("/v1/collections", headers=ro)).status_code == 401
            assert (await c.delete(f"/v1/keys/{made['id']}", headers=admin)).status_code == 404
            trail = (await c.get("/v1/audit", headers=admin)).json()
            # the keyless request above was refused, and sampled into the trail
            failures = [e for e in trail["entries"] if e["action"] == "auth.failure"]
            assert len(failures) == 1 and failures[0]["status"] == "refused"
            trail["entries"] = [e for e in trail["entries"] if e["action"] != "auth.failure"]
            assert [e["action"] for e in trail["entries"]] == ["collection.create",
                                                                "key.create", "key.revoke"]
            made_entry = trail["entries"][1]
            assert made_entry["key_id"] == "settings" and made_entry["target_key_id"] == made["id"]
            assert "collection" not in made_entry and "face_ids" not in made_entry
            assert all(made["key"] not in str(e) for e in trail["entries"])

    asyncio.run(run())
