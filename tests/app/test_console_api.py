"""What the console added to the API, and how it is served, on the real service.

``GET /v1/whoami`` is a public route (the
console uses nothing else); the console's files are served by the Ingress, open
without a key, with nothing fetched from elsewhere, and small.
"""

from __future__ import annotations

import gzip
import re

import pytest

from deployments.http.console import static_files

pytestmark = pytest.mark.app

LFW = "lfw-dev/images"
COLL = "console-merge"
#: the console's own files, gzip-compressed, stay under this (issue 23)
ASSET_BUDGET = 500 * 1024


def test_whoami_with_keys_off(api):
    r = api.get("/v1/whoami")
    assert r.status_code == 200
    assert r.json() == {"auth_enabled": False, "key_id": None,
                        "scopes": ["read", "write", "admin", "export"], "collections": None}


def test_console_is_served_by_the_ingress(api):
    page = api.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert api.get("/console", follow_redirects=False).status_code == 308
    for name in re.findall(r'(?:src|href)="/console/([^"]+)"', page.text):
        assert api.get(f"/console/{name}").status_code == 200, name
    missing = api.get("/console/../../etc/passwd")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_console_loads_nothing_from_elsewhere_and_is_small():
    files = static_files()
    assert {"index.html", "app.js", "api.js", "style.css", "pages/enrol.js"} <= set(files)
    for name, body in files.items():
        # the SVG namespace is a name, not an address anything is fetched from
        text = body.decode().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), name
        assert "@import" not in text and "@font-face" not in text, name
    compressed = sum(len(gzip.compress(b, 9)) for b in files.values())
    assert compressed < ASSET_BUDGET, compressed


def _enrol(api, photo, person_id, name=None):
    with photo.open("rb") as f:
        r = api.post(f"/v1/collections/{COLL}/faces", files={"img": f},
                     data={"person_id": person_id, **({"name": name} if name else {})})
    assert r.status_code == 201, r.text
    return r.json()["face_id"]


def test_merge_moves_every_face_into_the_kept_person(api, faces):
    """The person page's merge, as the console sends it: ``:merge`` into the kept person."""
    photos = sorted((faces / LFW / "Ricardo_Lagos").glob("*.jpg"))
    kept = [_enrol(api, photos[0], "lagos", "Ricardo Lagos")]
    moved = [_enrol(api, p, "lagos-2", "R. Lagos") for p in photos[1:3]]
    r = api.post(f"/v1/collections/{COLL}/persons/lagos:merge", json={"from": ["lagos-2"]})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Ricardo Lagos"  # the kept person's name stays
    ids = {f["face_id"] for f in api.get(f"/v1/collections/{COLL}/persons/lagos").json()["faces"]}
    assert ids == set(kept) | set(moved)  # the faces keep their ids
    assert api.get(f"/v1/collections/{COLL}/persons/lagos-2").status_code == 404
    # the search follows: a new photo finds the kept person, never the merged one
    with photos[3].open("rb") as f:
        hits = api.post(f"/v1/collections/{COLL}/identify", files={"img": f},
                        data={"top_k": "5"}).json()["faces"][0]["matches"]
    assert hits and {h["person_id"] for h in hits} == {"lagos"} and hits[0]["match"]
