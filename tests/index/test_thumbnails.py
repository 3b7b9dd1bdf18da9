"""Face thumbnails in the store: kept with the face that has one (when the collection
keeps them), deleted with it in the same transaction, carried by export and import,
never in audit entries; on each backend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipelines.errors import NotFound, ValidationError
from index.audit import Actor
from index.gallery import InProcessGallery
from tests.index.vectors import D, unit


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _count(store) -> int:
    with store._tx(write=False) as cur:
        cur.execute("SELECT COUNT(*) FROM face_thumbnails")
        return int(cur.fetchone()[0])


def test_thumbnail_lifecycle(store, fresh_store):
    g = InProcessGallery(store, 2)
    try:
        x = unit(4, seed=11)
        thumbs = [_jpeg(i) for i in range(3)]
        faces = g.register("c", "m", D, [
            {"embedding": x[0], "person_id": "a", "thumbnail": thumbs[0]},
            {"embedding": x[1], "person_id": "a", "thumbnail": thumbs[1]},
            {"embedding": x[2], "person_id": "b", "thumbnail": thumbs[2]},
            {"embedding": x[3], "person_id": "c"}],  # enrolled by embedding: none
            create_collection=True, actor=Actor("k", "r1"))["faces"]
        ids = [f["face_id"] for f in faces]
        assert [g.thumbnail("c", i) for i in ids[:3]] == thumbs
        with pytest.raises(NotFound):
            g.thumbnail("c", ids[3])
        with pytest.raises(NotFound):
            g.thumbnail("c", "0" * 32)
        # never in an audit entry
        for e in g.audit_entries("c"):
            assert "thumbnail" not in json.dumps(e, default=str)
        # export carries them; an import elsewhere keeps them
        page = g.export_page("c")["faces"]
        assert [f["thumbnail"] for f in page] == [*thumbs, None]
        other = InProcessGallery(fresh_store("sqlite"), 1)
        try:
            other.import_faces("c", "m", D, page, create_collection=True)
            assert [other.thumbnail("c", i) for i in ids[:3]] == thumbs
        finally:
            other.close()
        # deleted with the face, and with the person, in the same transaction
        g.delete_face("c", ids[0])
        assert _count(store) == 2
        g.delete_person("c", "b")
        assert _count(store) == 1
        with pytest.raises(NotFound):
            g.thumbnail("c", ids[2])
        # a bad thumbnail is refused, nothing enrolled
        with pytest.raises(ValidationError):
            g.register("c", "m", D, [{"embedding": x[0], "thumbnail": b"not a jpeg"}])
        # turned off: none kept, and the kept ones deleted
        assert g.service.core.update_collection("c", {"thumbnails": False})["thumbnails"] is False
        assert _count(store) == 0
        g.service._infos.clear()
        new = g.register("c", "m", D, [{"embedding": x[0], "thumbnail": thumbs[0]}])["faces"]
        with pytest.raises(NotFound):
            g.thumbnail("c", new[0]["face_id"])
        assert _count(store) == 0
        g.drop_collection("c")
    finally:
        g.close()


def test_thumbnails_are_sealed_with_the_templates(tmp_path):
    """With a master key a thumbnail is stored sealed under its collection's data key
    (its row's ciphertext is not the JPEG), and read back, exported and copied whole."""
    import base64
    import os

    from index.store import open_store

    key = tmp_path / "master.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    store = open_store("sqlite", None, tmp_path / "data", encryption={
        "master_key_file": str(key), "master_key_env": None, "previous_master_key_file": None})
    g = InProcessGallery(store, 1)
    try:
        jpeg = _jpeg(5)
        face = g.register("c", "m", D, [{"embedding": unit(1, 3)[0], "thumbnail": jpeg}],
                          create_collection=True)["faces"][0]
        with store._tx(write=False) as cur:
            cur.execute("SELECT jpeg FROM face_thumbnails")
            stored = bytes(cur.fetchone()[0])
        assert stored != jpeg and jpeg not in stored
        assert g.thumbnail("c", face["face_id"]) == jpeg
        page = g.export_page("c")["faces"]
        assert page[0]["thumbnail"] == jpeg
        copy = g.import_faces("c2", "m", D, page, create_collection=True, copy=True)
        assert g.thumbnail("c2", copy["copied"][face["face_id"]]) == jpeg
    finally:
        g.close()
