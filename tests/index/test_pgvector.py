"""The pgvector backend on a real PostgreSQL 18 + pgvector: searched in SQL.

A commit is the index update (searchable and forgotten at once, with the
change log still written), HNSW against brute force, one index per
collection and dimension, the recipe-shaped view queried by hand with
``<=>`` on the same HNSW index, the import of an existing recipe table, and
refusals: a database of the other layout, a server without pgvector.
"""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from pipelines.errors import ModelMismatch
from index.errors import StoreUnavailable
from index.gallery import InProcessGallery
from index.store.pgvector import PgvectorStore
from index.recipe_import import import_face_embeddings
from index.store import PostgresStore

pytestmark = pytest.mark.postgres

D = 32


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(rng, people: int, per: int, noise: float, dim: int = D) -> np.ndarray:
    centers = unit(rng.normal(size=(people, dim)))
    return unit(np.repeat(centers, per, axis=0) + noise * rng.normal(size=(people * per, dim)))


def literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in v) + "]"


def explain(url: str, sql: str) -> str:
    with psycopg.connect(url) as conn:
        return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())


@pytest.fixture
def pgv(pgvector_url):
    store = PgvectorStore(pgvector_url, hnsw_m=8, hnsw_ef_construction=32, hnsw_ef_search=40)
    g = InProcessGallery(store)
    yield g, store, pgvector_url
    g.close()
    store.close()


def test_a_commit_is_the_index_update_and_the_change_log_is_kept(pgv):
    g, store, _ = pgv
    x = unit(np.random.default_rng(1).normal(size=(6, D)))
    faces = g.register("c", "dlib", D, [{"embedding": v, "person_id": f"p{i}"}
                                        for i, v in enumerate(x[:4])],
                       create_collection=True)["faces"]
    # committed only, as a writer that dies before any shard update would
    late, plan = g.service.core.register("c", "dlib", D, [{"embedding": x[4]}])
    assert len(plan) == 1 and g.shards == []  # no FAISS shard anywhere
    found = g.search("c", "dlib", x[:5], 1)
    assert [r[0]["face_id"] for r in found] == [f["face_id"] for f in faces + late["faces"]]
    assert all(r[0]["similarity"] == pytest.approx(1.0, abs=1e-5) for r in found)
    gone, _ = g.service.core.delete_faces("c", [faces[0]["face_id"]])  # commit only
    assert gone == [faces[0]["face_id"]]
    assert faces[0]["face_id"] not in {h["face_id"] for h in g.search("c", "dlib", x[0], 10)[0]}
    info = store.get_collection("c")
    assert info.last_seq == 3  # register, register, forget: one change each
    changes = store.changes_since(info.id, 0, 0, 1)
    assert len(changes.ids) == 4 and changes.last_seq == 3
    want = {int(i) for i in store.face_ids_internal(info.id)}
    assert set(changes.ids.tolist()) == want
    # internal ids follow registration order: the faces of x[1:5], read back bit for bit
    np.testing.assert_array_equal(changes.vectors, unit(x[1:5]))
    assert len(store.changes_since(info.id, 2, 0, 1).removed) == 1
    assert g.verify("c")["consistent"] and g.stats("c")["shard_sizes"] == [4]


def test_stored_vectors_round_trip_exactly(pgv):
    g, store, _ = pgv
    raw = np.random.default_rng(2).normal(size=(3, D)).astype(np.float32) * 5
    x = unit(raw)  # what the gallery stores: the normalised vector
    faces = g.register("c", "dlib", D, [{"embedding": v} for v in raw],
                       create_collection=True)["faces"]
    for f, v in zip(faces, x, strict=True):
        np.testing.assert_array_equal(g.get_face("c", f["face_id"], True)["embedding"], v)
    info = store.get_collection("c")
    rebuilt = {}
    for _cid, _dim, ids, vecs in store.iter_shard(0, 1):
        rebuilt.update(zip(ids.tolist(), vecs, strict=True))
    assert len(rebuilt) == 3
    by_id = dict(zip(store.face_ids_internal(info.id).tolist(), x, strict=True))
    for i, v in rebuilt.items():
        np.testing.assert_array_equal(v, by_id[i])


def test_hnsw_against_brute_force_and_live_removals(pgv):
    g, store, url = pgv
    rng = np.random.default_rng(3)
    vecs = clustered(rng, 400, 10, 0.25)  # 4,000 faces of 400 people
    info = store.get_collection(g.create_collection("big", "dlib", D)["collection"])
    store.drop_vector_index(info)  # a bulk load, then one index build (pgvector's fast path)
    out = g.register_bulk("big", "dlib", D, vecs, [f"p{i // 10}" for i in range(len(vecs))])
    ids = np.array(out["face_ids"])
    assert store.build_vector_index(info) > 0
    probes = unit(vecs[rng.choice(len(vecs), 100, replace=False)]
                  + 0.1 * rng.normal(size=(100, D)))
    # the collection's own HNSW index answers (not a scan of the table)
    sql = (f"SELECT id FROM faces f WHERE f.collection_id = {info.id} ORDER BY "
           f"f.embedding::vector({D}) <=> '{literal(probes[0])}' LIMIT 10")
    assert f"Index Scan using faces_hnsw_{info.id}" in explain(url, sql)

    def recall(hits, alive: np.ndarray) -> float:
        sims = probes @ vecs[alive].T
        got = []
        for q, row in enumerate(hits):
            kth = np.sort(sims[q])[-10]
            want = set(ids[alive][sims[q] >= kth - 1e-6])
            got.append(len({h["face_id"] for h in row} & want) / 10)
        return float(np.mean(got))

    alive = np.ones(len(vecs), bool)
    hits = g.search("big", "dlib", probes, 10)
    assert all(len(r) == 10 for r in hits)
    assert recall(hits, alive) >= 0.9
    # live removals, the current best hits included: never returned, and still k results
    top = {r[0]["face_id"] for r in hits}
    victims = sorted(top | set(rng.choice(ids, 400, replace=False)))
    assert len(g.delete_faces("big", victims)) == len(victims)
    alive &= ~np.isin(ids, victims)
    hits = g.search("big", "dlib", probes, 10)
    assert not {h["face_id"] for r in hits for h in r} & set(victims)
    assert all(len(r) == 10 for r in hits)
    assert recall(hits, alive) >= 0.9
    # a larger ef_search is closer to exact
    wide = InProcessGallery(store, ef_search=400)
    assert recall(wide.search("big", "dlib", probes, 10), alive) >= recall(hits, alive) - 1e-9
    wide.close()
    # top_k above ef_search still gets top_k results
    assert len(g.search("big", "dlib", probes[0], 200)[0]) == 200


def test_each_collection_has_an_index_of_its_own_dimension(pgv):
    g, store, url = pgv
    rng = np.random.default_rng(4)
    a = unit(rng.normal(size=(20, 16)))
    b = unit(rng.normal(size=(20, 48)))
    fa = g.register_bulk("small", "m16", 16, a, None, True)["face_ids"]
    fb = g.register_bulk("wide", "m48", 48, b, None, True)["face_ids"]
    assert [h[0]["face_id"] for h in g.search("small", "m16", a, 1)] == fa
    assert [h[0]["face_id"] for h in g.search("wide", "m48", b, 1)] == fb
    with pytest.raises(ModelMismatch):
        g.register("wide", "m48", 16, [{"embedding": a[0]}])
    indexes = {r["view"]: r for r in store.index_info()}
    assert set(indexes) == {"face_embeddings_small", "face_embeddings_wide"}
    assert all(r["m"] == 8 and r["ef_construction"] == 32 for r in indexes.values())
    with psycopg.connect(url) as conn:
        defs = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                 "WHERE indexname LIKE 'faces_hnsw_%'").fetchall())
    assert len(defs) == 2
    assert any("vector(16)" in d and "vector_cosine_ops" in d for d in defs.values())
    assert any("vector(48)" in d for d in defs.values())
    g.drop_collection("small")
    with psycopg.connect(url) as conn:
        left = [r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'faces_hnsw_%'")]
        assert conn.execute("SELECT to_regclass('face_embeddings_small')").fetchone()[0] is None
    assert left == [indexes["face_embeddings_wide"]["index"]]
    assert [h[0]["face_id"] for h in g.search("wide", "m48", b, 1)] == fb


def test_the_recipe_view_answers_nearest_faces_by_hand(pgv):
    g, store, url = pgv
    rng = np.random.default_rng(5)
    vecs = clustered(rng, 300, 10, 0.25)
    people = [f"p{i // 10}" for i in range(len(vecs))]
    store.drop_vector_index(store.get_collection(
        g.create_collection("staff", "dlib", D)["collection"]))
    g.register("staff", "dlib", D, [
        {"embedding": v, "person_id": p, "name": f"Name {p}", "labels": {"team": "red"}}
        for v, p in zip(vecs, people, strict=True)])
    assert g.stats("staff")["sql_view"] == "face_embeddings_staff"
    store.build_vector_index(store.get_collection("staff"))  # with fresh statistics
    probe = unit(vecs[17] + 0.05 * rng.normal(size=D))
    ours = g.search("staff", "dlib", probe, 5)[0]
    sql = ("SELECT id, person_id, label, metadata, created_at, embedding <=> %(q)s AS distance "
           "FROM face_embeddings_staff ORDER BY embedding <=> %(q)s LIMIT 5")
    with psycopg.connect(url) as conn:
        cols = {r[0]: r[1] for r in conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_name = 'face_embeddings_staff'")}
        conn.execute("SET hnsw.ef_search = 40")
        rows = conn.execute(sql, {"q": literal(probe)}).fetchall()
        dim = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                           "attrelid = 'face_embeddings_staff'::regclass AND "
                           "attname = 'embedding'").fetchone()[0]
    assert cols == {"id": "uuid", "person_id": "text", "label": "text", "embedding": "vector",
                    "metadata": "jsonb", "created_at": "timestamptz"}
    assert dim == f"vector({D})"
    assert [r[0].hex for r in rows] == [h["face_id"] for h in ours]
    assert [r[1] for r in rows] == [h["person_id"] for h in ours]
    assert rows[0][2] == ours[0]["name"] and rows[0][3] == {"team": "red"}
    np.testing.assert_allclose([r[5] for r in rows], [h["distance"] for h in ours], atol=1e-5)
    # by hand, through the view, the query walks the collection's HNSW index
    plan = explain(url, sql.replace("%(q)s", f"'{literal(probe)}'"))
    assert "Index Scan using faces_hnsw_" in plan


def test_import_of_an_existing_face_embeddings_table(pgv):
    g, store, url = pgv
    rng = np.random.default_rng(6)
    vecs = clustered(rng, 50, 4, 0.25)
    uuids = [uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | i) for i in range(len(vecs))]
    with psycopg.connect(url) as conn:  # the recipe's table, made and filled by hand
        conn.execute(f"""CREATE TABLE face_embeddings (
            id uuid PRIMARY KEY, person_id text, label text, embedding vector({D}),
            metadata jsonb DEFAULT '{{}}', created_at timestamptz DEFAULT now())""")
        conn.execute("CREATE INDEX ON face_embeddings USING hnsw (embedding vector_cosine_ops)")
        with conn.cursor().copy("COPY face_embeddings (id, person_id, label, embedding, metadata)"
                                " FROM STDIN") as copy:
            for i, (u, v) in enumerate(zip(uuids, vecs, strict=True)):
                meta = '{"site": "hq", "floor": 3}' if i % 4 == 0 else "{}"
                copy.write_row((u, f"emp{i // 4}", f"Employee {i // 4}", literal(v * 2), meta))
        conn.execute("INSERT INTO face_embeddings (id, person_id, label, embedding) VALUES "
                     f"(gen_random_uuid(), 'bad person', 'x', '{literal(vecs[0])}')")
    out = import_face_embeddings(g, url, "face_embeddings", "staff", "dlib", chunk=64)
    assert out["imported"] == len(vecs) and out["skipped"] == 0
    assert len(out["rejected"]) == 1 and "person_id" in out["rejected"][0]["error"]
    info = store.get_collection("staff")
    assert (info.model, info.dim) == ("dlib", D)
    hits = g.search("staff", "dlib", vecs[:20], 1)
    assert [r[0]["face_id"] for r in hits] == [u.hex for u in uuids[:20]]
    assert hits[0][0]["person_id"] == "emp0" and hits[0][0]["name"] == "Employee 0"
    assert hits[0][0]["labels"] == {"site": "hq", "floor": "3"}
    again = import_face_embeddings(g, url, "face_embeddings", "staff", "dlib")
    assert again["imported"] == 0 and again["skipped"] == len(vecs)
    assert g.stats("staff")["faces"] == len(vecs)
    with psycopg.connect(url) as conn:  # the imported faces read back in the recipe's shape
        ids = {r[0] for r in conn.execute("SELECT id FROM face_embeddings_staff")}
    assert ids == set(uuids)


def test_the_other_layout_and_a_server_without_pgvector_are_refused(pgvector_server, pg_url):
    bytea_db = pgvector_server.url(pgvector_server.new_database())
    PostgresStore(bytea_db).close()  # the postgres backend's layout on the pgvector server
    with pytest.raises(StoreUnavailable, match="postgres backend's layout"):
        PgvectorStore(bytea_db)
    vector_db = pgvector_server.url(pgvector_server.new_database())
    PgvectorStore(vector_db).close()
    with pytest.raises(StoreUnavailable, match="pgvector backend's layout"):
        PostgresStore(vector_db)
    with pytest.raises(StoreUnavailable, match="pgvector"):
        PgvectorStore(pg_url)  # Debian's server: no vector.so
