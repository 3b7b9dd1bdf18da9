"""The gallery as a Serve deployment on a local Ray: with shard actors, a shard
that crashes restarts with every acknowledged face and without forgotten ones;
on every backend (pgvector: no shard actors, searched in SQL), a replica killed
after a commit loses nothing and two replicas stay consistent."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
D = 32


@pytest.fixture(scope="module")
def serve_instance():
    import ray
    from ray import serve

    from deployments import local

    temp = local.init_ray(num_cpus=2, object_store_mb=300, namespace="facefleet-tests")
    serve.start(http_options={"host": "127.0.0.1", "port": local.free_port()})
    try:
        yield serve
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def settings(data_dir: Path, **index) -> dict:
    from configs.settings import Settings

    return Settings(data_dir=data_dir, index=index).model_dump(mode="json")


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shard_crash_restart_keeps_acknowledged_and_forgotten(serve_instance, tmp_path):
    import ray

    from deployments.serve.gallery import NAMESPACE, Gallery

    serve = serve_instance
    handle = serve.run(Gallery.bind(settings(tmp_path, shards=2)),
                       name="gallery-crash", route_prefix=None)
    handle.create_collection.remote("crew", "dlib", D).result()

    x = unit(80, seed=1)
    acked: dict[str, np.ndarray] = {}

    def register(i: int) -> None:
        items = [{"embedding": x[j], "person_id": f"p{j % 8}"} for j in range(i, i + 10)]
        out = handle.register.remote("crew", "dlib", D, items).result()
        for j, face in zip(range(i, i + 10), out["faces"], strict=True):
            acked[face["face_id"]] = x[j]

    with ThreadPoolExecutor(4) as pool:  # several concurrent clients
        list(pool.map(register, range(0, 60, 10)))
    assert len(acked) == 60

    person = handle.get_person.remote("crew", "p3").result()
    gone = {f["face_id"] for f in person["faces"]}
    handle.delete_person.remote("crew", "p3").result()
    single = next(f for f in acked if f not in gone)
    handle.delete_face.remote("crew", single).result()
    gone.add(single)
    assert handle.stats.remote("crew").result()["faces"] == 60 - len(gone)

    before = handle.shard_info.remote().result()
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith("gallery-")]
    assert len(names) == 2
    victim = ray.get_actor(sorted(names)[0], namespace=NAMESPACE)
    ray.kill(victim, no_restart=False)  # a crash: Ray restarts it, it rebuilds from the store

    # writes and reads issued during the restart are retried on the new actor
    register(60)
    after = handle.shard_info.remote().result()
    assert after[0]["pid"] != before[0]["pid"] and after[1]["pid"] == before[1]["pid"]

    ids = list(acked)
    hits = handle.search.remote("crew", "dlib", np.stack([acked[f] for f in ids]), 3).result()
    for face_id, row in zip(ids, hits, strict=True):
        found = [h["face_id"] for h in row]
        if face_id in gone:
            assert face_id not in found
        else:
            assert found[0] == face_id and row[0]["similarity"] > 0.999
    report = handle.verify.remote("crew").result()
    assert report["consistent"] and report["store"] == 70 - len(gone)
    stats = handle.stats.remote("crew").result()
    assert sum(stats["shard_sizes"]) == stats["faces"] == 70 - len(gone)

    handle.shutdown_shards.remote().result()
    serve.delete("gallery-crash")
    time.sleep(0.5)


def test_concurrent_identify_is_batched_and_exact(serve_instance, tmp_path):
    from deployments.serve.gallery import Gallery

    serve = serve_instance
    handle = serve.run(Gallery.bind(settings(tmp_path, shards=3, search_batch_wait_s=0.01)),
                       name="gallery-batch", route_prefix=None)
    x = unit(300, seed=2)
    out = handle.register_bulk.remote("g", "dlib", D, x, None, True).result()
    face_ids = out["face_ids"]
    # many single-vector identifies in flight at once, merged per shard
    responses = [handle.search.remote("g", "dlib", x[i], 5) for i in range(0, 300, 5)]
    ref = x @ x.T
    for i, resp in zip(range(0, 300, 5), responses, strict=True):
        row = resp.result()[0]
        want = np.argsort(-ref[i])[:5]
        assert [h["face_id"] for h in row] == [face_ids[j] for j in want]
    handle.shutdown_shards.remote().result()
    serve.delete("gallery-batch")


def _store_url(backend: str, request) -> str | None:
    fixture = {"postgres": "pg_url", "pgvector": "pgvector_url"}.get(backend)
    return request.getfixturevalue(fixture) if fixture else None


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("pgvector", marks=pytest.mark.postgres)]


def _until(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_of_a_replica_killed_after_commit_reach_the_index(serve_instance, tmp_path,
                                                                 backend, request):
    """The Gallery replica dies between the store commit and the shard update; the
    committed face becomes searchable and the committed forget takes effect anyway,
    within the shards' catch-up period."""
    import ray

    from deployments.serve.gallery import Gallery

    serve = serve_instance
    cfg = settings(tmp_path, shards=2, sync_interval_s=0.5, backend=backend,
                   database_url=_store_url(backend, request))
    handle = serve.run(Gallery.bind(cfg), name=f"gallery-fault-{backend}", route_prefix=None)
    x = unit(3, seed=7)
    kept = handle.register.remote("f", "dlib", D, [{"embedding": x[0]}, {"embedding": x[1]}],
                                  None, True).result()["faces"]

    def found(vec) -> str | None:
        row = handle.search.remote("f", "dlib", vec, 1).result()[0]
        return row[0]["face_id"] if row and row[0]["similarity"] > 0.999 else None

    def in_index() -> set:
        return set(handle.verify.remote("f").result()["missing_in_index"])

    handle.inject_fault.remote("exit_after_commit").result()
    with pytest.raises(ray.exceptions.RayActorError):
        handle.register.remote("f", "dlib", D, [{"embedding": x[2], "person_id": "late"}]
                               ).result()
    # the replica restarts; the face it committed is found without any client retry
    assert _until(lambda: found(x[2]) is not None)
    person = handle.get_person.remote("f", "late").result()
    assert found(x[2]) == person["faces"][0]["face_id"]

    handle.inject_fault.remote("exit_after_commit").result()
    with pytest.raises(ray.exceptions.RayActorError):
        handle.delete_face.remote("f", kept[0]["face_id"]).result()
    assert _until(lambda: handle.verify.remote("f").result()["consistent"])
    assert found(x[0]) is None and found(x[1]) == kept[1]["face_id"]
    report = handle.verify.remote("f").result()
    assert report["store"] == report["index"] == 2 and not in_index()
    if backend == "pgvector":  # the database is the index: no shard actor was started
        from deployments.serve.gallery import NAMESPACE

        assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == NAMESPACE and a["name"].startswith("gallery-")]
        assert handle.stats.remote("f").result()["index_type"] == "pgvector-hnsw"
    handle.shutdown_shards.remote().result()
    serve.delete(f"gallery-fault-{backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gallery_replicas_over_the_same_shards_stay_consistent(serve_instance, tmp_path,
                                                                   backend, request):
    import random

    from deployments.serve.gallery import Gallery

    serve = serve_instance
    cfg = settings(tmp_path, shards=3, backend=backend, database_url=_store_url(backend, request))
    handle = serve.run(Gallery.options(num_replicas=2).bind(cfg),
                       name=f"gallery-two-{backend}", route_prefix=None)
    handle.create_collection.remote("two", "dlib", D).result()
    app = serve.status().applications[f"gallery-two-{backend}"]
    assert app.deployments["Gallery"].replica_states.get("RUNNING") == 2
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        rng = np.random.default_rng(seed)
        mine: list[str] = []
        try:
            for _ in range(30):
                op = rnd.random()
                if op < 0.5:
                    items = [{"embedding": rng.normal(size=D), "person_id": f"p{rnd.randrange(5)}"}
                             for _ in range(rnd.randrange(1, 4))]
                    out = handle.register.remote("two", "dlib", D, items).result()
                    mine += [f["face_id"] for f in out["faces"]]
                elif op < 0.75 and mine:
                    handle.delete_faces.remote("two", [mine.pop(rnd.randrange(len(mine)))]
                                               ).result()
                else:
                    for row in handle.search.remote("two", "dlib", rng.normal(size=(2, D)), 5
                                                    ).result():
                        assert all(h["face_id"] for h in row)
        except BaseException as e:  # surfaced below
            errors.append(e)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(client, range(6)))
    assert not errors, errors
    report = handle.verify.remote("two").result()
    assert report["consistent"] and report["store"] > 0, report
    stats = handle.stats.remote("two").result()
    assert sum(stats["shard_sizes"]) == stats["faces"] == report["store"]
    handle.shutdown_shards.remote().result()
    serve.delete(f"gallery-two-{backend}")
