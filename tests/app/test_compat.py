"""DeepFace REST compatibility routes, driven the way DeepFace's own API tests drive
DeepFace: true-positive / true-negative verify, represent from base64 and from
multipart, analyze with every input format, invalid inputs and a missing file,
plus the gallery-backed /register and /search."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from deployments.http.compat_schemas import (collection_for, confidence, detector_for,
                                        distance_from_similarity, embedder_for, threshold_in)
from pipelines.errors import ValidationError
from tests.app.photos import b64


def b64_bytes(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()

pytestmark = pytest.mark.app

AREA_KEYS = {"x", "y", "w", "h", "left_eye", "right_eye"}


def deepface_error(r, fragment: str = "") -> dict:
    """DeepFace answers bad requests with 400 and an ``exception`` message."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert isinstance(body["exception"], str) and body["exception"]
    assert body["error"]["message"] == body["exception"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert fragment.lower() in body["exception"].lower(), body["exception"]
    assert "Traceback" not in r.text
    return body


# ------------------------------------------------------------------ no Ray needed
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "euclidean_l2", "angular"])
def test_threshold_conversion_matches_metric(metric):
    # a pair exactly at the cosine threshold sits exactly at the converted threshold
    t = 0.0882
    at = float(distance_from_similarity(1.0 - t, metric))
    assert math.isclose(at, threshold_in(metric, t), rel_tol=1e-9)
    assert float(distance_from_similarity(1.0 - t / 2, metric)) < threshold_in(metric, t)


def test_name_mapping():
    assert embedder_for("Dlib", "dlib", ["dlib"]) == "dlib"
    assert embedder_for(None, "dlib", ["dlib"]) == "dlib"
    assert embedder_for("ArcFace", "dlib", ["dlib"]) == "deepface:ArcFace"
    dets = ["blazeface", "dlib-hog", "mtcnn", "opencv-haar"]
    assert [detector_for(n, "blazeface", dets) for n in
            ("opencv", "mtcnn", "dlib", "mediapipe", "skip", None)] == \
        ["opencv-haar", "mtcnn", "dlib-hog", "blazeface", "skip", "blazeface"]
    with pytest.raises(ValidationError, match="retinaface.*no equivalent.*available: .*dlib"):
        detector_for("retinaface", "blazeface", dets)
    assert collection_for(None, "deepface:ArcFace") == "deepface-deepface-arcface"
    assert confidence(0.01, 0.09, True) > 90 and confidence(0.5, 0.09, False) < 1
    assert confidence(0.0899, 0.09, True) >= 51 and confidence(0.0901, 0.09, False) <= 49


# ------------------------------------------------------------------ verify
def test_verify_true_positive_and_true_negative(api, faces):
    d = faces / "deepface"
    same = api.post("/verify", json={"img1": b64(d / "img1.jpg"), "img2": b64(d / "img2.jpg"),
                                     "model_name": "Dlib", "detector_backend": "mediapipe"})
    assert same.status_code == 200, same.text
    s = same.json()
    assert s["verified"] is True and 0 <= s["distance"] <= s["threshold"]
    assert s["model"] == "Dlib" and s["detector_backend"] == "mediapipe"
    assert s["similarity_metric"] == "cosine" and s["time"] >= 0
    assert s["confidence"] >= 51
    assert set(s["facial_areas"]) == {"img1", "img2"}
    assert set(s["facial_areas"]["img1"]) == AREA_KEYS
    assert s["facial_areas"]["img1"]["w"] > 50 and len(s["facial_areas"]["img1"]["left_eye"]) == 2

    diff = api.post("/verify", json={"img1": b64(d / "img1.jpg"), "img2": b64(d / "img3.jpg"),
                                     "model_name": "Dlib"}).json()
    assert diff["verified"] is False and diff["distance"] > diff["threshold"]
    assert diff["confidence"] <= 49


def test_verify_metrics_multipart_and_precomputed_embedding(api, faces):
    d = faces / "deepface"
    files = {"img1": ("a.jpg", (d / "img1.jpg").read_bytes()),
             "img2": ("b.jpg", (d / "img2.jpg").read_bytes())}
    cos = api.post("/verify", files=files, data={"model_name": "Dlib"}).json()
    l2 = api.post("/verify", files=files,
                  data={"model_name": "Dlib", "distance_metric": "euclidean_l2"}).json()
    assert cos["verified"] is True and l2["verified"] is True
    assert l2["similarity_metric"] == "euclidean_l2"
    # unit vectors: euclidean_l2 = sqrt(2 * cosine), threshold converted the same way
    assert math.isclose(l2["distance"], math.sqrt(2 * cos["distance"]), abs_tol=1e-4)
    assert math.isclose(l2["threshold"], math.sqrt(2 * cos["threshold"]), abs_tol=1e-5)
    # DeepFace also takes a pre-computed embedding in place of an image
    emb = api.post("/represent", json={"img": b64(d / "img1.jpg"),
                                       "model_name": "Dlib"}).json()["results"][0]
    r = api.post("/verify", json={"img1": emb["embedding"], "img2": b64(d / "img2.jpg"),
                                  "model_name": "Dlib"}).json()
    assert math.isclose(r["distance"], cos["distance"], abs_tol=1e-4)
    assert r["facial_areas"]["img1"]["x"] is None
    deepface_error(api.post("/verify", json={"img1": [0.1, 0.2], "img2": b64(d / "img2.jpg")}),
                   "dimensions")


# ------------------------------------------------------------------ represent
def test_represent_from_base64_data_uri_url_and_multipart(api, faces, photo_server):
    path = faces / "deepface/img1.jpg"
    r = api.post("/represent", json={"img": b64(path), "model_name": "Dlib"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 1
    first = results[0]
    assert set(first) == {"embedding", "facial_area", "face_confidence"}
    assert set(first["facial_area"]) == AREA_KEYS and 0 < first["face_confidence"] <= 1
    ref = np.array(first["embedding"])
    assert ref.shape == (128,) and abs(np.linalg.norm(ref) - 1) < 1e-4
    others = [
        api.post("/represent", json={"img": "data:image/jpeg;base64," + b64(path),
                                     "model_name": "Dlib"}),
        api.post("/represent", json={"img": f"{photo_server}/deepface/img1.jpg",
                                     "model_name": "Dlib"}),
        # form values arrive as strings and are parsed as their types
        api.post("/represent", files={"img": ("img1.jpg", path.read_bytes())},
                 data={"model_name": "Dlib", "max_faces": "1", "enforce_detection": "true",
                       "align": "true", "normalization": "base"}),
        api.post("/represent", data={"img": b64(path), "model_name": "Dlib"}),  # form, no file
    ]
    for o in others:
        assert o.status_code == 200, o.text
        assert float(ref @ np.array(o.json()["results"][0]["embedding"])) > 0.9999


def test_represent_multiple_faces_max_faces_and_skip(api, faces):
    img = b64(faces / "deepface/couple.jpg")
    many = api.post("/represent", json={"img": img}).json()["results"]
    assert len(many) >= 2
    areas = [f["facial_area"]["w"] * f["facial_area"]["h"] for f in many]
    assert areas == sorted(areas, reverse=True)
    one = api.post("/represent", json={"img": img, "max_faces": 1}).json()["results"]
    assert len(one) == 1 and one[0]["facial_area"] == many[0]["facial_area"]
    # skip: the whole image is the face, as DeepFace does for pre-cropped inputs
    lfw = faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg"
    sk = api.post("/represent", json={"img": b64(lfw), "detector_backend": "skip"}).json()
    area = sk["results"][0]["facial_area"]
    assert (area["x"], area["y"], area["w"], area["h"]) == (0, 0, 250, 250)
    assert sk["results"][0]["face_confidence"] == 0


def test_detector_names_map_onto_facefleet_detectors(api, faces):
    img = b64(faces / "deepface/img1.jpg")
    boxes = {}
    for name in ("opencv", "dlib", "mediapipe"):
        r = api.post("/represent", json={"img": img, "detector_backend": name})
        assert r.status_code == 200, (name, r.text)
        boxes[name] = r.json()["results"][0]["facial_area"]
    # different detectors, the same face: the box centres agree
    cx = [b["x"] + b["w"] / 2 for b in boxes.values()]
    assert max(cx) - min(cx) < 0.25 * boxes["mediapipe"]["w"], boxes


def test_enforce_detection_false_as_form_string(api, faces):
    dogs = (faces / "dlib-boxes/dogs.jpg").read_bytes()
    strict = api.post("/represent", files={"img": ("dogs.jpg", dogs)},
                      data={"detector_backend": "dlib", "enforce_detection": "true"})
    body = deepface_error(strict, "no face")
    assert body["error"]["code"] == "no_face_detected"
    # "false" is false (DeepFace's own API would read the string as true)
    lax = api.post("/represent", files={"img": ("dogs.jpg", dogs)},
                   data={"detector_backend": "dlib", "enforce_detection": "false"})
    assert lax.status_code == 200, lax.text
    res = lax.json()["results"]
    assert len(res) == 1 and res[0]["face_confidence"] == 0 and res[0]["facial_area"]["x"] == 0


# ------------------------------------------------------------------ analyze
def test_analyze_input_formats(api, faces, photo_server):
    path = faces / "deepface/img4.jpg"
    reqs = {
        "json base64": api.post("/analyze", json={"img": b64(path),
                                                  "actions": ["age", "gender", "emotion"]}),
        "json url, actions as string": api.post(
            "/analyze", json={"img": f"{photo_server}/deepface/img4.jpg",
                              "actions": "['age', 'gender', 'emotion']"}),
        "multipart file": api.post("/analyze", files={"img": ("img4.jpg", path.read_bytes())},
                                   data={"actions": "[\"age\", \"gender\", \"emotion\"]"}),
        "form base64": api.post("/analyze", data={"img": b64(path),
                                                  "actions": "age,gender,emotion"}),
    }
    ages = []
    for what, r in reqs.items():
        assert r.status_code == 200, (what, r.text)
        (face,) = r.json()["results"]
        assert 10 <= face["age"] <= 80, what
        assert face["dominant_gender"] in ("Woman", "Man") and set(face["gender"]) == {"Woman",
                                                                                       "Man"}
        assert abs(sum(face["emotion"].values()) - 100) < 0.5
        assert face["dominant_emotion"] == max(face["emotion"], key=face["emotion"].get)
        assert set(face["region"]) == AREA_KEYS and face["face_confidence"] > 0
        ages.append(face["age"])
    assert len(set(ages)) == 1  # the same photo, whatever the input format


def test_analyze_default_actions_and_race_without_weights(api, faces):
    img = b64(faces / "deepface/img1.jpg")
    r = api.post("/analyze", json={"img": img})
    assert r.status_code == 200, r.text
    face = r.json()["results"][0]
    # DeepFace's default is all four; race has no weights here, so three are analysed
    assert {"age", "gender", "emotion"} <= set(face) and "race" not in face
    deepface_error(api.post("/analyze", json={"img": img, "actions": ["race"]}), "race")
    deepface_error(api.post("/analyze", json={"img": img, "actions": ["age", "mood"]}),
                   "invalid action")


# ------------------------------------------------------------------ invalid inputs
def test_invalid_inputs_and_missing_file(api, faces):
    img = b64(faces / "deepface/img1.jpg")
    deepface_error(api.post("/represent", json={"model_name": "Dlib"}), "'img' not found")
    deepface_error(api.post("/verify", json={"img1": img}), "'img2' not found")
    deepface_error(api.post("/analyze", json={"img": ""}), "'img' not found")
    # multipart that carries another file but not the one asked for
    deepface_error(api.post("/represent", files={"image": ("x.jpg", b"xx")}), "'img' not found")
    deepface_error(api.post("/represent", json={"img": "this is not an image !!"}), "base64")
    deepface_error(api.post("/represent", json={"img": "bm90IGFuIGltYWdl"}))
    deepface_error(api.post("/represent", content=b"{not json",
                            headers={"content-type": "application/json"}), "json")
    body = deepface_error(api.post("/represent", json={"img": img, "model_name": "VGG-Face"}),
                          "available: Dlib")
    assert body["error"]["code"] == "model_not_installed"
    deepface_error(api.post("/represent", json={"img": img, "detector_backend": "retinaface"}),
                   "available:")
    deepface_error(api.post("/verify", json={"img1": img, "img2": img,
                                             "distance_metric": "manhattan"}))
    # anti-spoofing ships (fr_liveness): every route that takes the flag passes a genuine
    # photo and refuses an attack frame as DeepFace does (400 "Spoof detected")
    from bench.faceplugin import upright_spoof_frames

    spoof = b64_bytes(upright_spoof_frames()["image_F1"])
    coll = f"compat-spoof-{uuid.uuid4().hex[:8]}"
    for route, body in [("/represent", {"img": img}), ("/verify", {"img1": img, "img2": img}),
                        ("/analyze", {"img": img, "actions": ["age"]}),
                        ("/register", {"img": img, "collection": coll}),
                        ("/search", {"img": img, "collection": coll})]:
        r = api.post(route, json={**body, "anti_spoofing": True})
        assert r.status_code == 200, (route, r.text)
        attack = {k: (spoof if k.startswith("img") else v) for k, v in body.items()}
        err = deepface_error(api.post(route, json={**attack, "anti_spoofing": True}),
                             "spoof detected")
        assert err["error"]["code"] == "spoof_detected"
    # and DeepFace's analyze actions stay DeepFace's four
    deepface_error(api.post("/analyze", json={"img": img, "actions": ["anti_spoofing"]}),
                   "invalid action")
    # the service still answers real work
    assert api.post("/represent", json={"img": img}).status_code == 200


# ------------------------------------------------------------------ register / search
def test_register_search_build_index(api, faces):
    d = faces / "deepface"
    coll = f"compat-{uuid.uuid4().hex[:8]}"
    for name in ("img1.jpg", "img3.jpg"):
        r = api.post("/register", json={"img": b64(d / name), "img_name": name,
                                        "model_name": "Dlib", "collection": coll})
        assert r.status_code == 200, r.text
        assert r.json()["inserted"] == 1 and r.json()["collection"] == coll
    assert api.post("/build/index", json={"model_name": "Dlib"}).json() == {
        "message": "Index built successfully"}
    # img2 is the same person as img1, not img3
    r = api.post("/search", files={"img": ("q.jpg", (d / "img2.jpg").read_bytes())},
                 data={"model_name": "Dlib", "collection": coll})
    assert r.status_code == 200, r.text
    (matches,) = r.json()["results"]
    assert [m["img_name"] for m in matches] == ["img1.jpg"]
    m = matches[0]
    assert m["distance"] <= m["threshold"] and m["distance_metric"] == "cosine"
    assert m["model_name"] == "Dlib" and m["confidence"] >= 51
    # similarity_search lists the non-matching face too, farther away
    r = api.post("/search", json={"img": b64(d / "img2.jpg"), "collection": coll,
                                  "model_name": "Dlib", "similarity_search": "true",
                                  "distance_metric": "euclidean_l2"})
    names = [m["img_name"] for m in r.json()["results"][0]]
    assert names == ["img1.jpg", "img3.jpg"]
    far = r.json()["results"][0][1]
    assert far["distance"] > far["threshold"] and far["confidence"] <= 49
    deepface_error(api.post("/search", json={"img": b64(d / "img2.jpg"),
                                             "collection": f"{coll}-none"}), coll)


def test_register_and_search_take_the_whole_image_as_deepface_does(api, faces):
    """``skip`` and a faceless image with ``enforce_detection`` off enrol and search the
    whole image as one face (the gallery is sent the embedding of the whole frame);
    with ``enforce_detection`` on, a faceless image enrols nothing."""
    coll = f"compat-whole-{uuid.uuid4().hex[:8]}"
    lfw = faces / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg"
    dogs = (faces / "dlib-boxes/dogs.jpg").read_bytes()
    r = api.post("/register", json={"img": b64(lfw), "img_name": "aj", "collection": coll,
                                    "detector_backend": "skip"})
    assert r.status_code == 200, r.text
    assert r.json()["inserted"] == 1 and r.json()["faces"][0]["name"] == "aj"
    r = api.post("/search", json={"img": b64(lfw), "collection": coll,
                                  "detector_backend": "skip"})
    assert r.status_code == 200, r.text
    (hit,) = r.json()["results"][0]
    assert hit["img_name"] == "aj" and hit["distance"] < 1e-3
    assert (hit["target_x"], hit["target_y"], hit["target_w"], hit["target_h"]) == \
        (0, 0, 250, 250)
    body = deepface_error(api.post("/register", files={"img": ("dogs.jpg", dogs)},
                                   data={"detector_backend": "dlib", "collection": coll}),
                          "no face")
    assert body["error"]["code"] == "no_face_detected"
    assert api.get(f"/v1/collections/{coll}").json()["faces"] == 1
    r = api.post("/register", files={"img": ("dogs.jpg", dogs)},
                 data={"detector_backend": "dlib", "collection": coll,
                       "enforce_detection": "false", "img_name": "dogs"})
    assert r.status_code == 200, r.text
    assert r.json()["inserted"] == 1
    r = api.post("/search", files={"img": ("dogs.jpg", dogs)},
                 data={"detector_backend": "dlib", "collection": coll,
                       "enforce_detection": "false", "similarity_search": "true"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]
    assert hits[0]["img_name"] == "dogs" and hits[0]["distance"] < 1e-3
    assert (hits[0]["target_x"], hits[0]["target_y"]) == (0, 0)
