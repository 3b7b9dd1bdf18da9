"""The recognizer models through the real service: both MobileFaceNets, the fused
models and the default (dlib+mfn512), per-route thresholds, collections bound to
dlib, DeepFace names."""

from __future__ import annotations


import numpy as np
from tests.app.photos import b64

FUSED = "dlib+mobilefacenet"
DEFAULT = "dlib+mfn512"


def test_models_list_the_new_embedders_with_both_thresholds(api):
    emb = {e["name"]: e for e in api.get("/v1/models").json()["embedders"]}
    assert emb[DEFAULT]["default"] and emb[DEFAULT]["dim"] == 640
    assert not emb[FUSED]["default"] and emb[FUSED]["dim"] == 320
    for name in (FUSED, DEFAULT):
        assert [c["kind"] for c in emb[name]["chip_specs"]] == ["dlib", "warp5"]
    for name, dim in (("mobilefacenet", 192), ("mfn512", 512)):
        assert emb[name]["dim"] == dim
        assert emb[name]["chip_specs"] == [{"size": 112, "padding": 0.0, "kind": "warp5"}]
    for name in ("dlib", "mobilefacenet", FUSED, "mfn512", DEFAULT, "dlib+mobilefacenet+mfn512"):
        assert 0 < emb[name]["identify_threshold"] < emb[name]["threshold"]
        assert emb[name]["licence"] and emb[name]["installed"]
    assert "MS-Celeb-1M" in emb["mobilefacenet"]["licence"]
    assert "unresolved" in emb["mfn512"]["licence"]


def test_embed_and_verify_with_each_model(api, faces):
    d = faces / "deepface"
    for model, dim in (("dlib", 128), ("mobilefacenet", 192), (FUSED, 320), ("mfn512", 512),
                       (DEFAULT, 640)):
        r = api.post("/v1/embed", json={"img": b64(d / "img1.jpg"), "model": model})
        assert r.status_code == 200, r.text
        v = np.array(r.json()["faces"][0]["embedding"])
        assert r.json()["model"] == model and v.shape == (dim,)
        assert abs(np.linalg.norm(v) - 1) < 1e-4
        same = api.post("/v1/verify", json={"img1": b64(d / "img1.jpg"),
                                            "img2": b64(d / "img2.jpg"), "model": model}).json()
        diff = api.post("/v1/verify", json={"img1": b64(d / "img1.jpg"),
                                            "img2": b64(d / "img3.jpg"), "model": model}).json()
        assert same["verified"] and not diff["verified"], (model, same, diff)
        assert same["model"] == model


def test_identify_uses_the_identify_threshold_and_dlib_collections_stay_dlib(api, faces):
    m = {e["name"]: e for e in api.get("/v1/models").json()["embedders"]}
    d = faces / "deepface"
    for coll, model in (("rec-dlib", "dlib"), ("rec-default", None)):
        body = {"name": coll} if model is None else {"name": coll, "model": model}
        r = api.post("/v1/collections", json=body)
        assert r.status_code == 201, r.text
        bound = model or DEFAULT
        assert r.json()["model"] == bound and r.json()["dim"] == m[bound]["dim"]
        r = api.post(f"/v1/collections/{coll}/faces", json={"img": b64(d / "img1.jpg"),
                                                            "person_id": "p1"})
        assert r.status_code == 201, r.text
        hit = api.post(f"/v1/collections/{coll}/identify", json={"img": b64(d / "img2.jpg")})
        assert hit.status_code == 200, hit.text
        out = hit.json()
        assert out["model"] == bound and out["threshold"] == m[bound]["identify_threshold"]
        best = out["faces"][0]["matches"][0]
        assert best["person_id"] == "p1" and best["match"] is True
        # a per-request threshold still overrides the configured one
        strict = api.post(f"/v1/collections/{coll}/identify",
                          json={"img": b64(d / "img2.jpg"), "threshold": 1e-6}).json()
        assert strict["threshold"] == 1e-6 and strict["faces"][0]["matches"][0]["match"] is False
    # a dlib collection refuses vectors of another model
    r = api.post("/v1/collections/rec-dlib/faces", json={"img": b64(d / "img1.jpg"),
                                                         "model": "mobilefacenet"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"


def test_deepface_routes_accept_the_new_names(api, faces):
    img = b64(faces / "deepface/img1.jpg")
    for name, dim in (("MobileFaceNet", 192), ("mobilefacenet", 192), ("Dlib+MobileFaceNet", 320),
                      ("Dlib+MFN512", 640), (None, 640)):
        body = {"img": img} if name is None else {"img": img, "model_name": name}
        r = api.post("/represent", json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["embedding"]) == dim
    v = api.post("/verify", json={"img1": img, "img2": b64(faces / "deepface/img2.jpg"),
                                  "model_name": "MobileFaceNet"}).json()
    assert v["verified"] is True and v["model"] == "MobileFaceNet"
