"""The web console (``/console``) in a real browser: Debian's Chromium, headless,
driven by Playwright (pytest-playwright, the system browser by ``executable_path``).

It runs against the session's real service. The first test sees it with keys off;
the rest reconfigure it once with an admin key from the settings (as the tenancy
tests do) and turn keys off again afterwards. Photos are real (LFW, from
``../shared/faces``); every result the page shows is checked through the API too.
Each page is saved as ``docs/img/console-*.png`` for the README.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from pathlib import Path

import cv2
import pytest

from tests.app.conftest import REPO

pytestmark = pytest.mark.app

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "docs" / "img"
ADMIN = "console-bootstrap-admin-key"
LFW = "lfw-dev/images"
PEOPLE = ("Ricardo_Lagos", "Paul_Wolfowitz", "Zhu_Rongji")
COLL = "console-people"
# a page waits this long for the service (real models on a loaded machine)
SLOW_MS = 120_000


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


@pytest.fixture(scope="session")
def fake_camera(faces, tmp_path_factory) -> Path:
    """A real face as Chromium's fake webcam: a still YUV4MPEG2 clip of one LFW photo."""
    img = cv2.imread(str(faces / LFW / "Zhu_Rongji" / "Zhu_Rongji_0009.jpg"))
    img = cv2.resize(img, (480, 480))  # even sides, for 4:2:0
    h, w = img.shape[:2]
    yuv = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420).tobytes()
    path = tmp_path_factory.mktemp("camera") / "face.y4m"
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(10):
            f.write(b"FRAME\n" + yuv)
    return path


@pytest.fixture(scope="session")
def browser_type_launch_args(fake_camera) -> dict:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing (make test installs it: apt-get install chromium)")
    # no network beyond loopback here: Chromium's background fetches stay off
    return {"executable_path": str(CHROMIUM), "headless": True, "args": [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        # the camera is allowed by the context's permission, not by Chromium's fake UI
        # (which would also answer file choosers itself, before the page sees them)
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={fake_camera}"]}


@pytest.fixture(scope="session")
def browser_context_args() -> dict:
    return {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def console(page, service):
    page.set_default_timeout(SLOW_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return page


def _open(page, base_url: str, hash_: str = "") -> None:
    page.goto(f"{base_url}/console/{hash_}")


def _sign_in(page, base_url: str, key: str, hash_: str = "") -> None:
    _open(page, base_url, hash_)
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard alone signs in
    page.get_by_test_id("key-id").wait_for()


def test_keys_off_is_said_at_the_top(console, service):
    _open(console, service.base_url)
    banner = console.locator("#banner")
    banner.get_by_text("API keys are off").wait_for()
    assert service.client.get("/v1/whoami").json()["auth_enabled"] is False
    # every page is offered, nothing asks for a key
    assert console.locator("#nav a").all_inner_texts() == [
        "Collections", "People", "Unknown faces", "Enrol", "Try it", "Audit", "Status"]


def test_unknown_faces_are_reviewed_and_named(console, service, faces):
    """Faces enrolled without a person id show as one cluster of thumbnails; naming it
    merges its persons into a new, named person (checked through the API)."""
    coll = "console-unknown"
    photos = sorted((faces / LFW / "Hans_Blix").glob("*.jpg"))[:3]
    for photo in photos:
        with photo.open("rb") as f:
            r = service.client.post(f"/v1/collections/{coll}/faces", files={"img": f})
        assert r.status_code == 201, r.text
    _open(console, service.base_url, f"#/unknown/{coll}")
    cluster = console.locator("li.cluster")
    cluster.get_by_text("3 faces").wait_for()
    cluster.locator("img.thumb").first.wait_for()  # the stored thumbnails, not placeholders
    _shot(console, "unknown")
    cluster.get_by_label("Name as a new person").fill("Hans Blix")
    cluster.get_by_role("button", name="Name", exact=True).click()
    cluster.get_by_text("Named Hans Blix").wait_for()
    persons = service.client.get(f"/v1/collections/{coll}/persons").json()["persons"]
    assert [(p["name"], p["faces"]) for p in persons] == [("Hans Blix", 3)]
    service.client.delete(f"/v1/collections/{coll}")


# --------------------------------------------------------------------------- keys on


def _ingress(config: dict, keys: list[str]) -> dict:
    c = copy.deepcopy(config)
    for d in c["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            d["user_config"] = {"api_key_sha256": keys, "auth_enabled": bool(keys)}
    return c


@pytest.fixture(scope="module")
def secured(service):
    """The service with keys on (an admin key from the settings); a read key made
    through the API. Keys are off again afterwards."""
    original = service.config
    service.redeploy(_ingress(original, [hashlib.sha256(ADMIN.encode()).hexdigest()]))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        r = service.client.post("/v1/keys", headers=admin,
                                json={"name": "console read", "scopes": ["read"]})
        assert r.status_code == 201, r.text
        yield {"admin": admin, "read_key": r.json()["key"], "read_id": r.json()["id"]}
    finally:
        service.redeploy(_ingress(original, []))


def _api(service, secured, method: str, path: str, **kw):
    return service.client.request(method, path, headers=secured["admin"], **kw)


def test_sign_in_read_key_sees_no_write_controls(console, service, secured):
    _open(console, service.base_url)
    console.get_by_role("heading", name="Sign in").wait_for()
    # a wrong key is refused in words
    console.get_by_label("API key").fill("not-a-key")
    console.get_by_role("button", name="Sign in").click()
    console.get_by_text("This key was refused").wait_for()
    _shot(console, "signin")

    console.get_by_label("API key").fill(secured["read_key"])
    console.get_by_label("API key").press("Enter")
    console.get_by_test_id("key-id").wait_for()
    assert f"key {secured['read_id']} · read" in console.get_by_test_id("key-id").inner_text()
    assert console.locator("#nav a").all_inner_texts() == [
        "Collections", "People", "Unknown faces", "Try it", "Status"]
    console.get_by_role("heading", name="Collections").wait_for()
    assert console.get_by_role("button", name="Create collection").count() == 0
    assert console.get_by_role("button", name="Delete").count() == 0
    # the API agrees: this key may read, not write
    who = service.client.get("/v1/whoami",
                             headers={"Authorization": f"Bearer {secured['read_key']}"}).json()
    assert who["scopes"] == ["read"] and who["auth_enabled"] is True


def test_admin_key_creates_a_collection(console, service, secured):
    _sign_in(console, service.base_url, ADMIN)
    assert "Keys" in console.locator("#nav a").all_inner_texts()
    console.get_by_label("Name").fill(COLL)
    console.get_by_role("button", name="Create collection").click()
    row = console.locator(f"tr[data-collection='{COLL}']")
    row.wait_for()
    stats = _api(service, secured, "GET", f"/v1/collections/{COLL}")
    assert stats.status_code == 200 and stats.json()["faces"] == 0
    # creating it again: the API's error, in words, with its code
    console.get_by_label("Name").fill(COLL)
    console.get_by_role("button", name="Create collection").click()
    again = _api(service, secured, "POST", "/v1/collections", json={"name": COLL})
    code = again.json()["error"]["code"]
    console.locator(".error", has_text=f"[{code}]").wait_for()
    _shot(console, "collections")


def _drop(page, files: list[tuple[str, Path]]) -> None:
    """Drop files on the drop zone as a browser does for a dragged folder: each
    file carries its path inside the folder (``webkitRelativePath``)."""
    payload = [{"rel": rel, "name": rel.rsplit("/", 1)[-1], "b64": base64.b64encode(p.read_bytes()).decode()}
               for rel, p in files]
    page.evaluate("""(files) => {
      const dt = new DataTransfer();
      for (const f of files) {
        const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
        const file = new File([bytes], f.name, { type: f.name.endsWith(".jpg") ? "image/jpeg" : "text/plain" });
        Object.defineProperty(file, "webkitRelativePath", { value: f.rel });
        dt.items.add(file);
      }
      const zone = document.querySelector(".dropzone");
      for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }
    }""", payload)


def _photos(faces: Path, who: str) -> list[Path]:
    return sorted((faces / LFW / who).glob("*.jpg"))


def test_enrol_a_folder_of_three_people_by_drag_and_drop(console, service, secured, faces):
    _sign_in(console, service.base_url, ADMIN, f"#/enrol?collection={COLL}")
    console.get_by_text("Drop photos of one person").wait_for()
    files = [(f"people/{who}/{p.name}", p) for who in PEOPLE for p in _photos(faces, who)[:3]]
    # each failure gets its own error: not an image (seen here), not decodable (the
    # service's answer), in no person's folder (as the CLI reports it)
    bad = {"people/Zhu_Rongji/notes.txt": "not_an_image",
           "people/Paul_Wolfowitz/broken.jpg": "image_decode_error",
           "people/group.jpg": "not_in_person_folder"}
    _drop(console, files + [("people/Zhu_Rongji/notes.txt", REPO / "README.md"),
                            ("people/Paul_Wolfowitz/broken.jpg", REPO / "README.md"),
                            ("people/group.jpg", faces / "group" / "multiface.jpg")])
    summary = console.get_by_test_id("enrol-summary")
    summary.get_by_text("9 of 12 photo(s) enrolled for 3 person(s); 3 failed").wait_for(
        timeout=SLOW_MS * 2)
    for rel, code in bad.items():
        assert f"[{code}]" in console.locator(f"tr[data-file='{rel}']").inner_text()
    _shot(console, "enrol")

    page = _api(service, secured, "GET", f"/v1/collections/{COLL}/persons").json()
    assert {p["person_id"]: p["faces"] for p in page["persons"]} == {who: 3 for who in PEOPLE}
    # the same folder again: the Idempotency-Keys give the faces back, none twice
    _drop(console, files[:3])
    summary.get_by_text("already enrolled earlier").wait_for()
    stats = _api(service, secured, "GET", f"/v1/collections/{COLL}").json()
    assert (stats["faces"], stats["persons"]) == (9, 3)

    console.goto(f"{service.base_url}/console/#/people/{COLL}")
    for who in PEOPLE:
        card = console.locator(f"li[data-person='{who}']")
        assert "3 faces" in card.inner_text() and who in card.inner_text()
    _shot(console, "people")
    # the same grid on a phone: nothing wider than the screen
    console.set_viewport_size({"width": 390, "height": 844})
    console.locator(f"li[data-person='{PEOPLE[0]}']").wait_for()
    assert console.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(console, "people-phone")
    # the search is the API's (q), over the whole collection, and stays in the address
    console.get_by_label("Search", exact=True).fill("wolfoWITZ")
    console.get_by_label("Search", exact=True).press("Enter")
    console.locator(f"li[data-person='{PEOPLE[0]}']").wait_for(state="detached")
    assert console.locator("li[data-person]").evaluate_all(
        "cards => cards.map((c) => c.dataset.person)") == ["Paul_Wolfowitz"]
    assert console.url.endswith(f"#/people/{COLL}?q=wolfoWITZ")


def test_identify_a_new_photo_draws_the_name(console, service, secured, faces):
    probe = _photos(faces, "Zhu_Rongji")[4]  # not one of the enrolled three
    _sign_in(console, service.base_url, ADMIN, "#/try")
    console.get_by_label("What to run").select_option("identify")
    console.get_by_label("Collection").select_option(COLL)
    console.get_by_label("Photo file").first.set_input_files(str(probe))
    console.get_by_role("button", name="Run").click()
    label = console.locator("svg.overlay text.match").first
    label.wait_for()
    assert label.text_content() == "Zhu_Rongji"
    assert "Authorization: Bearer $FACEFLEET_API_KEY" in console.get_by_test_id("curl").inner_text()
    _shot(console, "try")
    with probe.open("rb") as f:
        answer = _api(service, secured, "POST", f"/v1/collections/{COLL}/identify",
                      files={"img": f}).json()
    top = answer["faces"][0]["matches"][0]
    assert top["match"] and top["person_id"] == "Zhu_Rongji" and top["name"] == "Zhu_Rongji"


def test_rename_relabel_delete_a_face_merge_and_forget(console, service, secured, faces):
    # a second enrolment of Zhu Rongji under another id, to merge back
    with _photos(faces, "Zhu_Rongji")[3].open("rb") as f:
        r = _api(service, secured, "POST", f"/v1/collections/{COLL}/faces", files={"img": f},
                 data={"person_id": "zhu-again"})
    assert r.status_code == 201, r.text
    person = f"/v1/collections/{COLL}/persons"

    _sign_in(console, service.base_url, ADMIN, f"#/person/{COLL}/Ricardo_Lagos")
    console.get_by_label("Name", exact=True).fill("Ricardo Lagos Escobar")
    console.get_by_role("button", name="Save name").click()
    console.get_by_role("heading", name="Ricardo Lagos Escobar").wait_for()
    assert _api(service, secured, "GET", f"{person}/Ricardo_Lagos").json()["name"] == \
        "Ricardo Lagos Escobar"
    console.get_by_label("Labels").fill("country=Chile\nrole=president")
    console.get_by_role("button", name="Save labels").click()
    console.locator("dl.labels").get_by_text("Chile").wait_for()
    assert _api(service, secured, "GET", f"{person}/Ricardo_Lagos").json()["labels"] == \
        {"country": "Chile", "role": "president"}
    face = _api(service, secured, "GET", f"{person}/Ricardo_Lagos").json()["faces"][0]["face_id"]
    console.get_by_role("button", name=f"Delete face {face}").click()
    console.get_by_role("dialog").get_by_role("button", name="Delete face").click()
    console.locator(f"li[data-face='{face}']").wait_for(state="detached")
    faces_left = _api(service, secured, "GET", f"{person}/Ricardo_Lagos").json()["faces"]
    assert face not in {f["face_id"] for f in faces_left} and len(faces_left) == 2

    console.goto(f"{service.base_url}/console/#/person/{COLL}/zhu-again")
    console.get_by_role("heading", name="zhu-again").wait_for()
    console.get_by_label("Person id to keep").fill("Zhu_Rongji")
    console.get_by_role("button", name="Merge", exact=True).click()
    console.get_by_role("dialog").get_by_role("button", name="Merge").click()
    console.get_by_role("heading", name="Zhu_Rongji").wait_for()
    assert _api(service, secured, "GET", f"{person}/zhu-again").status_code == 404
    assert len(_api(service, secured, "GET", f"{person}/Zhu_Rongji").json()["faces"]) == 4
    _shot(console, "person")

    console.goto(f"{service.base_url}/console/#/person/{COLL}/Paul_Wolfowitz")
    console.get_by_role("heading", name="Paul_Wolfowitz").wait_for()
    console.get_by_role("button", name="Forget this person").click()
    dialog = console.get_by_role("dialog")
    assert "3 face(s)" in dialog.inner_text()  # says what will be lost
    dialog.get_by_role("button", name="Forget person").click()
    console.locator(f"li[data-person='{PEOPLE[0]}']").wait_for()
    assert _api(service, secured, "GET", f"{person}/Paul_Wolfowitz").status_code == 404


def test_create_and_revoke_a_key_then_find_both_in_the_audit(console, service, secured):
    _sign_in(console, service.base_url, ADMIN, "#/keys")
    console.get_by_label("Name").fill("front desk")
    console.get_by_role("button", name="Create key").click()
    secret = console.get_by_test_id("new-secret").inner_text().strip()
    assert secret.startswith("ffk_")
    key_id = secret.split("_")[1]
    listed = {k["id"] for k in _api(service, secured, "GET", "/v1/keys").json()["keys"]}
    assert key_id in listed
    who = service.client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert who.json()["key_id"] == key_id
    _shot(console, "keys")

    console.get_by_role("button", name=f"Revoke key {key_id}").click()
    console.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    console.locator(f"tr[data-key='{key_id}']").wait_for(state="detached")
    listed = {k["id"] for k in _api(service, secured, "GET", "/v1/keys").json()["keys"]}
    assert key_id not in listed

    console.goto(f"{service.base_url}/console/#/audit")
    for action in ("key.create", "key.revoke"):
        console.get_by_label("Action").select_option(action)
        console.get_by_role("button", name="Filter").click()
        console.locator(f"tr[data-action='{action}'][data-target='{key_id}']").wait_for()
        entries = _api(service, secured, "GET", "/v1/audit", params={"action": action}).json()
        assert key_id in {e.get("target_key_id") for e in entries["entries"]}
    _shot(console, "audit")


def test_status_shows_every_deployment_ready(console, service, secured):
    _sign_in(console, service.base_url, ADMIN, "#/status")
    console.get_by_test_id("ready").get_by_text("All deployments ready").wait_for()
    ready = service.client.get("/ready").json()
    assert ready["ready"]
    for name in ready["deployments"]:
        assert console.locator(f"tr[data-deployment='{name}'] .badge").inner_text() == "ready"
    console.get_by_text("Mean latency (ms) by route").wait_for()
    _shot(console, "status")


def test_webcam_capture_through_detect(console, service, secured, faces):
    console.context.grant_permissions(["camera"])
    _sign_in(console, service.base_url, ADMIN, "#/try?mode=detect")
    console.get_by_role("button", name="Use the webcam…").first.click()
    console.get_by_role("button", name="Capture").click()
    console.locator(".preview img").first.wait_for()
    console.get_by_role("button", name="Run").click()
    console.get_by_test_id("verdict").get_by_text("1 face found").wait_for()
    assert console.locator("svg.overlay rect").count() == 1
    _shot(console, "webcam")
    # the photo the fake camera shows has that one face through the API as well
    with (faces / LFW / "Zhu_Rongji" / "Zhu_Rongji_0009.jpg").open("rb") as f:
        assert len(_api(service, secured, "POST", "/v1/detect", files={"img": f}).json()["faces"]) == 1


def test_every_page_fits_a_phone_and_works_from_the_keyboard(console, service, secured):
    console.set_viewport_size({"width": 390, "height": 844})
    _sign_in(console, service.base_url, ADMIN)
    pages = {"collections": "Collections", f"people/{COLL}": "People", "enrol": "Enrol",
             "try": "Try it", "keys": "API keys", "audit": "Audit trail", "status": "Status"}
    for hash_, heading in pages.items():
        console.goto(f"{service.base_url}/console/#/{hash_}")
        console.get_by_role("heading", name=heading, exact=True).wait_for()
        console.locator("main:not([aria-busy])").wait_for()
        assert console.evaluate("document.documentElement.scrollWidth") <= 390, hash_
        # every form control has a label (or an accessible name of its own)
        unlabelled = console.evaluate("""() => [...document.querySelectorAll(
            "main input:not([type=hidden]):not(.offscreen), main select, main textarea")]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
            .map((el) => el.name || el.outerHTML.slice(0, 60))""")
        assert unlabelled == [], (hash_, unlabelled)
    # the keyboard alone: Tab reaches the navigation, Enter on the drop zone opens the
    # photo chooser (its input is clicked; Chromium's own chooser is not observed here)
    console.goto(f"{service.base_url}/console/#/enrol")
    console.get_by_role("heading", name="Enrol").wait_for()
    console.locator("a.skip").focus()  # the first stop of the page's tab order
    console.keyboard.press("Tab")
    assert console.evaluate("document.activeElement.closest('#nav') !== null")
    console.evaluate("""() => document.querySelector(
        ".dropzone input[type=file][multiple]:not([webkitdirectory])")
        .addEventListener("click", () => { window.choosing = true; })""")
    console.get_by_role("group", name="Drop photos or a folder here").focus()
    console.keyboard.press("Enter")
    assert console.evaluate("window.choosing === true")
