"""The Python client and the ``facefleet`` command line against the real service.

The CLI runs in-process through click's test runner, pointed at the session's
Serve app. The enrolment tree is built from ``deepface/identities.csv``: one
folder per person, the last photo of each person held back for identification,
plus a photo with no face in it (to be reported) and one loose file at the
root (to be ignored). Retry behaviour is checked through a small proxy on
127.0.0.1 that answers the first requests with 429 / 503 and forwards the rest
to the real service.
"""

from __future__ import annotations

import asyncio
import csv
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facefleet import AsyncClient, Client, EnrollItem, RetryPolicy
from facefleet.cli import main
from facefleet.draw import DETECTED, KNOWN, LANDMARK, UNKNOWN
from facefleet.enroll import MANIFEST_NAME
from facefleet.errors import (CollectionNotFound, ImageDecodeError, NoFaceDetected,
                              TransportError, Unavailable)

pytestmark = pytest.mark.app

COLLECTION = "cli-deepface"


def invoke(service, *args: str, ok: tuple[int, ...] = (0,)):
    result = CliRunner().invoke(main, list(args), env={"FACEFLEET_URL": service.base_url},
                                catch_exceptions=False)
    assert result.exit_code in ok, (result.exit_code, result.output, result.stderr)
    return result


def run_cli(service, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
    result = invoke(service, *args, ok=ok)
    return result.exit_code, result.stdout


def run_json(service, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, dict]:
    code, out = run_cli(service, *args, "--json", ok=ok)
    return code, json.loads(out)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, faces) -> dict:
    """people/<personNN>/imgK.jpg (symlinks), and the held-back photo of each person."""
    root = tmp_path_factory.mktemp("cli") / "people"
    by_person: dict[str, list[str]] = {}
    with open(faces / "deepface" / "identities.csv") as f:
        for row in csv.DictReader(f):
            by_person.setdefault(row["identity"], []).append(row["image"])
    held: dict[str, Path] = {}
    enrolled = 0
    for person, images in by_person.items():
        (root / person).mkdir(parents=True)
        held[person] = faces / "deepface" / images[-1]
        for name in images[:-1]:
            (root / person / name).symlink_to(faces / "deepface" / name)
            enrolled += 1
    (root / "person01" / "no-face-dogs.jpg").symlink_to(faces / "dlib-boxes" / "dogs.jpg")
    (root / "loose.jpg").symlink_to(faces / "deepface" / "img1.jpg")
    return {"root": root, "held": held, "enrolled": enrolled, "persons": len(by_person)}


@pytest.fixture(scope="module")
def enrolled(service, tree) -> dict:
    _, first = run_json(service, "enroll", str(tree["root"]), "-c", COLLECTION,
                        "--batch-size", "6", "--concurrency", "2", "--no-progress")
    return first


def test_enroll_tree_reports_no_face_and_rerun_is_noop(service, tree, enrolled):
    first = enrolled
    assert first["found"] == tree["enrolled"] + 1 and first["persons"] == tree["persons"]
    assert first["enrolled"] == tree["enrolled"], first["problems"]
    assert [(p["path"], p["code"]) for p in first["problems"]] == [
        ("person01/no-face-dogs.jpg", "no_face_detected")]
    assert first["not_in_person_folder"] == ["loose.jpg"]
    report = json.loads(Path(first["report"]).read_text())
    assert report["problems"][0]["path"] == "person01/no-face-dogs.jpg"
    assert (tree["root"] / MANIFEST_NAME).is_file()

    with Client(service.base_url) as client:
        stats = client.collection(COLLECTION)
        assert (stats.faces, stats.persons) == (tree["enrolled"], tree["persons"])
        person = client.person(COLLECTION, "person02")
        assert person.name == "person02" and len(person.faces) == 5

    # same bytes, same collection: nothing is sent, the known failure is not resent
    _, again = run_json(service, "enroll", str(tree["root"]), "-c", COLLECTION, "--no-progress")
    assert (again["enrolled"], again["already_enrolled"], again["failed"]) == \
        (0, tree["enrolled"], 0)
    assert again["known_failures"] == 1
    with Client(service.base_url) as client:
        assert client.collection(COLLECTION).faces == tree["enrolled"]

    # strict mode turns the remembered failure into a non-zero exit, table output
    code, text = run_cli(service, "enroll", str(tree["root"]), "-c", COLLECTION,
                         "--no-progress", "--fail-on-error", ok=(1,))
    assert "no-face-dogs.jpg" in text and "no_face_detected" in text


def test_identify_held_back_photos(service, tree, enrolled):
    persons = sorted(tree["held"])
    images = [str(tree["held"][p]) for p in persons]
    _, doc = run_json(service, "identify", *images, "-c", COLLECTION, "--top-k", "3")
    assert len(doc["results"]) == len(persons)
    right = 0
    for person, res in zip(persons, doc["results"], strict=True):
        assert res["faces"], res
        best = res["faces"][0]["matches"][0]
        assert len(res["faces"][0]["matches"]) == 3
        right += best["person_id"] == person and best["match"]
    # dlib on these uncontrolled photos: all but at most one held-back face found
    assert right >= len(persons) - 1, doc

    code, text = run_cli(service, "identify", images[1], "-c", COLLECTION)
    assert persons[1] in text and "distance" in text


def test_verify_exit_codes(service, faces):
    d = faces / "deepface"
    _, same = run_json(service, "verify", str(d / "img1.jpg"), str(d / "img2.jpg"))
    assert same["verified"] is True and same["distance"] < same["threshold"]
    code, other = run_json(service, "verify", str(d / "img1.jpg"), str(d / "img3.jpg"),
                           ok=(1,))
    assert other["verified"] is False and other["distance"] > other["threshold"]


def test_forgotten_person_is_enrolled_again(service, tree, enrolled):
    _, out = run_json(service, "forget", "-c", COLLECTION, "--person", "person07")
    assert len(out["removed"][0]["faces"]) == 1
    with Client(service.base_url) as client:
        with pytest.raises(Exception) as err:
            client.person(COLLECTION, "person07")
        assert getattr(err.value, "status", None) == 404
    # the manifest still lists person07's photo; the server no longer has it
    res = invoke(service, "enroll", str(tree["root"]), "-c", COLLECTION, "--json")
    again = json.loads(res.stdout)
    assert "1/1" in res.stderr and "faces/s" in res.stderr  # the progress bar, on stderr
    assert (again["stale"], again["enrolled"]) == (1, 1)
    with Client(service.base_url) as client:
        assert client.collection(COLLECTION).faces == tree["enrolled"]

    code, text = run_cli(service, "collections")
    assert COLLECTION in text


def _pixel_near(img: np.ndarray, x: int, y: int, color: tuple[int, int, int]) -> bool:
    patch = img[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3).astype(int)
    return bool((np.abs(patch - np.array(color)).sum(axis=1) < 90).any())


def test_identify_draw_on_group_photo(service, faces, enrolled, tmp_path):
    # person01 of the deepface set is Angelina Jolie, who is in this group selfie
    photo = faces / "deepface" / "selfie-many-people.jpg"
    drawn = tmp_path / "selfie-identified.jpg"
    _, doc = run_json(service, "identify", str(photo), "-c", COLLECTION, "--draw", str(drawn))
    found = doc["results"][0]["faces"]
    assert len(found) >= 3 and doc["results"][0]["drawn"] == str(drawn)
    angelina = [f for f in found if f["matches"][0]["person_id"] == "person01"
                and f["matches"][0]["match"]]
    assert len(angelina) == 1, found
    box = angelina[0]["box"]  # her face is left of centre, in the lower half
    assert box["x"] + box["w"] / 2 < 300 < box["y"] + box["h"] / 2, box

    original = np.asarray(Image.open(photo).convert("RGB"))
    out = np.asarray(Image.open(drawn).convert("RGB"))
    assert out.shape == original.shape
    for f in found:
        b, colour = f["box"], KNOWN if f["matches"][0]["match"] else UNKNOWN
        mid = b["y"] + b["h"] // 2
        # both vertical edges of every box, in the colour of its verdict
        assert _pixel_near(out, b["x"], mid, colour), (b, colour)
        assert _pixel_near(out, min(b["x"] + b["w"], out.shape[1] - 1), mid, colour), b
        assert not _pixel_near(original, b["x"], mid, colour)
    # away from the faces the photo is unchanged (up to JPEG noise)
    assert np.abs(out[-5:].astype(int) - original[-5:]).mean() < 8

    det = tmp_path / "detected.png"
    _, d = run_json(service, "detect", str(photo), "--draw", str(det))
    assert len(d["faces"]) == len(found)
    out = np.asarray(Image.open(det).convert("RGB"))
    for f in d["faces"]:
        b = f["box"]
        assert _pixel_near(out, b["x"], b["y"] + b["h"] // 2, DETECTED), b
        eye = [round(v) for v in f["landmarks"]["left_eye"]]
        assert _pixel_near(out, eye[0], eye[1], LANDMARK), eye


# --------------------------------------------------------------------------- client


def test_client_typed_results_and_errors(service, faces):
    d = faces / "deepface"
    with Client(service.base_url) as client:
        assert client.health() == {"status": "ok"}
        assert client.ready()["ready"] is True
        det = client.detect(d / "couple.jpg", return_crops=True)
        assert len(det.faces) >= 2 and det.faces[0].crop
        assert set(det.faces[0].landmarks) >= {"left_eye", "right_eye", "nose"}
        emb = client.embed((d / "img2.jpg").read_bytes())
        assert abs(np.linalg.norm(emb.faces[0].embedding) - 1) < 1e-3
        face = client.register("cli-client", d / "img2.jpg", person_id="p1", name="One",
                               idempotency_key="cli-test-key-1")
        replay = client.register("cli-client", d / "img2.jpg", person_id="p1", name="One",
                                 idempotency_key="cli-test-key-1")
        assert replay.replayed and replay.id == face.id
        hit = client.identify("cli-client", d / "img1.jpg").faces[0].best
        assert hit is not None and hit.person_id == "p1" and hit.label == "One"
        client.delete_face("cli-client", face.id)
        assert client.collection("cli-client").faces == 0

        with pytest.raises(NoFaceDetected) as err:
            client.detect(faces / "dlib-boxes" / "dogs.jpg")
        assert err.value.status == 422 and err.value.request_id
        with pytest.raises(CollectionNotFound):
            client.identify("cli-no-such-collection", d / "img1.jpg")
        with pytest.raises(ImageDecodeError):
            client.detect(b"this is not an image")


def test_async_client_concurrent_batch(service, faces):
    d = faces / "deepface"

    async def go():
        async with AsyncClient(service.base_url) as client:
            res, ver = await asyncio.gather(
                client.register_batch("cli-async", [
                    EnrollItem(d / "img1.jpg", person_id="a"),
                    EnrollItem(faces / "dlib-boxes" / "dogs.jpg", person_id="b")]),
                client.verify(d / "img1.jpg", d / "img2.jpg"))
            return res, ver, await client.list_collections()

    res, ver, cols = asyncio.run(go())
    assert (res.created, res.failed) == (1, 1)
    assert res.results[0].ok and res.results[1].error_code == "no_face_detected"
    assert ver.verified
    assert "cli-async" in {c.name for c in cols}


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers from ``server.script`` first (status, headers, body), then forwards."""

    def _handle(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with srv.lock:
            srv.seen.append(self.path)
            scripted = srv.script.pop(0) if srv.script else None
        if scripted is None:
            r = httpx.request(self.command, srv.upstream + self.path, content=body,
                              headers={"content-type": self.headers.get("content-type", "")},
                              timeout=60)
            scripted = (r.status_code, {}, r.content)
        status, headers, payload = scripted
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def flaky(service) -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.upstream, srv.script, srv.seen, srv.lock = service.base_url, [], [], threading.Lock()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_retries_on_429_and_503_then_succeeds(flaky, faces):
    url = f"http://127.0.0.1:{flaky.server_address[1]}"
    flaky.script = [(429, {"Retry-After": "0"}, b"slow down"),
                    (503, {}, b"Service Unavailable")]  # Serve's proxy shedding load
    with Client(url, retry=RetryPolicy(max_retries=3, backoff_s=0.01)) as client:
        res = client.verify(faces / "deepface/img1.jpg", faces / "deepface/img2.jpg")
    assert res.verified and flaky.seen == ["/v1/verify"] * 3


def test_committed_write_is_not_repeated(flaky, faces):
    """facefleet's own 503 on a batch may follow a committed write: no blind retry."""
    url = f"http://127.0.0.1:{flaky.server_address[1]}"
    err = {"error": {"code": "unavailable", "message": "an index shard is unavailable",
                     "request_id": "r1"}}
    flaky.script = [(503, {"content-type": "application/json"}, json.dumps(err).encode())]
    with Client(url, retry=RetryPolicy(max_retries=3, backoff_s=0.01)) as client:
        with pytest.raises(Unavailable) as exc:
            client.register_batch("cli-flaky", [EnrollItem(faces / "deepface/img1.jpg")])
    assert exc.value.request_id == "r1" and len(flaky.seen) == 1


def test_connection_refused_is_a_transport_error(service):
    with Client("http://127.0.0.1:9", retry=RetryPolicy(max_retries=2, backoff_s=0.01)) as c:
        with pytest.raises(TransportError):
            c.health()
    code, _ = run_cli(service, "collections", "--url", "http://127.0.0.1:9", ok=(2,))
