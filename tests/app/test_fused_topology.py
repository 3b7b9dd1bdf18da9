"""The fused topology (all models inside the Ingress replica) serves the same API."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import numpy as np
import pytest

from configs.settings import ImageLimits
from deployments import local
from tests.app.photos import b64, check_phone_photos

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def fused(service):
    """Redeploy the running app from configs/serve_config.fused.yaml, then restore it."""
    original = service.config
    app = original["applications"][0]
    port = original["http_options"]["port"]
    config = local.load_config(Path(__file__).resolve().parents[2]
                               / "configs/serve_config.fused.yaml",
                               {"settings": app["args"]["settings"], "gallery": False}, port)
    service.redeploy(config)
    try:
        yield service.client
    finally:
        service.redeploy(original)


def test_fused_app_answers_like_the_separate_one(fused, faces):
    assert fused.get("/ready").json()["ready"] is True
    r = fused.post("/v1/embed", json={"img": b64(faces / "deepface/img2.jpg")})
    assert r.status_code == 200, r.text
    v = np.array(r.json()["faces"][0]["embedding"])
    assert abs(np.linalg.norm(v) - 1) < 1e-4
    same = fused.post("/v1/verify", json={"img1": b64(faces / "deepface/img1.jpg"),
                                          "img2": b64(faces / "deepface/img2.jpg")}).json()
    assert same["verified"] is True
    a = fused.post("/v1/analyze", json={"img": b64(faces / "deepface/img1.jpg")}).json()
    assert a["faces"][0]["dominant_gender"] == "Woman"
    bad = fused.post("/v1/detect", json={"img": "aGVsbG8="})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "image_decode_error"


def test_fused_app_batches_concurrent_requests(fused, faces):
    imgs = [b64(p) for p in sorted((faces / "lfw-dev/images/Colin_Powell").glob("*.jpg"))[:24]]
    with cf.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda i: fused.post("/v1/embed", json={"img": i}).status_code,
                              imgs))
    assert codes == [200] * len(imgs)
    sizes = fused.get("/v1/stats").json()["batch_sizes"]["Detector"]
    assert max(int(k) for k in sizes["detect"]) > 1, sizes


def test_fused_app_takes_phone_size_photos(fused, phone_photos):
    check_phone_photos(fused, phone_photos, ImageLimits().max_bytes)
