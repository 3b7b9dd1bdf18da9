"""The HTTP API of the real Serve app: every endpoint, input format and error."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from configs.settings import ImageLimits
from tests.app.photos import b64

pytestmark = pytest.mark.app


def check_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body["error"]


def test_health_ready_docs(api):
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert "/v1/verify" in spec["paths"]


def test_models_lists_defaults_and_missing_weights(api):
    m = api.get("/v1/models").json()
    assert {d["name"] for d in m["detectors"]} >= {"blazeface-short", "blazeface-full",
                                                   "dlib-hog", "mtcnn", "opencv-haar"}
    emb = {e["name"]: e for e in m["embedders"]}
    assert emb["dlib"]["installed"] and emb["dlib"]["dim"] == 128 and emb["dlib"]["threshold"]
    assert emb["dlib-native"]["installed"]
    assert not emb["deepface:ArcFace"]["installed"] and emb["deepface:ArcFace"]["reason"]
    # each part of the default runs the form this CPU and runtime pick (bf16 on OpenVINO
    # where the CPU has AMX / AVX-512 BF16), and the answer says which
    from configs.settings import Runtime
    from pipelines.embed_dlib import DlibOnnxEmbedder
    from pipelines.embed_mfn512 import Mfn512Embedder
    from pipelines.runtime import cpu_engine, precision_for

    rt = Runtime()
    want = [precision_for(rt, "CPUExecutionProvider", engine=cpu_engine(rt), has_int8=c.has_int8,
                          has_bf16=c.has_bf16) for c in (DlibOnnxEmbedder, Mfn512Embedder)]
    assert emb["dlib+mfn512"]["precision"] == "+".join(want)
    assert emb["dlib+mfn512"]["engine"] in ("CPUExecutionProvider", "OpenVINO-CPU")
    attrs = {a["action"]: a for a in m["attributes"]}
    assert attrs["age"]["installed"] and attrs["emotion"]["installed"]
    assert not attrs["race"]["installed"]
    # anti-spoofing ships (fr_liveness); race still needs user-supplied weights
    assert attrs["anti_spoofing"]["installed"] and attrs["anti_spoofing"]["name"] == "fr_liveness"


def test_detect_multi_face_with_crops(api, faces):
    r = api.post("/v1/detect", json={"img": b64(faces / "deepface/selfie-many-people.jpg"),
                                     "return_crops": True},
                 headers={"X-Request-Id": "test-detect-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "test-detect-1"
    assert float(r.headers["x-response-time-ms"]) > 0
    body = r.json()
    assert len(body["faces"]) >= 3
    areas = [f["box"]["w"] * f["box"]["h"] for f in body["faces"]]
    assert areas == sorted(areas, reverse=True)
    crop = Image.open(io.BytesIO(base64.b64decode(body["faces"][0]["crop"])))
    assert crop.size == (150, 150)
    assert set(body["faces"][0]["landmarks"]) == {"left_eye", "right_eye", "nose",
                                                  "mouth_left", "mouth_right"}


def _embedding(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array(r.json()["faces"][0]["embedding"], dtype=np.float32)


def test_embed_all_input_formats_agree(api, faces, photo_server):
    path = faces / "deepface/img2.jpg"
    raw = _embedding(api.post("/v1/embed", json={"img": b64(path)}))
    # the default model, dlib+mfn512: 128 + 512 dimensions
    assert raw.shape == (640,) and abs(np.linalg.norm(raw) - 1) < 1e-4
    uri = _embedding(api.post("/v1/embed",
                              json={"img": "data:image/jpeg;base64," + b64(path)}))
    multipart = _embedding(api.post("/v1/embed", files={"img": ("x.jpg", path.read_bytes())},
                                    data={"max_faces": "1"}))
    url = _embedding(api.post("/v1/embed", json={"img": f"{photo_server}/deepface/img2.jpg"}))
    for other in (uri, multipart, url):
        assert float(raw @ other) > 0.9999


def test_embed_webp_named_jpg(api, faces):
    r = api.post("/v1/embed", json={"img": b64(faces / "deepface/img47.jpg")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_verify_same_and_different(api, faces):
    same = api.post("/v1/verify", json={"img1": b64(faces / "deepface/img1.jpg"),
                                        "img2": b64(faces / "deepface/img2.jpg")}).json()
    assert same["verified"] is True and same["metric"] == "cosine"
    assert same["distance"] <= same["threshold"]
    diff = api.post("/v1/verify", json={"img1": b64(faces / "deepface/img1.jpg"),
                                        "img2": b64(faces / "deepface/img3.jpg")}).json()
    assert diff["verified"] is False and diff["distance"] > diff["threshold"]
    assert set(diff["faces"]) == {"img1", "img2"}


def test_verify_multipart_files(api, faces):
    r = api.post("/v1/verify", files={"img1": ("a.jpg", (faces / "deepface/img1.jpg").read_bytes()),
                                      "img2": ("b.jpg", (faces / "deepface/img2.jpg").read_bytes())},
                 data={"threshold": "0.2"})
    assert r.status_code == 200, r.text
    assert r.json()["verified"] is True and r.json()["threshold"] == 0.2


def test_analyze_group_photo(api, faces):
    r = api.post("/v1/analyze", json={"img": b64(faces / "group/multiface.jpg"),
                                      "actions": ["age", "gender", "emotion"]})
    assert r.status_code == 200, r.text
    found = r.json()["faces"]
    assert len(found) >= 5
    for f in found:
        assert 1 <= f["age"] <= 100
        assert f["dominant_gender"] in ("Woman", "Man")
        assert abs(sum(f["emotion"].values()) - 100) < 0.5
        assert f["dominant_emotion"] in f["emotion"]


@pytest.mark.parametrize("action, weights", [("race", "race_model_single_batch.onnx")])
def test_analyze_without_user_supplied_weights_is_typed(api, faces, action, weights):
    # race ships no weights: it names the file it needs
    r = api.post("/v1/analyze", json={"img": b64(faces / "deepface/img1.jpg"),
                                      "actions": ["age", action]})
    err = check_error(r, 400, "model_not_installed")
    assert weights in err["message"] and "FACEFLEET_DEEPFACE_HOME" in err["message"]


def test_analyze_anti_spoofing_works_with_no_user_files(api, faces):
    """The shipped fr_liveness: a genuine photo is real, an attack frame is not."""
    from bench.faceplugin import upright_spoof_frames

    r = api.post("/v1/analyze", json={"img": b64(faces / "deepface/img1.jpg"),
                                      "actions": ["anti_spoofing"]})
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    assert face["is_real"] is True and 0.5 <= face["antispoof_score"] <= 1
    frames = upright_spoof_frames()
    for name, real in (("image_F1", False), ("image_T1", True)):
        r = api.post("/v1/analyze", json={
            "img": base64.b64encode(frames[name]).decode(), "actions": ["anti_spoofing"]})
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["is_real"] is real, (name, r.json())


def _bomb() -> str:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def test_bad_inputs_are_typed_errors_and_service_survives(api, faces, photo_server):
    jpeg = (faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg").read_bytes()
    cases = [
        ({"img": ""}, 422, "validation_error"),
        ({"img": "bm90IGFuIGltYWdl"}, 400, "image_decode_error"),
        ({"img": "this is plain text, not base64 !!"}, 400, "image_decode_error"),
        ({"img": base64.b64encode(jpeg[: len(jpeg) // 2]).decode()}, 400, "image_decode_error"),
        ({"img": _bomb()}, 413, "too_many_pixels"),
        ({"img": b64(faces / "dlib-boxes/dogs.jpg"), "detector": "dlib-hog"}, 422,
         "no_face_detected"),
        ({"img": b64(faces / "deepface/img1.jpg"), "detector": "nope"}, 422, "validation_error"),
        ({"img": b64(faces / "deepface/img1.jpg"), "max_faces": 0}, 422, "validation_error"),
        ({"img": b64(faces / "deepface/img1.jpg"), "bogus": 1}, 422, "validation_error"),
        ({"img": f"{photo_server}/missing.jpg"}, 400, "url_fetch_failed"),
    ]
    for body, status, code in cases:
        check_error(api.post("/v1/detect", json=body), status, code)
    check_error(api.post("/v1/embed", json={"img": b64(faces / "deepface/img1.jpg"),
                                            "model": "deepface:ArcFace"}), 400,
                "model_not_installed")
    check_error(api.post("/v1/embed", json={"img": b64(faces / "deepface/img1.jpg"),
                                            "model": "nope"}), 400, "unknown_model")
    check_error(api.post("/v1/detect", content=b"{not json",
                         headers={"content-type": "application/json"}), 422, "validation_error")
    check_error(api.post("/v1/detect", content=b"x" * (9 * 1024 * 1024),
                         headers={"content-type": "application/json"}), 422, "validation_error")
    check_error(api.get("/v1/detect"), 405, "method_not_allowed")
    check_error(api.get("/v1/nothing-here"), 404, "not_found")
    # no face, but asked not to enforce: an empty list
    r = api.post("/v1/detect", json={"img": b64(faces / "dlib-boxes/dogs.jpg"),
                                     "detector": "dlib-hog", "enforce_detection": False})
    assert r.status_code == 200 and r.json()["faces"] == []
    # and the service still answers real work
    assert len(api.post("/v1/detect", json={"img": b64(faces / "deepface/img1.jpg")})
               .json()["faces"]) == 1


def test_oversized_image_is_413(api, faces):
    limits = ImageLimits()  # the service runs with the documented defaults
    max_bytes, max_request = limits.max_bytes, limits.max_request_bytes
    big = base64.b64encode(b"\xff\xd8" + b"\x00" * (max_bytes + 10)).decode()
    check_error(api.post("/v1/detect", json={"img": big}), 413, "image_too_large")
    # a body over max_request_bytes is refused from its length, and when streamed
    huge = b'{"img": "' + b"A" * (max_request + (1 << 20)) + b'"}'
    check_error(api.post("/v1/detect", content=huge,
                         headers={"content-type": "application/json"}), 413, "image_too_large")

    def chunks():
        for i in range(0, len(huge), 1 << 20):
            yield huge[i:i + (1 << 20)]

    check_error(api.post("/v1/detect", content=chunks(),
                         headers={"content-type": "application/json"}), 413, "image_too_large")
    # multipart, chunked (no Content-Length): a file part over max_bytes, and a body
    # over max_request_bytes made of parts under it
    def multipart(parts: list[tuple[str, int]]):
        for name, size in parts:
            yield (f'--bnd\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{name}.jpg"\r\n\r\n').encode()
            for _ in range(size // (1 << 20)):
                yield b"\xff" * (1 << 20)
            yield b"\r\n"
        yield b"--bnd--\r\n"

    mp = {"content-type": "multipart/form-data; boundary=bnd"}
    err = check_error(api.post("/v1/detect", headers=mp,
                               content=multipart([("img", max_bytes + (4 << 20))])),
                      413, "image_too_large")
    assert err["details"]["field"] == "img"
    part = max_bytes - (1 << 20)
    n = max_request // part + 1
    err = check_error(api.post("/v1/detect", headers=mp,
                               content=multipart([(f"f{i}", part) for i in range(n)])),
                      413, "image_too_large")
    assert err["details"]["max_request_bytes"] == max_request
    assert api.get("/health").status_code == 200


def test_concurrent_requests_are_batched(api, faces):
    imgs = [b64(p) for p in sorted((faces / "lfw-dev/images/George_W_Bush").glob("*.jpg"))[:24]]
    with cf.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda i: api.post("/v1/embed", json={"img": i}).status_code, imgs))
    assert codes == [200] * len(imgs)
    sizes = api.get("/v1/stats").json()["batch_sizes"]
    seen = {int(k) for k in sizes["Detector"]["detect"]} | {int(k) for k in
                                                             sizes["Embedder"]["embed"]}
    assert max(seen) > 1, sizes


def test_api_key_locks_out_when_on(service, faces):
    key = "s3cret-test-key"
    config = _with_ingress_keys(service.config, [hashlib.sha256(key.encode()).hexdigest()])
    service.redeploy(config)
    try:
        api = service.client
        body = {"img": b64(faces / "deepface/img1.jpg")}
        check_error(api.post("/v1/detect", json=body), 401, "unauthorized")
        check_error(api.post("/v1/detect", json=body, headers={"Authorization": "Bearer wrong"}),
                    401, "unauthorized")
        assert api.post("/v1/detect", json=body,
                        headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert api.post("/v1/detect", json=body, headers={"X-API-Key": key}).status_code == 200
        assert api.get("/health").status_code == 200  # probes stay open
    finally:
        service.redeploy(_with_ingress_keys(service.config, []))
    assert service.client.post("/v1/detect", json={"img": b64(faces / "deepface/img1.jpg")}
                               ).status_code == 200


def _with_ingress_keys(config: dict, keys: list[str]) -> dict:
    import copy

    c = copy.deepcopy(config)
    for d in c["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            # an empty list alone is refused: turning auth off is said explicitly
            d["user_config"] = {"api_key_sha256": keys, "auth_enabled": bool(keys)}
    return c
