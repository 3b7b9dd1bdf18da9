"""Key lifecycle without Ray: salted settings keys, authentication off only when
said so, keys that expire, and refusals that take the same time whether or not
the key id exists.

The key table reads a real gallery service over a real SQLite store; the HTTP
checks go through the real FastAPI app in process.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pydantic
import pytest

from configs import keyhash
from configs.settings import AuthSettings, Settings
from deployments.http.auth import SETTINGS_ADMIN, KeyTable, new_key, sha256_hex
from deployments.serve.backends import LocalGallery
from deployments.http.app import create_app
from index.gallery import GalleryService, LocalShards
from index.store import KeyRecord, SqliteStore
from pipelines.flow import Flow

ADMIN_KEY = "ffs_" + "k3y-for-the-admin-of-these-tests-0123456789"


@pytest.fixture
def service(tmp_path):
    def make():
        store = SqliteStore(tmp_path / "g.sqlite3")
        return GalleryService(store, LocalShards(store, 1))
    return make


def test_salted_settings_keys_and_the_older_plain_form():
    entry = keyhash.salted(ADMIN_KEY)
    assert entry.startswith("hmac-sha256:") and ADMIN_KEY not in entry
    assert keyhash.salted(ADMIN_KEY) != entry  # a salt of its own each time
    plain = bytes.fromhex(sha256_hex(ADMIN_KEY))
    assert keyhash.parse(entry).matches(ADMIN_KEY, plain)
    assert not keyhash.parse(entry).matches(ADMIN_KEY + "x", plain)
    assert keyhash.parse(sha256_hex(ADMIN_KEY)).matches(ADMIN_KEY, plain)  # compatibility
    for bad in ("", "abc", "hmac-sha256:00:11", "sha256:" + sha256_hex("x")):
        with pytest.raises(ValueError):
            keyhash.parse(bad)
    with pytest.raises(pydantic.ValidationError):
        Settings(api_key_sha256=["not a hash"])
    for weak in ("short", "a" * 64, "abababababababababababababababab"):
        with pytest.raises(ValueError):
            keyhash.check_strength(weak)
    keyhash.check_strength(ADMIN_KEY)

    async def run():
        table = KeyTable([entry], None)
        assert table.enabled
        assert await table.authenticate(ADMIN_KEY) == SETTINGS_ADMIN
        assert await table.authenticate(ADMIN_KEY[:-1]) is None
    asyncio.run(run())


def test_keyhash_command_makes_a_working_entry(capsys):
    assert keyhash.main(["new"]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    key, entry = out["key"].strip(), out["entry"].strip()
    assert keyhash.parse(entry).matches(key, bytes.fromhex(sha256_hex(key)))
    assert keyhash.main(["nope"]) == 2


def test_authentication_is_off_only_when_said_so():
    # auto (the default) with no key: the open local default
    assert not Settings().auth_on
    assert KeyTable([], None).enabled is False
    assert Settings(api_key_sha256=[sha256_hex(ADMIN_KEY)]).auth_on
    # explicitly on with no key: refused at start
    with pytest.raises(pydantic.ValidationError, match="auth.enabled is true"):
        Settings(auth={"enabled": True})
    assert not Settings(auth={"enabled": False},
                        api_key_sha256=[sha256_hex(ADMIN_KEY)]).auth_on
    # on reconfigure: an empty list cannot turn keys off; nothing changes when refused
    table = KeyTable([sha256_hex(ADMIN_KEY)], None)
    with pytest.raises(ValueError, match="auth.enabled: false"):
        table.set_settings_keys([])
    assert table.enabled

    async def still_admin():
        return await table.authenticate(ADMIN_KEY)
    assert asyncio.run(still_admin()) == SETTINGS_ADMIN
    with pytest.raises(ValueError):
        table.set_settings_keys(["garbage"])
    table.set_settings_keys([], enabled=False)  # explicit: off
    assert not table.enabled
    # auto, started open: keys given later turn it on, and then it stays on
    late = KeyTable([], None)
    late.set_settings_keys([keyhash.salted(ADMIN_KEY)])
    assert late.enabled
    with pytest.raises(ValueError):
        late.set_settings_keys([])
    # explicitly on: the same refusal
    on = KeyTable([sha256_hex(ADMIN_KEY)], None, AuthSettings(enabled=True))
    with pytest.raises(ValueError):
        on.set_settings_keys([])


def test_expired_keys_are_refused(service):
    async def run():
        svc = service()
        table = KeyTable([sha256_hex(ADMIN_KEY)], svc.access.key_table,
                         AuthSettings(refresh_s=0.05, max_age_s=0.3))
        kid, key, digest = new_key()
        await svc.access.create_key(KeyRecord(kid, "brief", digest, ("read",), None, time.time(),
                                       expires_at=time.time() + 0.5))
        assert (await table.authenticate(key)).key_id == kid
        listed = {k["id"]: k for k in await svc.access.list_keys()}
        assert listed[kid]["expires_at"] > time.time()
        await asyncio.sleep(0.6)
        assert await table.authenticate(key) is None
    asyncio.run(run())


def test_refusals_take_the_same_time_for_known_and_unknown_key_ids(service):
    """A known id with a wrong secret waits for the read an unknown id waits for."""
    async def run():
        svc = service()
        table = KeyTable([sha256_hex(ADMIN_KEY)], svc.access.key_table,
                         AuthSettings(refresh_s=0.05, max_age_s=1.0))
        kid, key, digest = new_key()
        await svc.access.create_key(KeyRecord(kid, "k", digest, ("read",), None, time.time()))
        assert (await table.authenticate(key)).key_id == kid
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        known, unknown, good = [], [], []
        for _ in range(15):
            for bucket, k in ((known, forged), (unknown, new_key()[1]), (good, key)):
                t0 = time.perf_counter()
                await table.authenticate(k)
                bucket.append(time.perf_counter() - t0)
        mk, mu, mg = (statistics.median(x) * 1000 for x in (known, unknown, good))
        print(f"\nmedian ms: known id, wrong secret {mk:.1f}; unknown id {mu:.1f}; "
              f"valid key {mg:.1f}")
        # both refusals wait for one fresh read (at least MISS_REREAD_S apart), so they
        # are of one size, well above the answer to a valid key
        assert 0.5 < mk / mu < 2.0
        assert min(mk, mu) > 5 * mg
    asyncio.run(run())


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_keys_made_over_http_expire_within_the_maximum_lifetime(service):
    async def run():
        svc = service()
        s = Settings(api_key_sha256=[keyhash.salted(ADMIN_KEY)],
                     auth={"key_max_lifetime_days": 30})
        app = create_app(Flow(s, None, None, None, LocalGallery(svc)), s)
        app.state.gate.saw({"Gallery": True})
        admin = {"X-API-Key": ADMIN_KEY}
        async with _client(app) as c:
            now = time.time()
            r = await c.post("/v1/keys", headers=admin, json={"name": "a", "scopes": ["read"]})
            assert r.status_code == 201 and abs(r.json()["expires_at"] - (now + 30 * 86400)) < 60
            r = await c.post("/v1/keys", headers=admin,
                             json={"name": "b", "scopes": ["read"], "ttl_s": 0.5})
            assert r.status_code == 201, r.text
            brief = {"X-API-Key": r.json()["key"]}
            assert (await c.get("/v1/collections", headers=brief)).status_code == 200
            r = await c.post("/v1/keys", headers=admin, json={
                "name": "c", "scopes": ["read"], "expires_at": "2099-01-01T00:00:00Z"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
            assert "30 days" in r.json()["error"]["message"]
            for bad in ({"expires_at": now - 10}, {"ttl_s": 5, "expires_at": now + 60},
                        {"ttl_s": -1}, {"expires_at": "tomorrow"}):
                r = await c.post("/v1/keys", headers=admin,
                                 json={"name": "d", "scopes": ["read"], **bad})
                assert r.status_code == 422, (bad, r.text)
            r = await c.post("/v1/keys", headers=admin, json={
                "name": "e", "scopes": ["read"],
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                            time.gmtime(now + 86400))})
            assert r.status_code == 201 and abs(r.json()["expires_at"] - now - 86400) < 5
            await asyncio.sleep(0.7)
            r = await c.get("/v1/collections", headers=brief)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    asyncio.run(run())


def test_an_ingress_user_config_never_turns_keys_off_by_an_empty_list():
    from deployments.http.auth import settings_keys_update

    entry = keyhash.salted(ADMIN_KEY)
    assert settings_keys_update({}, [entry]) == ([entry], None)  # batch knobs only
    assert settings_keys_update({"api_key_sha256": [entry]}, []) == ([entry], None)
    for bad in ({"api_key_sha256": []}, {"api_key_sha256": None},
                {"api_key_sha256": [], "auth_enabled": True}):
        with pytest.raises(ValueError, match="auth_enabled: false"):
            settings_keys_update(bad, [entry])
    assert settings_keys_update({"api_key_sha256": [], "auth_enabled": False}, [entry]) \
        == ([], False)
    with pytest.raises(ValueError):
        settings_keys_update({"auth_enabled": "no"}, [])
