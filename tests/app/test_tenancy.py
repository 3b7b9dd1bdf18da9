"""Tenancy on the real Serve app: scoped keys per collection, revocation, the audit trail.

The session's app is reconfigured once for this module: two Ingress
replicas and an admin key from the settings (``user_config``); afterwards
authentication is off again (the second replica stays).
Requests that take an image carry real photos through the real models. The isolation
matrix runs every route group with a read, a write and an admin key limited
to one collection, against that collection and another one; revocation is
watched on each Ingress replica directly (their own ports, bypassing
HAProxy); the audit trail of a scripted sequence is read back in pages.
"""

from __future__ import annotations

import copy
import hashlib
import time

import httpx
import pytest

from facefleet import Client
from facefleet.errors import Forbidden, Unauthorized
from tests.app.photos import b64

pytestmark = pytest.mark.app

ADMIN = "tenancy-bootstrap-admin-key"
OWN, OTHER, OWN_NEW, MISSING = "tn-own", "tn-other", "tn-own-new", "tn-missing"
LFW = "lfw-dev/images"


def _ingress(config: dict, keys: list[str], replicas: int) -> dict:
    c = copy.deepcopy(config)
    for d in c["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            # an empty list no longer turns keys off by itself: say so explicitly
            d["user_config"] = {"api_key_sha256": keys, "auth_enabled": bool(keys)}
            d["num_replicas"] = replicas
    return c


def test_key_management_is_409_when_auth_is_off(api):
    r = api.get("/v1/keys")
    assert r.status_code == 409 and r.json()["error"]["code"] == "auth_disabled"
    assert api.post("/v1/keys", json={"name": "x", "scopes": ["read"]}).status_code == 409


@pytest.fixture(scope="module")
def tenants(service, faces):
    """The app with auth on and 2 Ingress replicas; collections OWN and OTHER with a
    face each; a read, a write and an admin key limited to OWN (and OWN_NEW)."""
    original = service.config
    service.redeploy(_ingress(original, [hashlib.sha256(ADMIN.encode()).hexdigest()], 2))
    admin = Client(service.base_url, api_key=ADMIN, timeout=120)
    try:
        photos = [p for who in ("Ricardo_Lagos", "Paul_Wolfowitz")
                  for p in sorted((faces / LFW / who).glob("*.jpg"))]
        others = sorted((faces / LFW / "Zhu_Rongji").glob("*.jpg"))
        for coll, img, pid in ((OWN, photos[0], "p-own"), (OTHER, others[0], "p-other")):
            admin.register(coll, img, person_id=pid)
        keys = {scope: admin.create_key(f"{scope} of {OWN}", [scope],
                                        collections=[OWN, OWN_NEW])
                for scope in ("read", "write", "admin")}
        # a face and a person for each key to forget in OWN
        targets = {scope: {"face": admin.register(OWN, photos[1 + i], person_id=f"pf-{scope}").id,
                           "person": admin.register(OWN, photos[5 + i],
                                                    person_id=f"pp-{scope}").person_id}
                   for i, scope in enumerate(keys)}
        other_face = admin.person(OTHER, "p-other").faces[0].id
        yield {"admin": admin, "keys": keys, "targets": targets, "photos": photos,
               "other_face": other_face, "service": service}
    finally:
        admin.close()
        # auth off and one Ingress replica again for what runs next (tests of
        # per-replica counters need a single replica); the empty key list is
        # explicit, since a replica keeps its last user_config when one is dropped
        service.redeploy(_ingress(original, [], 1))


def _as(service, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, timeout=120,
                        headers={"Authorization": f"Bearer {key}"})


def test_isolation_matrix(tenants, faces):
    """scope x route group x own / other collection -> status."""
    svc, admin, photos = tenants["service"], tenants["admin"], tenants["photos"]
    img = b64(photos[9])
    pair = {"img1": img, "img2": b64(photos[10])}
    other_face = tenants["other_face"]
    seen: dict[tuple[str, str, str, str], int] = {}

    def hidden(r, name: str) -> bool:
        """Exactly the answer for a collection that does not exist."""
        err = r.json()["error"]
        return (err["code"] == "collection_not_found" and err["details"] == {"collection": name}
                and err["message"] == f"collection {name!r} does not exist")

    # what a collection that really does not exist answers, for comparison
    missing = admin._http.get(f"/v1/collections/{MISSING}")
    assert missing.status_code == 404 and hidden(missing, MISSING)
    # OWN's faces as an export wrote them: an import of them changes nothing
    own_lines = admin._http.get(f"/v1/collections/{OWN}/export").content

    for scope, key in tenants["keys"].items():
        t = tenants["targets"][scope]
        with _as(svc, key.key) as c:
            def call(group: str, where: str, method: str, path: str, **kw) -> httpx.Response:
                r = c.request(method, path, **kw)
                seen[(scope, group, where, method + " " + path.split("?")[0])] = r.status_code
                return r

            # analysis: any key
            for path, body in (("/v1/detect", {"img": img}), ("/v1/embed", {"img": img}),
                               ("/v1/verify", pair), ("/v1/analyze", {"img": img})):
                assert call("analysis", "-", "POST", path, json=body).status_code == 200
            # listing: only the key's collections
            names = {x["collection"] for x in
                     call("list", "-", "GET", "/v1/collections").json()["collections"]}
            assert OWN in names and OTHER not in names
            # reads: any scope in its own collection; another collection is hidden
            for where, coll, face, person in (("own", OWN, t["face"], f"pf-{scope}"),
                                              ("other", OTHER, other_face, "p-other")):
                want = 200 if where == "own" else 404
                for method, path, kw in (
                        ("GET", f"/v1/collections/{coll}", {}),
                        ("GET", f"/v1/collections/{coll}/faces/{face}", {}),
                        ("GET", f"/v1/collections/{coll}/persons/{person}", {}),
                        ("POST", f"/v1/collections/{coll}/identify", {"json": {"img": img}}),
                        ("GET", f"/v1/collections/{coll}/persons?limit=5", {}),
                        ("GET", f"/v1/collections/{coll}/faces?limit=5", {})):
                    r = call("read", where, method, path, **kw)
                    assert r.status_code == want, (scope, path, r.text)
                    if where == "other":
                        assert hidden(r, OTHER), r.text
                # export (every template) has a scope of its own, which admin includes
                r = call("read", where, "GET", f"/v1/collections/{coll}/export")
                if scope != "admin":
                    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
                else:
                    assert r.status_code == want and (where == "own" or hidden(r, OTHER))
            # writes: write and admin keys in their own collection only
            for where, coll, face, person in (("own", OWN, t["face"], f"pp-{scope}"),
                                              ("other", OTHER, other_face, "p-other")):
                for method, path, kw, ok in (
                        ("POST", f"/v1/collections/{coll}/faces",
                         {"json": {"img": img, "person_id": f"new-{scope}"}}, 201),
                        ("POST", f"/v1/collections/{coll}/faces:batch",
                         {"json": {"items": [{"img": img, "person_id": f"new-{scope}"}]}}, 200),
                        ("DELETE", f"/v1/collections/{coll}/faces/{face}", {}, 204),
                        ("DELETE", f"/v1/collections/{coll}/persons/{person}", {}, 200),
                        ("PATCH", f"/v1/collections/{coll}/persons/"
                         f"{'pf-' + scope if where == 'own' else person}",
                         {"json": {"labels": {"by": scope}}}, 200),
                        ("POST", f"/v1/collections/{coll}/import", {"content": own_lines}, 200)):
                    r = call("write", where, method, path, **kw)
                    want = 403 if scope == "read" else ok if where == "own" else 404
                    assert r.status_code == want, (scope, method, path, r.text)
                    if want == 404:
                        assert hidden(r, OTHER), r.text
                    if want == 403:
                        assert r.json()["error"]["code"] == "forbidden"
            # collections: admin keys only, in their own list
            for where, coll in (("own", OWN_NEW), ("other", "tn-other-new")):
                r = call("admin", where, "POST", "/v1/collections", json={"name": coll})
                want = 403 if scope != "admin" else 201 if where == "own" else 404
                assert r.status_code == want, (scope, coll, r.text)
                if want == 404:
                    assert hidden(r, "tn-other-new")
            for where, coll in (("own", OWN_NEW), ("other", OTHER)):
                r = call("admin", where, "DELETE", f"/v1/collections/{coll}")
                want = 403 if scope != "admin" else 200 if where == "own" else 404
                assert r.status_code == want, (scope, coll, r.text)
            # keys, audit and metrics (which name every collection): not even an admin
            # key limited to collections
            for method, path, kw in (("GET", "/v1/keys", {}), ("GET", "/v1/audit", {}),
                                     ("GET", "/metrics", {}),
                                     ("POST", "/v1/keys",
                                      {"json": {"name": "escalate", "scopes": ["admin"]}})):
                r = call("keys", "-", method, path, **kw)
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", path
            # DeepFace routes: /represent reads, /register writes, /search reads; their
            # collection is the body's (DeepFace's own 400 for a missing one)
            assert call("compat", "-", "POST", "/represent", json={"img": img}).status_code == 200
            for where, coll in (("own", OWN), ("other", OTHER)):
                r = call("compat", where, "POST", "/register",
                         json={"img": img, "collection": coll, "person_id": f"df-{scope}"})
                want = 403 if scope == "read" else 200 if where == "own" else 400
                assert r.status_code == want, (scope, coll, r.text)
                if want == 403:
                    assert r.json()["exception"]
                r = call("compat", where, "POST", "/search", json={"img": img, "collection": coll})
                assert r.status_code == (200 if where == "own" else 400), (scope, coll, r.text)
                if where == "other":
                    assert r.json()["error"]["code"] == "collection_not_found"
    # the other collection is as it was, and the settings key still sees everything
    assert admin.collection(OTHER).faces == 1
    assert admin._http.get("/metrics").status_code == 200
    assert admin.person(OTHER, "p-other").faces[0].id == other_face
    # no key, an unknown key, and a made-up key in the right format: 401
    with httpx.Client(base_url=svc.base_url, timeout=60) as anon:
        for headers in ({}, {"X-API-Key": "nope"},
                        {"X-API-Key": "ffk_0123456789abcdef_" + "A" * 43}):
            r = anon.get(f"/v1/collections/{OWN}", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert anon.get("/health").status_code == 200 and anon.get("/ready").status_code == 200
    # the matrix was complete: 3 scopes, every group, own and other where it applies
    groups = {(s, g, w) for s, g, w, _ in seen}
    for scope in ("read", "write", "admin"):
        for g in ("read", "write", "admin", "compat"):
            assert {(scope, g, "own"), (scope, g, "other")} <= groups


def _replica_urls() -> list[str]:
    """The HTTP endpoints of the Ingress replicas themselves (what HAProxy forwards to)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    groups = ray.get(controller.get_target_groups.remote(app_name="facefleet",
                                                         from_proxy_manager=True))
    return sorted({f"http://{t.ip}:{t.port}" for g in groups if g.protocol == "HTTP"
                   for t in g.targets if "Ingress" in t.name})


def test_revocation_reaches_every_ingress_replica_within_2s(tenants):
    admin = tenants["admin"]
    urls = _replica_urls()
    assert len(urls) == 2, urls
    key = admin.create_key("short-lived", ["read"], collections=[OWN])
    auth = {"Authorization": f"Bearer {key.key}"}
    clients = [httpx.Client(base_url=u, timeout=30, headers=auth) for u in urls]
    try:
        for c in clients:  # each replica knows the key (and now polls the table)
            assert c.get(f"/v1/collections/{OWN}").status_code == 200
        admin.revoke_key(key.id)
        t0 = time.monotonic()
        refused_after: dict[str, float] = {}
        while len(refused_after) < len(clients) and time.monotonic() - t0 < 10:
            for u, c in zip(urls, clients, strict=True):
                if u not in refused_after and c.get(f"/v1/collections/{OWN}").status_code == 401:
                    refused_after[u] = time.monotonic() - t0
            time.sleep(0.02)
        assert set(refused_after) == set(urls), refused_after
        assert max(refused_after.values()) <= 2.0, refused_after
        with pytest.raises(Unauthorized):
            Client(tenants["service"].base_url, api_key=key.key).list_collections()
    finally:
        for c in clients:
            c.close()
    assert key.id not in {k.id for k in admin.list_keys()}


def test_audit_of_a_scripted_sequence(tenants, faces):
    """create key, enrol, identify, forget, revoke, drop: in order, with the client's
    request ids and key ids, read back in pages that do not overlap."""
    admin, svc = tenants["admin"], tenants["service"]
    start = max([e.seq for e in admin.iter_audit(page_size=1000)], default=0)
    coll = "tn-sequence"
    photo = sorted((faces / LFW / "Jennifer_Lopez").glob("*.jpg"))[0]
    with admin.request_id("seq-0-create-collection"):
        admin.create_collection(coll)
    with admin.request_id("seq-1-create-key"):
        key = admin.create_key("enroller", ["write"], collections=[coll])
    with Client(svc.base_url, api_key=key.key) as writer:
        with writer.request_id("seq-2-enrol"):
            face = writer.register(coll, photo, person_id="jlo")
        with writer.request_id("seq-3-identify"):
            found = writer.identify(coll, photo)
        with pytest.raises(Forbidden):  # a write key cannot drop the collection
            writer.drop_collection(coll)
        with writer.request_id("seq-4-forget"):
            writer.delete_face(coll, face.id)
    with admin.request_id("seq-5-revoke"):
        admin.revoke_key(key.id)
    with admin.request_id("seq-6-drop"):
        admin.drop_collection(coll)
    assert found.faces[0].matches[0].face_id == face.id

    pages, cursor = [], str(start)
    while True:
        page = admin.audit(cursor=cursor, limit=2)
        pages.append([e.seq for e in page.entries])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    flat = [s for p in pages for s in p]
    assert len(flat) == len(set(flat)) and flat == sorted(flat)  # no overlap, in order
    assert all(len(p) <= 2 for p in pages) and len(pages) >= 4
    entries = list(admin.iter_audit(cursor=str(start)))
    assert [e.seq for e in entries] == flat
    assert [(e.action, e.request_id, e.key_id) for e in entries] == [
        ("collection.create", "seq-0-create-collection", "settings"),
        ("key.create", "seq-1-create-key", "settings"),
        ("face.register", "seq-2-enrol", key.id),
        ("identify", "seq-3-identify", key.id),
        ("face.forget", "seq-4-forget", key.id),
        ("key.revoke", "seq-5-revoke", "settings"),
        ("collection.drop", "seq-6-drop", "settings")]
    register, identify = entries[2], entries[3]
    # the collection is dropped: its persons are named by a keyed hash (index.erasure)
    assert register.face_ids == [face.id] and register.person_id.startswith("hmac:")
    assert "jlo" not in str([e.raw for e in entries])
    # one top match per face found in the probe (this photo has a second face behind)
    assert identify.matches == [f.matches[0].face_id for f in found.faces]
    assert identify.matches[0] == face.id and identify.collection == coll
    assert entries[1].target_key_id == entries[5].target_key_id == key.id
    assert all(e.status == "ok" for e in entries)
    # filters, and what an entry never holds
    only = admin.audit(collection=coll, action="face.forget", cursor=str(start))
    assert [e.request_id for e in only.entries] == ["seq-4-forget"]
    raw = str([e.raw for e in entries])
    assert key.key not in raw and "embedding" not in raw and b64(photo)[:40] not in raw
    for bad in ({"limit": 0}, {"limit": 1001}):
        r = admin._http.get("/v1/audit", params=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def _cli(service, key: str | None, *args: str, code: int = 0):
    from click.testing import CliRunner

    from facefleet.cli import main

    env = {"FACEFLEET_URL": service.base_url, "FACEFLEET_API_KEY": key or "",
           "COLUMNS": "200"}  # tables unwrapped
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
    return result


def test_cli_keys_and_audit(tenants, faces):
    """facefleet keys create | list | revoke and facefleet audit, as an operator runs them."""
    import json

    svc = tenants["service"]
    made = json.loads(_cli(svc, ADMIN, "keys", "create", "cli viewer", "-s", "read",
                           "-c", OWN, "--json").stdout)
    assert made["key"].startswith("ffk_") and made["collections"] == [OWN]
    assert made["scopes"] == ["read"]
    listed = json.loads(_cli(svc, ADMIN, "keys", "list", "--json").stdout)["keys"]
    mine = [k for k in listed if k["id"] == made["id"]]
    assert mine and "key" not in mine[0] and "key_sha256" not in mine[0]
    table = _cli(svc, ADMIN, "keys", "list").stdout
    assert "cli viewer" in table and made["id"] in table and made["key"] not in table

    # the new key reads its collection, is refused a change, and sees no other collection
    photo = str(tenants["photos"][0])
    found = json.loads(_cli(svc, made["key"], "identify", photo, "-c", OWN, "--json").stdout)
    assert found["results"][0]["faces"], found
    seen = json.loads(_cli(svc, made["key"], "collections", "--json").stdout)["collections"]
    assert {c["collection"] for c in seen} == {OWN}
    refused = _cli(svc, made["key"], "forget", "-c", OWN, "--person", "p-own", code=2)
    assert "forbidden" in refused.stderr
    hidden = _cli(svc, made["key"], "identify", photo, "-c", OTHER, code=2)
    assert "collection_not_found" in hidden.stderr
    assert "forbidden" in _cli(svc, made["key"], "keys", "list", code=2).stderr

    assert made["id"] in _cli(svc, ADMIN, "keys", "revoke", made["id"]).stdout
    assert "unauthorized" in _cli(svc, made["key"], "collections", code=2).stderr
    assert "unauthorized" in _cli(svc, None, "audit", code=2).stderr

    trail = json.loads(_cli(svc, ADMIN, "audit", "--action", "key.revoke", "--all",
                            "--json").stdout)
    assert trail["next_cursor"] is None
    assert trail["entries"][-1]["target_key_id"] == made["id"]
    assert trail["entries"][-1]["key_id"] == "settings"
    idents = json.loads(_cli(svc, ADMIN, "audit", "--action", "identify", "-c", OWN,
                             "--all", "--json").stdout)["entries"]
    assert made["id"] in {e["key_id"] for e in idents}
    page = _cli(svc, ADMIN, "audit", "--action", "key.create", "--limit", "1")
    assert "key.create" in page.stdout and "settings" in page.stdout
    assert "more: facefleet audit --cursor" in page.stderr
