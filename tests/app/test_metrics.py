"""GET /metrics on the real app: requests and latencies by route template, batch sizes
of every stage, the gallery's faces per collection and health, in Prometheus text."""

from __future__ import annotations

import base64
import copy
import hashlib
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.app.photos import b64

pytestmark = pytest.mark.app

LFW = "lfw-dev/images"


def scrape(api, **kw) -> dict:
    r = api.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(r.text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a metric family appears twice"
    return {f.name: f for f in families}


def answered_by(fams) -> str:
    (sample,) = fams["facefleet_metrics_answered_by"].samples
    return sample.labels["replica"]


def value(fams, family: str, sample: str, **labels) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


def photos(faces, n: int) -> list:
    people = sorted(p for p in (faces / LFW).iterdir() if p.is_dir())[:n]
    return [sorted(p.glob("*.jpg"))[0] for p in people]


def test_requests_and_latency_counted_by_route_template(api, faces):
    imgs = [b64(p) for p in photos(faces, 3)]
    coll = "metrics-routes"
    sent: dict[tuple[str, str, str], int] = {}

    def send(method: str, path: str, route: str, status: int, **kw) -> None:
        r = api.request(method, path, **kw)
        assert r.status_code == status, r.text
        key = (route, method, str(status))
        sent[key] = sent.get(key, 0) + 1

    before = scrape(api)
    replica = answered_by(before)
    for img in imgs:
        send("POST", "/v1/detect", "/v1/detect", 200, json={"img": img})
    send("POST", "/v1/detect", "/v1/detect", 400,
         json={"img": base64.b64encode(b"not an image at all").decode()})
    send("GET", "/v1/detect", "/v1/detect", 405)
    for i, img in enumerate(imgs[:2]):
        send("POST", f"/v1/collections/{coll}/faces", "/v1/collections/{collection}/faces",
             201, json={"img": img, "person_id": f"p{i}"})
    send("POST", f"/v1/collections/{coll}/identify", "/v1/collections/{collection}/identify",
         200, json={"img": imgs[0]})
    send("GET", "/v1/collections/metrics-no-such", "/v1/collections/{collection}", 404)
    send("GET", "/no/such/route", "unmatched", 404)
    after = scrape(api)
    assert answered_by(after) == replica  # the same Ingress replica's own counters

    for (route, method, status), n in sent.items():
        labels = {"route": route, "method": method, "replica": replica}
        moved = (value(after, "facefleet_http_requests", "facefleet_http_requests_total",
                       status=status, **labels)
                 - value(before, "facefleet_http_requests", "facefleet_http_requests_total",
                         status=status, **labels))
        assert moved == n, (route, method, status)
    for route, method in {(r, m) for r, m, _ in sent}:
        n = sum(c for (r, m, _), c in sent.items() if (r, m) == (route, method))
        labels = {"route": route, "method": method, "replica": replica}
        fam = "facefleet_http_request_duration_seconds"
        for sample, extra in ((f"{fam}_count", {}), (f"{fam}_bucket", {"le": "+Inf"})):
            moved = value(after, fam, sample, **labels, **extra) - value(before, fam, sample,
                                                                         **labels, **extra)
            assert moved == n, (route, method, sample)
        assert value(after, fam, f"{fam}_sum", **labels) > value(before, fam, f"{fam}_sum",
                                                                 **labels)
    # route labels are templates: the collection name never becomes a label value
    routes = {s.labels["route"] for s in after["facefleet_http_requests"].samples}
    assert not any(coll in r or "metrics-no-such" in r for r in routes), routes
    every = {s.labels["deployment"] for s in after["facefleet_http_requests"].samples}
    assert every == {"Ingress"}


def _batch_sums(fams) -> dict[tuple[str, str], float]:
    return {(s.labels["deployment"], s.labels["method"]): s.value
            for s in fams["facefleet_batch_size"].samples if s.name == "facefleet_batch_size_sum"}


MODEL_DEPLOYMENTS = ("Detector", "Embedder", "Analyzer", "Gallery")


def fresh_scrape(api, since: float, deployments=MODEL_DEPLOYMENTS,
                 timeout_s: float = 30.0) -> dict:
    """A scrape in which every replica of ``deployments`` reported after ``since``
    (time.monotonic()), so that its numbers include every request answered before."""
    deadline = time.monotonic() + timeout_s
    while True:
        elapsed = time.monotonic() - since
        fams = scrape(api)
        ages = [(s.labels["deployment"], s.value)
                for s in fams["facefleet_metrics_report_age_seconds"].samples]
        # a report's age counts from its arrival, its snapshot is a moment older; the
        # replica that answers has age 0: its numbers are live
        if {d for d, _ in ages} >= set(deployments) and all(
                age == 0 or age < elapsed - 1.0 for d, age in ages if d in deployments):
            return fams
        assert time.monotonic() < deadline, ages
        time.sleep(0.5)


def test_batch_sizes_of_every_stage(api, faces):
    fams = fresh_scrape(api, time.monotonic())
    counts = {(s.labels["deployment"], s.labels["method"])
              for s in fams["facefleet_batch_size"].samples
              if s.name == "facefleet_batch_size_count"}
    for stage in [("Detector", "detect"), ("Embedder", "embed"), ("Embedder", "embed_chips"),
                  ("Analyzer", "analyze"), ("Analyzer", "analyze_chips"), ("Gallery", "search")]:
        assert stage in counts, (stage, sorted(counts))
    ages = {s.labels["deployment"] for s in fams["facefleet_metrics_report_age_seconds"].samples}
    assert {"Ingress", *MODEL_DEPLOYMENTS} <= ages

    before = _batch_sums(fams)
    imgs = [b64(p) for p in photos(faces, 5)]
    for img in imgs[:3]:
        assert api.post("/v1/embed", json={"img": img}).status_code == 200
    for img in imgs[3:]:
        assert api.post("/v1/analyze", json={"img": img}).status_code == 200
    # every request is one item of one batch: the sums of batch sizes move by exactly
    # what was sent, once the model replicas have reported (every 2 s)
    now = _batch_sums(fresh_scrape(api, time.monotonic()))
    want = {("Detector", "detect"): 5, ("Embedder", "embed"): 3, ("Analyzer", "analyze"): 2,
            ("Gallery", "search"): 0}
    assert {k: now.get(k, 0) - before.get(k, 0) for k in want} == want


def test_gallery_faces_per_collection_and_health(api, faces, service):
    coll = "metrics-gallery"
    imgs = photos(faces, 4)
    for i, p in enumerate(imgs):
        r = api.post(f"/v1/collections/{coll}/faces", json={"img": b64(p), "person_id": f"q{i}"})
        assert r.status_code == 201, r.text
    r = api.post(f"/v1/collections/{coll}/faces", json={"img": b64(imgs[0]), "person_id": "q0"})
    assert r.status_code == 201  # a second face of the same person
    fams = scrape(api)
    assert value(fams, "facefleet_gallery_up", "facefleet_gallery_up") == 1
    assert value(fams, "facefleet_gallery_faces", "facefleet_gallery_faces",
                 collection=coll) == 5
    assert value(fams, "facefleet_gallery_persons", "facefleet_gallery_persons",
                 collection=coll) == 4
    (store,) = fams["facefleet_gallery_store_up"].samples
    assert store.value == 1 and store.labels["backend"] == "sqlite"
    listed = api.get("/v1/collections").json()["collections"]
    assert value(fams, "facefleet_gallery_collections", "facefleet_gallery_collections") == \
        len(listed)
    shards = service.config["applications"][0]["args"]["settings"].get("index", {}).get(
        "shards", 2)
    up = fams["facefleet_gallery_shard_up"].samples
    assert len(up) == shards and all(s.value == 1 for s in up)
    # writes reach the shards before they are acknowledged: no lag, and the shards
    # hold exactly the faces the store has
    behind = fams["facefleet_gallery_shard_changes_behind"].samples
    assert len(behind) == shards and all(s.value == 0 for s in behind)
    total = sum(s.value for s in fams["facefleet_gallery_faces"].samples)
    assert sum(s.value for s in fams["facefleet_gallery_shard_faces"].samples) == total
    stats = api.get(f"/v1/collections/{coll}").json()
    assert stats["faces"] == 5


def test_metrics_follows_the_api_key(service):
    key = "metrics-scrape-key"
    c = copy.deepcopy(service.config)
    for d in c["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            d["user_config"] = {"api_key_sha256": [hashlib.sha256(key.encode()).hexdigest()]}
    service.redeploy(c)
    try:
        r = service.client.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        fams = scrape(service.client, headers={"Authorization": f"Bearer {key}"})
        assert value(fams, "facefleet_http_requests", "facefleet_http_requests_total",
                     route="/metrics", status="401") >= 1
        assert service.client.get("/health").status_code == 200
    finally:
        for d in c["applications"][0]["deployments"]:
            if d["name"] == "Ingress":
                # an empty list alone is refused: turning auth off is said explicitly
                d["user_config"] = {"api_key_sha256": [], "auth_enabled": False}
        service.redeploy(c)
    assert service.client.get("/metrics").status_code == 200


def test_every_ingress_replica_is_in_every_scrape(service, faces):
    """Two Ingress replicas behind HAProxy: whichever answers a scrape, it lists both,
    and their counters add up to exactly what was sent."""
    two = copy.deepcopy(service.config)
    for d in two["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            d["num_replicas"] = 2
    original = service.config
    service.redeploy(two)
    try:
        api = service.client

        def ingress_replicas(fams) -> set[str]:
            return {s.labels["replica"] for s in fams["facefleet_metrics_report_age_seconds"]
                    .samples if s.labels["deployment"] == "Ingress"}

        deadline = time.monotonic() + 60
        while len(ingress_replicas(scrape(api))) < 2:  # a new replica reports at start
            assert time.monotonic() < deadline
            time.sleep(1)

        def detected(fams) -> float:
            return value(fams, "facefleet_http_requests", "facefleet_http_requests_total",
                         route="/v1/detect", method="POST", status="200")

        before = fresh_scrape(api, time.monotonic(), ("Ingress",))
        imgs = [b64(p) for p in photos(faces, 10)]
        for img in imgs:
            assert api.post("/v1/detect", json={"img": img}).status_code == 200
        seen = set()
        for _ in range(6):  # several scrapes, answered by either replica
            after = fresh_scrape(api, time.monotonic(), ("Ingress",))
            assert len(ingress_replicas(after)) == 2
            seen.add(answered_by(after))
            assert detected(after) - detected(before) == len(imgs)
        assert seen <= ingress_replicas(after)
    finally:
        service.redeploy(original)
