"""Photo helpers shared by the app tests: request encodings and the people of
``deepface/identities.csv``."""

from __future__ import annotations

import base64
import csv
from collections import defaultdict
from pathlib import Path


def b64(path: Path) -> str:
    """A photo as the raw base64 string a JSON ``img`` field takes."""
    return base64.b64encode(path.read_bytes()).decode()


def identities(faces: Path) -> dict[str, list[Path]]:
    """Each person of ``deepface/identities.csv`` with their photos, in file order."""
    people: dict[str, list[Path]] = defaultdict(list)
    with open(faces / "deepface/identities.csv") as f:
        for row in csv.DictReader(f):
            people[row["identity"]].append(faces / "deepface" / row["image"])
    return dict(people)


def phone_photo(src: Path, size: int, out: Path) -> Path:
    """A real photo as a phone sends it: ``src`` upscaled to 5604 px high (23 MP),
    with sensor grain where needed, JPEG-encoded at the highest quality that stays
    under ``size`` bytes and within 8% of it. Written to ``out`` and returned."""
    import cv2
    import numpy as np

    img = cv2.imread(str(src))
    scale = 5604 / img.shape[0]
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    grain = np.random.default_rng(0).normal(0, 1, img.shape).astype(np.float32)

    def encode(noisy: np.ndarray, q: int) -> bytes:
        return cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, q,
                                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()

    for sigma in (0.0, 2.0, 4.0, 6.0):  # more grain, more bytes at the same quality
        noisy = np.clip(img + sigma * grain, 0, 255).astype(np.uint8) if sigma else img
        if len(encode(noisy, 100)) < 0.92 * size:
            continue
        lo, hi, best = 50, 100, b""
        while lo <= hi:  # the highest quality under size
            q = (lo + hi) // 2
            data = encode(noisy, q)
            if len(data) <= size:
                best, lo = data, q + 1
            else:
                hi = q - 1
        if len(best) >= 0.92 * size:
            out.write_bytes(best)
            return out
    raise AssertionError(f"no encoding of {src} lands within 8% under {size} bytes")


def check_phone_photos(client, photos: dict[int, Path], max_bytes: int) -> None:
    """Every phone-size photo is detected (multipart) and embedded (base64 JSON), and
    random bytes of each size, and of exactly ``max_bytes``, answer a typed 400."""
    import numpy as np

    for mb, path in photos.items():
        r = client.post("/v1/detect", files={"img": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, (mb, r.text[:300])
        assert r.json()["image"] == {"width": 4146, "height": 5604}
        assert len(r.json()["faces"]) == 1, (mb, r.json())
    r = client.post("/v1/embed", json={"img": b64(photos[max(photos)])})
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["faces"][0]["embedding"]) > 0
    rng = np.random.default_rng(7)
    junk = [(f"{mb} MiB", rng.bytes(mb << 20)) for mb in photos] + [
        ("max_bytes", rng.bytes(max_bytes))]
    for name, data in junk:
        r = client.post("/v1/detect", files={"img": ("junk.jpg", data, "image/jpeg")})
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "image_decode_error"
    r = client.post("/v1/embed", json={"img": base64.b64encode(junk[-1][1]).decode()})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["code"] == "image_decode_error"
