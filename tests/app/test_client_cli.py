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
    """Answers from ``server.script`` first (status, headers, body), then forwards. A
    scripted answer whose status is ``("forward", status)`` forwards the request
    (the service commits it) and answers with ``status`` instead: a lost answer."""

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        out = b""
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            out += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return out

    def _handle(self) -> None:
        srv = self.server
        body = self._body()
        with srv.lock:
            srv.seen.append(self.path)
            srv.keys.append(self.headers.get("idempotency-key"))
            scripted = srv.script.pop(0) if srv.script else None
        forward = {"content-type": self.headers.get("content-type", "")}
        if self.headers.get("idempotency-key"):
            forward["idempotency-key"] = self.headers["idempotency-key"]
        if scripted is None or isinstance(scripted[0], tuple):
            r = httpx.request(self.command, srv.upstream + self.path, content=body,
                              headers=forward, timeout=60)
            if scripted is None:
                scripted = (r.status_code, {}, r.content)
            else:
                scripted = (scripted[0][1], *scripted[1:])
        status, headers, payload = scripted
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PATCH = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def flaky(service) -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.upstream, srv.script, srv.seen, srv.lock = service.base_url, [], [], threading.Lock()
    srv.keys = []
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


_UNAVAILABLE = json.dumps({"error": {"code": "unavailable", "request_id": "r1",
                                     "message": "an index shard is unavailable"}}).encode()


def test_committed_write_without_a_key_is_not_repeated(flaky, faces):
    """facefleet's own 503 may follow a committed write: a write that a repeat could
    apply twice (an import from a one-shot iterable) is not retried blind."""
    url = f"http://127.0.0.1:{flaky.server_address[1]}"
    flaky.script = [(503, {"content-type": "application/json"}, _UNAVAILABLE)]
    line = {"id": "ab" * 16, "person_id": "x", "model": "dlib", "embedding": [0.1] * 128}
    with Client(url, retry=RetryPolicy(max_retries=3, backoff_s=0.01)) as client:
        with pytest.raises(Unavailable) as exc:
            client.import_faces("cli-flaky", iter([line]))
    assert exc.value.request_id == "r1" and len(flaky.seen) == 1


def test_batch_answer_lost_after_commit_is_retried_safely(service, flaky, faces):
    """The first try of a batch is committed but its answer is lost (a 503, then a
    dropped connection): the retries carry the same Idempotency-Key, and the
    service answers them with the first answer, enrolling nothing twice."""
    url = f"http://127.0.0.1:{flaky.server_address[1]}"
    items = [EnrollItem(faces / "deepface/img1.jpg", person_id="a"),
             EnrollItem(faces / "dlib-boxes/dogs.jpg", person_id="dog")]
    flaky.script = [(("forward", 503), {"content-type": "application/json"}, _UNAVAILABLE),
                    (("forward", 502), {}, b"bad gateway")]
    with Client(url, retry=RetryPolicy(max_retries=3, backoff_s=0.01)) as client:
        res = client.register_batch("cli-batch-retry", items)
    assert len(flaky.seen) == 3 and len(set(flaky.keys)) == 1 and flaky.keys[0]
    assert res.replayed and (res.created, res.failed) == (1, 1)
    assert res.results[1].error_code == "no_face_detected"
    with Client(service.base_url) as client:
        assert client.collection("cli-batch-retry").faces == 1
        # a new call is a new key: it enrols again
        assert not client.register_batch("cli-batch-retry", items[:1]).replayed
        assert client.collection("cli-batch-retry").faces == 2


def test_connection_refused_is_a_transport_error(service):
    with Client("http://127.0.0.1:9", retry=RetryPolicy(max_retries=2, backoff_s=0.01)) as c:
        with pytest.raises(TransportError):
            c.health()
    code, _ = run_cli(service, "collections", "--url", "http://127.0.0.1:9", ok=(2,))


# --------------------------------------------------------------------------- vectors, listings


def test_client_vectors_listings_and_person_updates(service, faces):
    d = faces / "deepface"
    with Client(service.base_url) as client:
        emb = client.embed(d / "img1.jpg").faces[0].embedding
        face = client.register_embedding("cli-vec", emb, person_id="ann", name="Ann",
                                         labels={"team": "red"})
        assert face.box is None and face.name == "Ann"
        res = client.register_batch("cli-vec", [
            EnrollItem(d / "img3.jpg", person_id="bob"),
            EnrollItem(embedding=client.embed(d / "img2.jpg").faces[0].embedding,
                       person_id="ann")])
        assert (res.created, res.failed) == (2, 0) and res.results[1].box is None
        hit = client.identify_embedding("cli-vec", emb, top_k=3)
        assert hit.faces[0].box is None and hit.faces[0].best.face_id == face.id
        per = client.identify("cli-vec", d / "img2.jpg", top_k=3, per_person=True)
        assert [m.person_id for m in per.faces[0].matches] == ["ann", "bob"]

        page = client.persons("cli-vec", limit=1)
        assert [p.person_id for p in page.items] == ["ann"] and page.next_cursor
        assert page.items[0].faces == 2 and page.items[0].labels == {"team": "red"}
        assert [p.person_id for p in client.iter_persons("cli-vec", page_size=1)] == [
            "ann", "bob"]
        assert len(list(client.iter_faces("cli-vec", page_size=1))) == 3
        assert len(list(client.iter_faces("cli-vec", person_id="ann"))) == 2

        p = client.update_person("cli-vec", "ann", name="Anne")
        assert (p.name, p.labels) == ("Anne", {"team": "red"})
        p = client.update_person("cli-vec", "ann", labels=None)
        assert (p.name, p.labels) == ("Anne", {})
        assert client.identify_embedding("cli-vec", emb).faces[0].best.label == "Anne"
        lines = list(client.export("cli-vec"))
        assert len(lines) == 3 and {x["person_id"] for x in lines} == {"ann", "bob"}

    async def go():
        async with AsyncClient(service.base_url) as client:
            names = [p.label async for p in client.iter_persons("cli-vec", page_size=1)]
            exported = [x async for x in client.export("cli-vec")]
            hit = await client.identify_embedding("cli-vec", emb, per_person=True)
            return names, exported, hit

    names, exported, hit = asyncio.run(go())
    assert names == ["Anne", "bob"] and exported == lines
    assert hit.faces[0].matches[0].person_id == "ann"


def test_cli_register_list_export_import(service, faces, tmp_path):
    d = faces / "deepface"
    with Client(service.base_url) as client:
        vector = client.embed(d / "img1.jpg").faces[0].embedding
    vec_file = tmp_path / "vec.json"
    vec_file.write_text(json.dumps(vector))
    _, one = run_json(service, "register", "-c", "cli-io", "--embedding", str(vec_file),
                      "--person-id", "ann", "--name", "Ann", "--label", "team=red")
    assert one["box"] is None and one["labels"] == {"team": "red"}
    _, two = run_json(service, "register", str(d / "img3.jpg"), "-c", "cli-io",
                      "--person-id", "bob")
    assert two["box"]["w"] > 0

    _, found = run_json(service, "identify", "-c", "cli-io", "--embedding", str(vec_file),
                        "--per-person")
    assert found["results"][0]["faces"][0]["matches"][0]["person_id"] == "ann"
    _, text = run_cli(service, "identify", "-c", "cli-io", "--embedding", str(vec_file))
    assert "ann" in text and "yes" in text
    _, people = run_json(service, "persons", "-c", "cli-io", "--limit", "1", "--all")
    assert [p["person_id"] for p in people["persons"]] == ["ann", "bob"]
    _, page = run_json(service, "persons", "-c", "cli-io", "--limit", "1")
    assert len(page["persons"]) == 1 and page["next_cursor"]
    _, mine = run_json(service, "faces", "-c", "cli-io", "--person", "ann")
    assert [f["id"] for f in mine["faces"]] == [one["id"]]
    _, upd = run_json(service, "update-person", "ann", "-c", "cli-io", "--name", "Anne",
                      "--clear-labels")
    assert (upd["name"], upd["labels"]) == ("Anne", {})

    out = tmp_path / "cli-io.jsonl"
    res = invoke(service, "export", "-c", "cli-io", "-o", str(out))
    assert "exported 2 faces" in res.stdout and "2/2" in res.stderr  # the progress bar
    assert len(out.read_text().splitlines()) == 2 and not (tmp_path / "cli-io.jsonl.part").exists()
    run_cli(service, "forget", "-c", "cli-io", "--all", "--yes")
    res = invoke(service, "import", str(out), "-c", "cli-io")
    assert "importing" in res.stderr and "2 lines" in res.stderr
    assert "already there" in res.stdout
    _, again = run_json(service, "import", str(out), "-c", "cli-io", "--no-progress")
    assert (again["imported"], again["skipped"]) == (0, 2)
    _, people = run_json(service, "persons", "-c", "cli-io", "--all")
    assert {(p["person_id"], p["name"]) for p in people["persons"]} == {("ann", "Anne"),
                                                                       ("bob", None)}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(out.read_text() + "{oops\n")
    code, doc = run_json(service, "import", str(bad), "-c", "cli-io", "--no-progress",
                         "--fail-on-error", ok=(1,))
    assert doc["failed"] == 1 and doc["errors"][0]["line"] == 3
    run_cli(service, "identify", "-c", "cli-io", ok=(2,))  # neither IMAGES nor --embedding
    run_cli(service, "export", "-c", "cli-no-such", "-o", str(tmp_path / "x.jsonl"), ok=(2,))
    assert not (tmp_path / "x.jsonl").exists()


def test_options_before_the_command_and_unwrapped_tables(service, enrolled):
    # the environment points nowhere: only --url given before the command can work
    result = CliRunner().invoke(main, ["--url", service.base_url, "collections"],
                                env={"FACEFLEET_URL": "http://127.0.0.1:9"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert COLLECTION in result.stdout
    result = CliRunner().invoke(main, ["--url", service.base_url, "--json", "faces", "-c",
                                       COLLECTION, "--limit", "3"],
                                env={"FACEFLEET_URL": "http://127.0.0.1:9"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ids = [f["id"] for f in json.loads(result.stdout)["faces"]]
    assert len(ids) == 3
    # piped output: one line per row, ids whole, however wide the table
    _, text = run_cli(service, "faces", "-c", COLLECTION, "--limit", "3")
    for fid in ids:
        assert sum(fid in line for line in text.splitlines()) == 1, text


def test_enroll_reports_file_names_and_request_ids(service, enrolled):
    (problem,) = enrolled["problems"]
    assert "person01/no-face-dogs.jpg" in problem["message"], problem
    assert "items[" not in problem["message"]
    assert problem["request_id"].startswith("enroll-")


def test_enroll_where_every_photo_failed_exits_1(service, faces, tmp_path):
    root = tmp_path / "people"
    for person in ("rex", "fido"):
        (root / person).mkdir(parents=True)
        (root / person / f"{person}.jpg").write_bytes(f"not an image of {person}".encode())
    (root / "rex" / "dogs.jpg").symlink_to(faces / "dlib-boxes" / "dogs.jpg")
    result = invoke(service, "enroll", str(root), "-c", "cli-all-fail", "--no-progress",
                    "--json", ok=(1,))
    out = json.loads(result.stdout)
    assert out["enrolled"] == 0 and out["failed"] == 3
    assert {p["code"] for p in out["problems"]} == {"image_decode_error", "no_face_detected"}
    assert "none of the 3 photo(s)" in result.stderr
