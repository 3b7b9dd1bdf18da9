"""Erasure through the running service: a real photo enrolled over HTTP, its person
forgotten and its collection dropped; then no file of the data directory (the
SQLite store, its WAL and shared memory, the server secret) holds the template's
float32 bytes, whole or in 64-byte pieces, while the shard actors and the Gallery
replica still hold their connections. The same scan before the forget finds it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.app.photos import b64

pytestmark = pytest.mark.app
PIECE = 64


def _scan(data_dir: Path, blob: bytes) -> tuple[int, int, int]:
    needles = [blob] + [blob[i:i + PIECE] for i in range(0, len(blob) - PIECE + 1, PIECE)]
    files = sorted(p for p in data_dir.iterdir() if p.is_file())
    searched = hits = 0
    for f in files:
        data = f.read_bytes()
        searched += len(data)
        hits += sum(data.count(n) for n in needles)
    return searched, len(files), hits


def test_forget_and_drop_leave_no_template_bytes_in_the_store(service, api, faces):
    data_dir = Path(service.config["applications"][0]["args"]["settings"]["data_dir"])
    coll = "erasure-live"
    photo = sorted((faces / "lfw-dev/images/Colin_Powell").glob("*.jpg"))[0]
    r = api.post(f"/v1/collections/{coll}/faces", json={"img": b64(photo), "person_id": "colin"},
                 headers={"Idempotency-Key": "erasure-live-1"})
    assert r.status_code == 201, r.text
    line = json.loads(api.get(f"/v1/collections/{coll}/export").text.splitlines()[0])
    blob = np.asarray(line["embedding"], dtype="<f4").tobytes()
    before = _scan(data_dir, blob)
    assert before[2] > 0, "the scan does not see the enrolled template"

    r = api.delete(f"/v1/collections/{coll}/persons/colin")
    assert r.status_code == 200, r.text
    erased = r.json()["erased"]
    assert erased["store"]["faces"] == 1 and erased["store"]["idempotency_keys"] == 1
    assert erased["store"]["write_ahead_log"] == "truncated"
    assert erased["shards"] == {"entries": 1}
    assert api.delete(f"/v1/collections/{coll}").status_code == 200
    searched, nfiles, hits = _scan(data_dir, blob)
    print(f"\nlive service: {searched} bytes searched in {nfiles} files "
          f"({', '.join(sorted(p.name for p in data_dir.iterdir() if p.is_file()))}), "
          f"{hits} hits (before the forget: {before[2]})")
    assert hits == 0
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for p in data_dir.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
