"""The gallery as a Serve deployment with shard actors on a local Ray: a shard
that crashes restarts with every acknowledged face and without forgotten ones."""

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

    from deployments.gallery import NAMESPACE, Gallery

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
    from deployments.gallery import Gallery

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
