"""Templates sealed at rest in the SQL stores: every path that writes or reads a template
(register, import, idempotent replay, face read, export, shard rebuild and catch-up) goes
through the collection's data key; a plain collection stays readable; dropping a
collection shreds its key; rotation re-wraps; the wrong key is named, not guessed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from index.errors import StoreUnavailable
from index.gallery import InProcessGallery
from index.sealing import OVERHEAD, LocalMasterKey, SealingError
from index.store import open_store
from index.store.factory import master_keys
from tests.index.vectors import unit

DIM = 128
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def key_file(path: Path) -> str:
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    return str(path)


def stored_blobs(store, collection: str) -> list[bytes]:
    with store._tx(write=False) as cur:
        cur.execute(store._q("SELECT f.embedding FROM faces f JOIN collections c ON "
                             "c.id = f.collection_id WHERE c.name = ? ORDER BY f.id"),
                    (collection,))
        return [bytes(r[0]) for r in cur.fetchall()]


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path):
    """``open(key_files...)``: the same fresh store of one backend, opened with those
    master keys (the first is the current one)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened = []

    def open_(current: str | None = None, previous: str | None = None):
        store = open_store(request.param, url, tmp_path / "data",
                           encryption={"master_key_file": current, "master_key_env": None,
                                       "previous_master_key_file": previous})
        opened.append(store)
        return store

    yield open_
    for s in opened:
        s.close()


def test_every_template_path_goes_through_the_data_key(opener, tmp_path):
    key = key_file(tmp_path / "master.key")
    store = opener(key)
    x = unit(40, seed=3, dim=DIM)
    g = InProcessGallery(store, nshards=2)
    try:
        items = [{"embedding": v, "person_id": f"p{i}"} for i, v in enumerate(x[:30])]
        out = g.register("c", "dlib", DIM, items, idempotency_key="k1", create_collection=True)
        again = g.register("c", "dlib", DIM, items, idempotency_key="k1")  # replay re-reads
        assert again["faces"] == out["faces"]
        rows = [{"id": f"{i:032x}", "person_id": f"q{i}", "model": "dlib",
                 "embedding": v.tolist()} for i, v in enumerate(x[30:])]
        assert len(g.import_faces("c", "dlib", DIM, rows)["imported"]) == 10
        hits = g.search("c", "dlib", x, k=1)
        assert [h[0]["distance"] for h in hits] == pytest.approx([0.0] * 40, abs=1e-5)
        fid = out["faces"][0]["face_id"]
        np.testing.assert_allclose(g.get_face("c", fid, with_embedding=True)["embedding"],
                                   x[0], atol=1e-7)
        page = g.export_page("c", limit=100)
        np.testing.assert_allclose(np.array([f["embedding"] for f in page["faces"]]), x,
                                   atol=1e-7)
    finally:
        g.close()
    blobs = stored_blobs(store, "c")
    assert len(blobs) == 40 and all(len(b) == DIM * 4 + OVERHEAD for b in blobs)
    plain = {v.tobytes() for v in x}
    assert not plain & set(blobs)
    # a fresh gallery rebuilds its shards from the sealed rows
    g2 = InProcessGallery(opener(key), nshards=2)
    try:
        hits = g2.search("c", "dlib", x, k=1)
        assert [h[0]["distance"] for h in hits] == pytest.approx([0.0] * 40, abs=1e-5)
    finally:
        g2.close()


def test_sqlite_file_holds_no_plain_template(tmp_path):
    key = key_file(tmp_path / "master.key")
    data = tmp_path / "data"
    store = open_store("sqlite", None, data, encryption={"master_key_file": key})
    x = unit(20, seed=4, dim=DIM)
    g = InProcessGallery(store, nshards=1)
    try:
        g.register("c", "dlib", DIM, [{"embedding": v} for v in x], create_collection=True)
    finally:
        g.close()
        store.close()
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    # not the whole template, nor any 32-byte piece of it
    assert not any(v.tobytes()[i:i + 32] in raw for v in x for i in range(0, DIM * 4, 32))


def test_a_plain_collection_stays_readable_when_a_key_arrives(opener, tmp_path):
    x = unit(6, seed=5, dim=DIM)
    before = opener(None)
    g = InProcessGallery(before, nshards=1)
    g.register("old", "dlib", DIM, [{"embedding": v} for v in x[:3]], create_collection=True)
    g.close()
    key = key_file(tmp_path / "master.key")
    store = opener(key)
    g = InProcessGallery(store, nshards=1)
    try:
        g.register("new", "dlib", DIM, [{"embedding": v} for v in x[3:]],
                   create_collection=True)
        old = stored_blobs(store, "old")  # plain float32, as the gallery normalised them
        np.testing.assert_allclose(np.frombuffer(b"".join(old), "<f4").reshape(3, DIM), x[:3],
                                   atol=1e-6)
        assert all(len(b) == DIM * 4 + OVERHEAD for b in stored_blobs(store, "new"))
        for name, part in (("old", x[:3]), ("new", x[3:])):
            hits = g.search(name, "dlib", part, k=1)
            assert [h[0]["distance"] for h in hits] == pytest.approx([0.0] * 3, abs=1e-5)
    finally:
        g.close()


def test_drop_shreds_the_key_and_the_wrong_key_is_named(opener, tmp_path):
    key = key_file(tmp_path / "master.key")
    store = opener(key)
    g = InProcessGallery(store, nshards=1)
    try:
        g.register("c", "dlib", DIM, [{"embedding": v} for v in unit(3, 6, DIM)],
                   create_collection=True)
        with store._tx(write=False) as cur:
            cur.execute("SELECT id, data_key FROM collections WHERE name = 'c'")
            cid, wrapped = cur.fetchone()
        assert wrapped is not None and len(bytes(wrapped)) == 12 + 32 + 16
        # another master key cannot open the collection, and says which key it needs
        other = opener(key_file(tmp_path / "other.key"))
        kid = LocalMasterKey.from_file(key).key_id
        with pytest.raises(SealingError, match=kid):
            other.list_faces(cid, with_embedding=True)
        g.drop_collection("c")
        with store._tx(write=False) as cur:
            cur.execute("SELECT COUNT(*) FROM collections WHERE data_key IS NOT NULL")
            assert cur.fetchone()[0] == 0
    finally:
        g.close()


def test_rotation_rewraps_every_key(opener, tmp_path):
    old, new = key_file(tmp_path / "old.key"), key_file(tmp_path / "new.key")
    store = opener(old)
    x = unit(4, seed=7, dim=DIM)
    g = InProcessGallery(store, nshards=1)
    for name in ("a", "b"):
        g.register(name, "dlib", DIM, [{"embedding": v} for v in x], create_collection=True)
    g.close()
    blobs = stored_blobs(store, "a")
    counts = opener(old).rewrap_keys(LocalMasterKey.from_file(new))
    assert counts == {"rewrapped": 2, "current": 0, "plain": 0}
    assert stored_blobs(store, "a") == blobs  # no template rewritten
    g = InProcessGallery(opener(new), nshards=1)
    try:
        hits = g.search("b", "dlib", x, k=1)
        assert [h[0]["distance"] for h in hits] == pytest.approx([0.0] * 4, abs=1e-5)
    finally:
        g.close()
    with pytest.raises(SealingError, match="not configured"):
        InProcessGallery(opener(old), nshards=1)


def test_pgvector_refuses_to_seal(tmp_path):
    with pytest.raises(StoreUnavailable, match="disk"):
        open_store("pgvector", "postgresql://127.0.0.1:1/none", tmp_path,
                   encryption={"master_key_file": key_file(tmp_path / "k")})
    with pytest.raises(SealingError, match="without a current master key"):
        master_keys(None, None, key_file(tmp_path / "p"))


def test_rotate_command(tmp_path):
    old, new = key_file(tmp_path / "old.key"), key_file(tmp_path / "new.key")
    data = tmp_path / "data"
    store = open_store("sqlite", None, data, encryption={"master_key_file": old})
    g = InProcessGallery(store, nshards=1)
    g.register("c", "dlib", DIM, [{"embedding": v} for v in unit(2, 8, DIM)],
               create_collection=True)
    g.close()
    store.close()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"args": {"settings": {
        "data_dir": str(data), "encryption": {"master_key_file": old}}}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
    run = subprocess.run([sys.executable, "-m", "index.rotate_master_key", "--config",
                          str(config), "--new-key-file", new], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["rewrapped"] == 1 and out["master_key_id"] == LocalMasterKey.from_file(new).key_id
    bad = subprocess.run([sys.executable, "-m", "index.rotate_master_key", "--config",
                          str(config), "--new-key-file", str(tmp_path / "missing.key")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "cannot read the master key file" in bad.stderr
