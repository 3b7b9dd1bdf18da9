"""Erasure you can show: after a forget and a drop, a real face's template is in no
file of the store, the trail names the person by a keyed hash, and the registers'
idempotency rows are gone.

A real photo is embedded by MobileFaceNet and enrolled through the gallery; the
files of the store (SQLite's main file, its WAL and shared memory; PostgreSQL's
data directory after VACUUM) are then scanned byte for byte for the stored
float32 template, whole and in 64-byte pieces. The same scan before the forget
must find the template (so a scan that cannot see it proves nothing). Each test
prints bytes searched, files scanned and hits.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from configs.settings import ImageLimits
from bench.evaluate import LFW
from index import erasure
from index.audit import Actor
from index.gallery import InProcessGallery
from index.store import PostgresStore, SqliteStore

MODELS = Path("data/models")
PIECE = 64


@pytest.fixture(scope="module")
def template() -> np.ndarray:
    """A MobileFaceNet embedding of a real LFW photo."""
    from pipelines.embed_mobilefacenet import CHIP, MobileFaceNetEmbedder
    from pipelines.models import ModelContext
    from pipelines.stages import DetectionStage, DetectRequest

    photo = sorted((LFW / "images" / "Colin_Powell").glob("*.jpg"))[0]
    det = DetectionStage(ModelContext(models_dir=MODELS), ImageLimits())
    res = det.run([DetectRequest(photo.read_bytes(), "blazeface", chip_specs=(CHIP,))])
    emb = MobileFaceNetEmbedder(ModelContext(models_dir=MODELS))
    emb.load()
    return emb.embed(res[0].chips[CHIP.key][:1])[0]


def needles(blob: bytes) -> list[bytes]:
    """The template whole and in pieces (a piece would survive a torn copy)."""
    return [blob] + [blob[i:i + PIECE] for i in range(0, len(blob) - PIECE + 1, PIECE)]


def scan(files: list[Path], blob: bytes) -> tuple[int, int, int]:
    """(bytes searched, files scanned, hits of any needle)."""
    searched = hits = 0
    for f in files:
        data = f.read_bytes()
        searched += len(data)
        hits += sum(data.count(n) for n in needles(blob))
    return searched, len(files), hits


def enrol_and_forget(g: InProcessGallery, vec: np.ndarray) -> tuple[bytes, dict]:
    me = Actor("k1", "req-1")
    out = g.register("people", "mobilefacenet", 192,
                     [{"embedding": vec, "person_id": "colin", "name": "Colin"}],
                     idempotency_key="enrol-colin", create_collection=True, actor=me)
    fid = out["faces"][0]["face_id"]
    g.search("people", "mobilefacenet", vec[None], k=1, actor=Actor("k1", "req-2"))
    stored = g.get_face("people", fid, with_embedding=True)["embedding"]
    blob = np.asarray(stored, dtype="<f4").tobytes()
    assert len(blob) == 192 * 4
    return blob, fid


def test_sqlite_forget_and_drop_leave_no_template_bytes(template, tmp_path):
    data = tmp_path / "data"
    store = SqliteStore(data / "gallery.sqlite3")
    g = InProcessGallery(store, nshards=2)
    try:
        blob, fid = enrol_and_forget(g, template)
        files = sorted(p for p in data.iterdir() if p.is_file())
        before = scan(files, blob)
        assert before[2] > 0, "the scan does not see the enrolled template"

        out = g.delete_person("people", "colin", actor=Actor("k1", "req-3"))
        assert out["deleted_faces"] == [fid]
        er = out["erased"]
        assert er["store"] == {"faces": 1, "persons": 1, "idempotency_keys": 1,
                               "write_ahead_log": "truncated"}
        assert er["shards"] == {"entries": 1}
        # register + identify... identify names faces only; register and the forget
        # itself name the person
        assert er["audit"]["entries_pseudonymised"] == 2
        hidden = erasure.pseudonym(store.erasure_key, "people", "colin")
        entries = [e.as_dict() for e in store.audit_entries(limit=100)]
        assert not any("colin" in str(e) for e in entries), entries
        assert [e.get("person_id") for e in entries if e["action"] in
                ("face.register", "person.forget")] == [hidden, hidden]
        with store._tx(write=False) as cur:
            cur.execute("SELECT COUNT(*) FROM idempotency_keys")
            assert cur.fetchone()[0] == 0

        g.drop_collection("people", actor=Actor("k1", "req-4"))
        files = sorted(p for p in data.iterdir() if p.is_file())
        assert {p.name for p in files} >= {"gallery.sqlite3", "gallery.sqlite3-wal",
                                           erasure.SECRET_FILE}
        searched, nfiles, hits = scan(files, blob)
        print(f"\nsqlite, service running: {searched} bytes searched in {nfiles} files "
              f"({', '.join(p.name for p in files)}), {hits} hits "
              f"(before the forget: {before[2]} hits in {before[0]} bytes)")
        assert hits == 0
        # the data directory is its owner's alone
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        g.close()
        store.close()
    searched, nfiles, hits = scan(sorted(p for p in data.iterdir() if p.is_file()), blob)
    print(f"sqlite, closed: {searched} bytes searched in {nfiles} files, {hits} hits")
    assert hits == 0


def test_face_forget_removes_the_idempotency_row_and_keeps_the_person(template, tmp_path):
    store = SqliteStore(tmp_path / "gallery.sqlite3")
    g = InProcessGallery(store, nshards=1)
    try:
        out = g.register("c", "mobilefacenet", 192, [{"embedding": template,
                                                      "person_id": "p"}],
                         idempotency_key="k", create_collection=True, actor=Actor("a", "r"))
        g.register("c", "mobilefacenet", 192, [{"embedding": -template, "person_id": "p"}],
                   idempotency_key="k2", actor=Actor("a", "r2"))
        g.delete_faces("c", [out["faces"][0]["face_id"]], actor=Actor("a", "r3"))
        with store._tx(write=False) as cur:
            cur.execute("SELECT key FROM idempotency_keys")
            assert [r[0] for r in cur.fetchall()] == ["k2"]
        # the person still has a face: not forgotten, not pseudonymised
        assert [e.person_id for e in store.audit_entries(action="face.register")] == ["p", "p"]
        assert g.replay_register("c", "k", "whatever") is None  # a retry registers anew
    finally:
        g.close()
        store.close()


def test_server_secret_is_private_and_stable(tmp_path):
    a = erasure.server_secret(tmp_path / "d")
    b = erasure.server_secret(tmp_path / "d")
    assert a == b and len(a) == 32
    assert stat.S_IMODE((tmp_path / "d" / erasure.SECRET_FILE).stat().st_mode) == 0o600
    assert erasure.pseudonym(a, "c", "p") != erasure.pseudonym(a, "c2", "p")
    assert erasure.pseudonym(a, "c", "p").startswith(erasure.PSEUDONYM_PREFIX)


@pytest.mark.postgres
def test_postgres_after_vacuum(template, pg_server, pg_url, tmp_path):
    """PostgreSQL: after a forget, a plain VACUUM may leave the template's bytes in the
    free space of its page (reported: here the forgotten row is the last one written
    to a page that keeps another row); VACUUM FULL rewrites the table and leaves no
    copy in the database's files. The WAL still holds it until its segments are
    recycled (and base backups or WAL archives keep it for as long as they are
    kept), which the test reports and docs/security.md says."""
    import psycopg

    store = PostgresStore(pg_url)
    store.erasure_key = erasure.server_secret(tmp_path)
    g = InProcessGallery(store, nshards=1)
    try:
        other = np.random.default_rng(5).normal(size=192).astype(np.float32)
        g.register("people", "mobilefacenet", 192, [{"embedding": other, "person_id": "kept"}],
                   create_collection=True)
        blob, _ = enrol_and_forget(g, template)
        out = g.delete_person("people", "colin", actor=Actor("k1", "req-3"))
        assert out["erased"]["store"]["idempotency_keys"] == 1
        assert "write_ahead_log" not in out["erased"]["store"]
    finally:
        g.close()
        store.close()
    pgdata = pg_server.dir / "pg"

    def scan_db(conn, command: str) -> tuple[int, int, int]:
        conn.execute(command)
        conn.execute("CHECKPOINT")
        dboid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()"
                             ).fetchone()[0]
        return scan(sorted(p for p in (pgdata / "base" / str(dboid)).rglob("*")
                           if p.is_file()), blob)

    with psycopg.connect(pg_url, autocommit=True) as conn:
        plain = scan_db(conn, "VACUUM faces")
        full = scan_db(conn, "VACUUM FULL faces")
        for table in ("persons", "idempotency_keys", "audit_log"):
            conn.execute(f"VACUUM FULL {table}")
    wal = scan(sorted(p for p in (pgdata / "pg_wal").glob("0*") if p.is_file()), blob)
    print(f"\npostgres: after VACUUM {plain[2]} hits, after VACUUM FULL {full[2]} hits "
          f"({full[0]} bytes searched in {full[1]} files of the database); WAL: {wal[0]} "
          f"bytes in {wal[1]} segments, {wal[2]} hits (kept until recycled)")
    assert full[2] == 0
