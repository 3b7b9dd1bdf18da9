"""The gallery on a Ray cluster of three nodes (real raylets on 127.0.0.1, PostgreSQL
store): shard copies on different nodes, SQLite refused, and a worker node SIGKILLed
while clients enrol, forget and search: nothing acknowledged lost, nothing forgotten
back, only typed unavailability in between, the shards rebuilt on the survivors."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from index.local_pg import PgServer, debian_bindir

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
D = 32
#: how long clients keep going after the node is killed: the 30 s recovery bound,
#: plus 10 s in which no failure may happen
WATCH_AFTER_KILL_S = 40


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    bindir = debian_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray import serve

    from deployments import local
    from deployments.local.cluster import LocalCluster

    c = LocalCluster(workers=2, cpus=2)
    try:
        c.connect(namespace="facefleet-cluster-tests")
        serve.start(http_options={"host": "127.0.0.1", "port": local.free_port()})
        yield c
    finally:
        c.shutdown()


def settings(data_dir, **index) -> dict:
    from configs.settings import Settings

    return Settings(data_dir=data_dir, index=index).model_dump(mode="json")


def unit(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sqlite_is_refused_on_a_cluster(cluster, tmp_path):
    from ray import serve

    from deployments.serve.gallery import Gallery

    with pytest.raises(RuntimeError, match="failed"):
        serve.run(Gallery.bind(settings(tmp_path, backend="sqlite")),
                  name="gallery-sqlite", route_prefix=None)
    why = serve.status().applications["gallery-sqlite"].deployments["Gallery"].message
    assert "index.backend sqlite on a Ray cluster of 3 nodes" in why, why
    assert "PostgreSQL" in why and "FACEFLEET_INDEX__DATABASE_URL" in why, why
    serve.delete("gallery-sqlite")


def _outage(exc: BaseException) -> bool:
    """A typed unavailability: the gallery's Unavailable (503), or Ray's word that a
    replica or actor is gone or restarting (which the API maps to 503 too)."""
    from pipelines.errors import Unavailable
    from deployments.http.errors import _is_backend_outage

    cause = getattr(exc, "cause", None)
    return isinstance(cause, Unavailable) or isinstance(exc, Unavailable) \
        or _is_backend_outage(exc)  # type: ignore[arg-type]


def test_node_loss_under_load(cluster, pg, tmp_path):
    import ray
    from ray import serve

    from deployments.serve.gallery import Gallery

    s = settings(tmp_path, backend="postgres", database_url=pg.url(pg.new_database()),
                 shards=3, shard_replicas=2, sync_interval_s=1.0)
    handle = serve.run(Gallery.bind(s), name="gallery-nodes", route_prefix=None)
    handle.create_collection.remote("crew", "dlib", D).result()

    # 1. three shards x two copies: each shard's copies on two different nodes,
    #    and every node holds some shard
    info = handle.shard_info.remote().result()
    by_shard: dict[int, list[str]] = {}
    for copy in info:
        by_shard.setdefault(copy["shard"], []).append(copy["node_id"])
    assert len(by_shard) == 3 and all(len(set(n)) == 2 for n in by_shard.values()), by_shard
    nodes = {n for ns in by_shard.values() for n in ns}
    assert len(nodes) == 3, by_shard

    # 2. load: 4 clients enrol (and forget one face in four), 4 identify
    acked: dict[str, np.ndarray] = {}
    forgotten: set[str] = set()
    unsure: set[str] = set()
    outcomes: Counter[str] = Counter()
    last_failure = [0.0]
    lock = threading.Lock()
    stop = threading.Event()

    def call(fn, *args):
        try:
            out = fn.remote(*args).result(timeout_s=60)
            with lock:
                outcomes["ok"] += 1
            return out
        except TimeoutError:
            kind = "hung"
        except Exception as e:  # noqa: BLE001 - classified below
            kind = "unavailable" if _outage(e) else f"other:{type(e).__name__}:{e}"[:200]
        with lock:
            outcomes[kind] += 1
            last_failure[0] = time.monotonic()
        return None

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = 0
        while not stop.is_set():
            x = unit(4, rng)
            items = [{"embedding": v, "person_id": f"w{seed}-{n}-{j}"} for j, v in enumerate(x)]
            out = call(handle.register, "crew", "dlib", D, items)
            if out is not None:
                with lock:
                    for face, v in zip(out["faces"], x, strict=True):
                        acked[face["face_id"]] = v
                victim = out["faces"][0]["face_id"]
                if n % 4 == 0:
                    done = call(handle.delete_face, "crew", victim) is not None
                    with lock:  # a forget that failed may or may not have committed
                        (forgotten if done else unsure).add(victim)
            n += 1
            time.sleep(0.05)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        while not stop.is_set():
            with lock:
                live = [f for f in acked if f not in forgotten]
            q = acked[live[rng.integers(len(live))]] if live else unit(1, rng)[0]
            call(handle.search, "crew", "dlib", q[None, :], 3)
            time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(6)
        with lock:
            before = dict(outcomes)
        victim_node = cluster.workers[0]
        lost_shards = [c for c in info if c["node_id"] == victim_node.node_id]
        assert lost_shards, "the victim node holds no shard copy"
        killed_at = time.monotonic()
        cluster.kill_worker(victim_node)
        # the load goes on past the time Ray takes to declare the node dead and
        # restart its actors elsewhere; recovery is the last failure after the kill
        time.sleep(WATCH_AFTER_KILL_S)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    recovery = max(last_failure[0] - killed_at, 0.0)
    print(f"\nnode loss: outcomes {dict(outcomes)} (before the kill {before}); "
          f"acknowledged {len(acked)}, forgotten {len(forgotten)}; "
          f"recovered {recovery:.1f} s after the kill")
    assert before.get("ok", 0) > 20 and set(before) == {"ok"}, before
    assert set(outcomes) <= {"ok", "unavailable"}, outcomes
    assert recovery <= 30, recovery

    # 3. nothing acknowledged lost, nothing forgotten back; the lost copies were
    #    recreated on the surviving nodes
    handle.sync_shards.remote().result()
    ids = [f for f in acked if f not in unsure]
    rows = handle.search.remote("crew", "dlib", np.stack([acked[f] for f in ids]), 3).result()
    lost = [f for f, row in zip(ids, rows, strict=True)
            if f not in forgotten and (not row or row[0]["face_id"] != f)]
    back = [f for f, row in zip(ids, rows, strict=True)
            if f in forgotten and f in {h["face_id"] for h in row}]
    assert lost == [] and back == [], (len(lost), len(back))
    report = handle.verify.remote("crew").result()
    assert report["consistent"], report
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    after = handle.shard_info.remote().result()
    assert len(after) == 6 and {c["node_id"] for c in after} <= alive, after

    # 4. the node rejoins: a new shard set uses it
    newcomer = cluster.add_worker()
    s2 = settings(tmp_path, backend="postgres", database_url=s["index"]["database_url"],
                  shards=4, shard_replicas=1)
    h2 = serve.run(Gallery.bind(s2), name="gallery-rejoin", route_prefix=None)
    placed = {c["node_id"] for c in h2.shard_info.remote().result()}
    assert newcomer.node_id in placed, placed
    for h in (handle, h2):
        h.shutdown_shards.remote().result()
    serve.delete("gallery-nodes")
    serve.delete("gallery-rejoin")


def test_a_node_without_the_models_fails_the_start_naming_it(cluster, tmp_path):
    """A model replica on a node whose model_dir lacks the converted models: the
    deployment fails with the node and the missing file named."""
    from ray import serve

    from configs.settings import Settings
    from deployments.serve.models import Embedder

    node = cluster.workers[-1]
    s = Settings(data_dir=tmp_path, model_dir=tmp_path / "no-models").model_dump(mode="json")
    pinned = Embedder.options(ray_actor_options={"num_cpus": 0.1, "resources": {
        cluster.resource(node): 0.01}})
    with pytest.raises(RuntimeError, match="failed"):
        serve.run(pinned.bind(s), name="embedder-no-models", route_prefix=None)
    why = serve.status().applications["embedder-no-models"].deployments["Embedder"].message
    assert f"node id {node.node_id}" in why, why
    assert str(tmp_path / "no-models") in why and "is missing" in why, why
    serve.delete("embedder-no-models")
