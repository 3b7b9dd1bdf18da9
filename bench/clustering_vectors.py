"""The LFW dev vectors of ``bench.clustering``, enrolled through the HTTP API.

Starts the service from ``serve_config.yaml`` on a local Ray (as the app tests
do: data and Ray's temp dir in a fresh directory under /tmp, a free loopback
port), POSTs every photo of ``../shared/faces/lfw-dev/images`` to
``/v1/collections/{c}/faces`` without a ``person_id`` (each face becomes a
person of its own, as an unlabelled upload does), then reads the templates
back with ``GET /v1/collections/{c}/export``. The true person of each face is
known only here, from the photo's folder, never sent to the service.

Embedding 4,992 photos takes minutes on 2 cores: the result can be kept in a
file (``--cache``) and is read from it on the next run.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

log = logging.getLogger("bench.clustering")
REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "faces" / "lfw-dev" / "images"
COLLECTION = "lfw-clusters"


@dataclass
class Enrolled:
    """Vectors of the photos that had a face, their true people, and what was skipped."""

    vectors: np.ndarray  # (n, d) float32, unit rows, as exported
    people: list[str]  # the true person of each row (the photo's folder)
    photos: list[str]  # the photo of each row, relative to LFW
    model: str
    no_face: list[str]  # photos the service found no face in
    embed_s: float  # wall time of the enrolment
    cached: bool = False  # read from a cache file written by an earlier run

    def save(self, path: Path) -> None:
        np.savez(path, vectors=self.vectors, people=np.asarray(self.people),
                 photos=np.asarray(self.photos),
                 meta=np.asarray(json.dumps({"model": self.model, "no_face": self.no_face,
                                             "embed_s": self.embed_s})))

    @classmethod
    def load(cls, path: Path) -> Enrolled:
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        return cls(z["vectors"].astype(np.float32), z["people"].tolist(), z["photos"].tolist(),
                   meta["model"], meta["no_face"], meta["embed_s"], cached=True)


def lfw_photos(limit: int | None = None) -> list[Path]:
    photos = sorted(LFW.glob("*/*.jpg"))
    return photos[:limit] if limit else photos


def enrol_over_http(photos: list[Path], clients: int = 4,
                    start_timeout_s: float = 900) -> Enrolled:
    """Start the service, enrol ``photos`` without person ids, export the vectors."""
    from deployments import local

    # short: Ray's socket paths under it must stay under 108 bytes; $TMPDIR is honoured
    work = Path(tempfile.mkdtemp(prefix="ffc-"))
    port = local.free_port()
    overrides = {"settings": {"data_dir": str(work / "data"),
                              "model_dir": str(REPO / "data" / "models")}}
    config = local.load_config(REPO / "serve_config.yaml", overrides, port)
    local.start(config, num_cpus=2, temp_dir=str(work / "ray"), timeout_s=start_timeout_s)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as api:
            return _enrol(api, photos, clients)
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)  # the store holds face templates


def _enrol(api: httpx.Client, photos: list[Path], clients: int) -> Enrolled:
    face_photo: dict[str, Path] = {}
    no_face: list[str] = []

    def post(photo: Path) -> tuple[Path, httpx.Response]:
        for attempt in range(5):
            r = api.post(f"/v1/collections/{COLLECTION}/faces",
                         files={"img": (photo.name, photo.read_bytes())})
            if r.status_code not in (429, 503):
                return photo, r
            time.sleep(2 ** attempt)
        return photo, r

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for i, (photo, r) in enumerate(pool.map(post, photos), 1):
            if r.status_code in (200, 201):
                face_photo[r.json()["face_id"]] = photo
            elif r.status_code == 422 and r.json().get("code") == "no_face_detected":
                no_face.append(str(photo.relative_to(LFW)))
            else:
                raise RuntimeError(f"{photo}: {r.status_code} {r.text[:300]}")
            if i % 250 == 0:
                log.info("enrolled %d / %d (%.1f photos/s)", i, len(photos),
                         i / (time.perf_counter() - t0))
    embed_s = time.perf_counter() - t0
    rows, people, names, model = [], [], [], ""
    with api.stream("GET", f"/v1/collections/{COLLECTION}/export") as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            face = json.loads(line)
            photo = face_photo[face["id"]]
            rows.append(face["embedding"])
            people.append(photo.parent.name)
            names.append(str(photo.relative_to(LFW)))
            model = face["model"]
    if len(rows) != len(face_photo):
        raise RuntimeError(f"export has {len(rows)} faces, {len(face_photo)} were enrolled")
    return Enrolled(np.asarray(rows, dtype=np.float32), people, names, model, no_face, embed_s)


def lfw_vectors(cache: Path | None, limit: int | None = None, clients: int = 4) -> Enrolled:
    """The enrolled LFW vectors, from ``cache`` when it exists (then written to it)."""
    if cache is not None and cache.exists():
        log.info("vectors from %s", cache)
        return Enrolled.load(cache)
    enrolled = enrol_over_http(lfw_photos(limit), clients)
    if cache is not None:
        enrolled.save(cache)
    return enrolled
