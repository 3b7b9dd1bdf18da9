"""A worker node lost under load, measured from outside over HTTP.

    .venv/bin/python -m bench.node_loss [--before-s 15] [--after-s 45]

Starts a Ray cluster of three nodes on this machine (``deployments.local.cluster``:
a head and two workers, real raylets on 127.0.0.1), a PostgreSQL server for the
gallery (SQLite is refused on a cluster), and the app from ``serve_config.yaml``
with 3 shards x 2 copies and ``--replicas`` (2) replicas of the Ingress, Detector,
Embedder and Gallery, as a cluster runs them. Then 4 clients enrol LFW photos (each a person of its
own) and forget one enrolment in four, and 4 clients identify photos enrolled
earlier, all over HTTP. After ``--before-s`` seconds one worker node is SIGKILLed
(the one holding the most replicas and shard copies: its raylet and every process
on it); the clients go on for ``--after-s`` more.

Afterwards every acknowledged face is looked up (GET) and a sample identified,
and every acknowledged forget is looked up and identified. Printed and written to
``bench/results/node_loss.md``: requests by outcome, faces acknowledged / lost /
resurrected, seconds from the kill to the last failed request, and where the
shard copies were before and after. Exits non-zero when a target is missed:
nothing lost or resurrected, no failure but a typed 503, recovery within 30 s.
Then the node rejoins.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

from deployments import local  # noqa: E402
from deployments.local.cluster import LocalCluster  # noqa: E402
from index.local_pg import PgServer, debian_bindir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"
RESULTS = REPO / "bench" / "results" / "node_loss.md"
RECOVERY_TARGET_S = 30.0
COLLECTION = "nodeloss"


class Load:
    """The clients' shared record: what was acknowledged, and every outcome in time."""

    def __init__(self, base_url: str, photos: list[Path]) -> None:
        self.base = base_url
        self.photos = photos
        self.next = 0
        self.lock = threading.Lock()
        self.kept: dict[str, Path] = {}       # face id -> photo, never forgotten
        self.forgotten: dict[str, Path] = {}  # acknowledged forgets
        self.unsure: set[str] = set()         # a forget that failed: done or not
        self.outcomes: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def photo(self) -> Path:
        with self.lock:
            p = self.photos[self.next % len(self.photos)]
            self.next += 1
            return p

    def record(self, kind: str) -> None:
        with self.lock:
            self.outcomes[kind] += 1
            if kind != "ok":
                self.failures.append((time.monotonic(), kind))

    def send(self, client: httpx.Client, method: str, path: str, **kw) -> httpx.Response | None:
        try:
            r = client.request(method, path, **kw)
        except httpx.TimeoutException:
            self.record("hung")
            return None
        except httpx.HTTPError as e:
            self.record(f"connection: {type(e).__name__}: {e}"[:120])
            return None
        if r.status_code >= 500:
            code = _code(r)
            self.record("503 unavailable" if r.status_code == 503 and code == "unavailable"
                        else f"{r.status_code} {code}")
            # as a well-behaved client does: wait as long as the service asks
            time.sleep(min(float(r.headers.get("retry-after") or 1), 5.0))
            return None
        return r

    def writer(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=130) as c:
            i = 0
            while not self.stop.is_set():
                p = self.photo()
                r = self.send(c, "POST", f"/v1/collections/{COLLECTION}/faces",
                              json={"img": _b64(p), "person_id": f"w{n}-{i}"})
                if r is not None:
                    if r.status_code != 201:
                        self.record(f"{r.status_code} {_code(r)}")
                    else:
                        self.record("ok")
                        face = r.json()["id"]
                        if i % 4 == 0:
                            d = self.send(c, "DELETE", f"/v1/collections/{COLLECTION}/faces/{face}")
                            with self.lock:
                                if d is not None and d.status_code == 204:
                                    self.forgotten[face] = p
                                else:
                                    self.unsure.add(face)
                            if d is not None:
                                self.record("ok" if d.status_code == 204
                                            else f"{d.status_code} {_code(d)}")
                        else:
                            with self.lock:
                                self.kept[face] = p
                i += 1

    def reader(self, n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=self.base, timeout=130) as c:
            while not self.stop.is_set():
                with self.lock:
                    kept = list(self.kept.items())
                if not kept:
                    time.sleep(0.2)
                    continue
                face, p = kept[rng.randrange(len(kept))]
                r = self.send(c, "POST", f"/v1/collections/{COLLECTION}/identify",
                              json={"img": _b64(p), "top_k": 1})
                if r is None:
                    continue
                if r.status_code != 200:
                    self.record(f"{r.status_code} {_code(r)}")
                elif _top(r) != face:
                    self.record("wrong answer")
                else:
                    self.record("ok")


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def _code(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not our envelope
        return "no-envelope"


def _top(r: httpx.Response) -> str | None:
    faces = r.json()["faces"]
    matches = faces[0]["matches"] if faces else []
    return matches[0]["id"] if matches else None


def _busiest(workers: list) -> object:
    """The worker node holding the most live actors (replicas, shard copies)."""
    import ray._private.state

    held = Counter(a["Address"]["NodeID"] for a in ray._private.state.actors().values()
                   if a["State"] == "ALIVE")
    return max(workers, key=lambda n: held.get(n.node_id, 0))


def _shard_nodes() -> list[tuple[int, str]]:
    """(shard, node id) of every shard copy, asked of the shard actors themselves."""
    import ray

    from deployments.serve.gallery import NAMESPACE

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith("gallery-")]
    infos = ray.get([ray.get_actor(n, namespace=NAMESPACE).info.remote() for n in names],
                    timeout=60)
    return sorted((i["shard"], i["node_id"]) for i in infos)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before-s", type=float, default=15.0)
    p.add_argument("--after-s", type=float, default=45.0)
    p.add_argument("--clients", type=int, default=4, help="writers, and as many readers")
    p.add_argument("--health-check-period-ms", type=int, default=1000,
                   help="Ray's node health check period (Ray's default 3000, 5 misses: a dead "
                   "node is noticed after about 15-30 s; 1000: about 5 s)")
    p.add_argument("--replicas", type=int, default=2,
                   help="replicas of the Ingress, Detector, Embedder and Gallery (Serve spreads "
                   "them over the nodes): one replica per deployment cannot survive its node")
    a = p.parse_args(argv)
    bindir = debian_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries are missing (make postgres-bin)")
    pg = PgServer(bindir)
    pg.start()
    data = tempfile.mkdtemp(prefix="ff-nodeloss-")
    # how soon Ray declares a silent node dead: its GCS checks every node's raylet every
    # health_check_period_ms and gives up after health_check_failure_threshold misses
    cluster = LocalCluster(workers=2, cpus=2, system_config={
        "health_check_period_ms": a.health_check_period_ms})
    try:
        cluster.connect()
        port = local.free_port()
        config = local.load_config(REPO / "serve_config.yaml", {"settings": {
            "data_dir": data, "model_dir": str(REPO / "data" / "models"),
            "index": {"backend": "postgres", "database_url": pg.url(pg.new_database()),
                      "shards": 3, "shard_replicas": 2}}}, port)
        for d in config["applications"][0]["deployments"]:
            if d["name"] in ("Ingress", "Detector", "Embedder", "Gallery"):
                d["num_replicas"] = a.replicas
        t0 = time.monotonic()
        cluster.deploy(config)
        print(f"deployed on 3 nodes in {time.monotonic() - t0:.0f} s", flush=True)
        photos = sorted((FACES / "lfw-dev" / "images").glob("*/*.jpg"))
        random.Random(0).shuffle(photos)
        load = Load(f"http://127.0.0.1:{port}", photos)
        with httpx.Client(base_url=load.base, timeout=130) as c:
            assert c.post("/v1/collections", json={"name": COLLECTION}).status_code == 201
        placed_before = _shard_nodes()
        threads = [threading.Thread(target=load.writer, args=(i,)) for i in range(a.clients)]
        threads += [threading.Thread(target=load.reader, args=(i,)) for i in range(a.clients)]
        for t in threads:
            t.start()
        time.sleep(a.before_s)
        before = dict(load.outcomes)
        victim = _busiest(cluster.workers)
        killed_at = time.monotonic()
        cluster.kill_worker(victim)
        print(f"killed worker node {victim.node_id[:8]} after {a.before_s:.0f} s of load",
              flush=True)
        time.sleep(a.after_s)
        load.stop.set()
        for t in threads:
            t.join(timeout=140)
        after_failures = [t for t, _ in load.failures if t >= killed_at]
        timeline = [(round(t - killed_at, 1), kind) for t, kind in load.failures]
        recovery = (max(after_failures) - killed_at) if after_failures else 0.0
        placed_after = _shard_nodes()
        lost, resurrected = _check(load)
        rejoined = cluster.add_worker()
        import ray

        alive = sum(1 for n in ray.nodes() if n["Alive"])
        bad = {k: v for k, v in load.outcomes.items() if k not in ("ok", "503 unavailable")}
        ok = (not lost and not resurrected and not bad and recovery <= RECOVERY_TARGET_S)
        table = _report(a, load, before, lost, resurrected, recovery, victim.node_id,
                        placed_before, placed_after, alive, rejoined.node_id, ok, timeline)
        print(table)
        RESULTS.write_text(table)
        return 0 if ok else 1
    finally:
        cluster.shutdown()
        pg.stop()


def _check(load: Load) -> tuple[list[str], list[str]]:
    """Acknowledged faces that are gone, and acknowledged forgets that came back."""
    lost, resurrected = [], []
    with httpx.Client(base_url=load.base, timeout=130) as c:
        for face in load.kept:
            if c.get(f"/v1/collections/{COLLECTION}/faces/{face}").status_code != 200:
                lost.append(face)
        sample = random.Random(1).sample(sorted(load.kept), min(100, len(load.kept)))
        for face in sample:  # and the index finds them
            r = c.post(f"/v1/collections/{COLLECTION}/identify",
                       json={"img": _b64(load.kept[face]), "top_k": 1})
            if r.status_code != 200 or _top(r) != face:
                lost.append(face)
        for face, p in load.forgotten.items():
            if c.get(f"/v1/collections/{COLLECTION}/faces/{face}").status_code != 404:
                resurrected.append(face)
            r = c.post(f"/v1/collections/{COLLECTION}/identify",
                       json={"img": _b64(p), "top_k": 3})
            if r.status_code == 200 and face in {m["id"] for f in r.json()["faces"]
                                                 for m in f["matches"]}:
                resurrected.append(face)
    return sorted(set(lost)), sorted(set(resurrected))


def _report(a, load: Load, before: dict, lost: list[str], resurrected: list[str],
            recovery: float, victim: str, placed_before: list, placed_after: list,
            alive: int, rejoined: str, ok: bool, timeline: list) -> str:
    def where(placed: list) -> str:
        return "; ".join(f"shard {s}: {', '.join(n[:8] for sh, n in placed if sh == s)}"
                         for s in sorted({s for s, _ in placed}))

    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(load.outcomes.items()))
    return f"""# A worker node lost under load

`.venv/bin/python -m bench.node_loss --before-s {a.before_s:.0f} --after-s {a.after_s:.0f} --replicas {a.replicas} --health-check-period-ms {a.health_check_period_ms}`
on {platform.node() and 'this machine'} ({os.cpu_count()} cores): 3 Ray nodes on 127.0.0.1,
PostgreSQL store, 3 shards x 2 copies, {a.replicas} replicas of the Ingress, Detector, Embedder and
Gallery, {a.clients} clients enrolling (forgetting one in
four) and {a.clients} identifying over HTTP; worker node `{victim[:8]}` SIGKILLed after
{a.before_s:.0f} s, load for {a.after_s:.0f} s more.

| requests by outcome | count |
|---|---|
{rows}

| figure | value | target |
|---|---|---|
| failed requests before the kill | {sum(v for k, v in before.items() if k != 'ok')} | 0 |
| faces acknowledged (kept) | {len(load.kept)} | |
| forgets acknowledged | {len(load.forgotten)} | |
| forgets unsure (failed, may have committed) | {len(load.unsure)} | |
| acknowledged faces lost | {len(lost)} | 0 |
| forgotten faces resurrected | {len(resurrected)} | 0 |
| failures other than a typed 503 | {sum(v for k, v in load.outcomes.items() if k not in ('ok', '503 unavailable'))} | 0 |
| seconds from the kill to the last failed request | {recovery:.1f} | <= {RECOVERY_TARGET_S:.0f} |
| nodes alive after the node rejoined | {alive} (rejoined as `{rejoined[:8]}`) | 3 |

Shard copies before: {where(placed_before)}.
After: {where(placed_after)} (none on `{victim[:8]}`).

Failures by seconds after the kill (first 30): {', '.join(f'{t} s {k}' for t, k in timeline[:30]) or 'none'}.

Result: **{'all targets met' if ok else 'TARGET MISSED'}**.
"""


if __name__ == "__main__":
    sys.exit(main())
