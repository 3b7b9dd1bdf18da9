"""The metrics and the start-up gate of the ingress app, in process (no Ray).

Several replicas' registries merge into one scrape with a family per name and
every series labelled by its replica; requests are counted by route template
(also when refused before routing); while no deployment is ready the real
routes answer 503 ``unavailable`` with Retry-After and the operational ones
answer as usual.
"""

from __future__ import annotations

import asyncio
import hashlib

import httpx
from prometheus_client.parser import text_string_to_metric_families

from configs.settings import Settings
from deployments.http.app import create_app
from deployments.metrics import AppMetrics, ProcessMetrics, Report, gallery_families, merge, render
from pipelines.flow import Flow


def parse(text: bytes) -> dict:
    families = list(text_string_to_metric_families(text.decode()))
    assert len({f.name for f in families}) == len(families)
    return {f.name: f for f in families}


def test_replicas_merge_into_one_family_per_name_labelled_by_replica():
    ingress = ProcessMetrics({"deployment": "Ingress", "replica": "a1"})
    other = ProcessMetrics({"deployment": "Ingress", "replica": "a2"})
    detector = ProcessMetrics({"deployment": "Detector", "replica": "d1"})
    ingress.http.observe("/v1/detect", "POST", 200, 0.03)
    ingress.http.observe("/v1/detect", "POST", 200, 0.2)
    other.http.observe("/v1/detect", "POST", 422, 0.01)
    batches = detector.batches(["detect"])
    for n in (1, 3, 16):
        batches.observe("detect", n)
    fams = parse(render(merge([Report(ingress.labels, ingress.snapshot()),
                               Report(other.labels, other.snapshot(), 1.5),
                               Report(detector.labels, detector.snapshot(), 0.7)])))
    req = {(s.labels["replica"], s.labels["status"]): s.value
           for s in fams["facefleet_http_requests"].samples
           if s.name == "facefleet_http_requests_total"}
    assert req == {("a1", "200"): 2, ("a2", "422"): 1}
    hist = {s.labels.get("le"): s.value for s in fams["facefleet_batch_size"].samples
            if s.name == "facefleet_batch_size_bucket"}
    assert hist["1.0"] == 1 and hist["4.0"] == 2 and hist["16.0"] == 3 and hist["+Inf"] == 3
    (total,) = [s for s in fams["facefleet_batch_size"].samples
                if s.name == "facefleet_batch_size_sum"]
    assert total.value == 20 and total.labels == {"deployment": "Detector", "replica": "d1",
                                                  "method": "detect"}


def test_gallery_report_becomes_gauges():
    report = {"store": {"backend": "sqlite", "up": True, "error": None},
              "collections": [{"collection": "staff", "model": "dlib", "faces": 7,
                               "persons": 5, "last_seq": 9}],
              "shards": [{"shard": 0, "copy": 0, "up": True, "faces": 4, "index_bytes": 10,
                          "changes_behind": 0},
                         {"shard": 1, "copy": 0, "up": False}]}
    fams = parse(render(gallery_families(report)))
    assert fams["facefleet_gallery_faces"].samples[0].labels == {"collection": "staff"}
    assert fams["facefleet_gallery_faces"].samples[0].value == 7
    up = {s.labels["shard"]: s.value for s in fams["facefleet_gallery_shard_up"].samples}
    assert up == {"0": 1, "1": 0}
    # a shard that did not answer has no faces or lag: absent, not zero
    assert [s.labels["shard"] for s in fams["facefleet_gallery_shard_faces"].samples] == ["0"]
    down = parse(render(gallery_families(None)))
    assert down["facefleet_gallery_up"].samples[0].value == 0
    assert "facefleet_gallery_faces" not in down


def _app(keys: list[str] | None = None):
    s = Settings(api_key_sha256=keys or [])
    # no backends at all: no deployment is ever ready
    return create_app(Flow(s, None, None, None), s)


async def _calls(app, calls):
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        for method, path, headers in calls:
            out.append(await c.request(method, path, headers=headers or {}))
    return out


def test_requests_counted_by_route_template_even_before_routing():
    key = "k-123"
    app = _app([hashlib.sha256(key.encode()).hexdigest()])
    auth = {"X-API-Key": key}
    rs = asyncio.run(_calls(app, [
        ("GET", "/v1/collections/staff", None),  # refused by the key check, before routing
        ("GET", "/v1/collections/staff/faces/f1", auth),  # held by the start-up gate
        ("GET", "/no/such/path", auth),
        ("GET", "/health", None),
        ("GET", "/metrics", auth)]))
    assert [r.status_code for r in rs] == [401, 503, 503, 200, 200]
    fams = parse(rs[-1].content)
    got = {(s.labels["route"], s.labels["status"]): s.value
           for s in fams["facefleet_http_requests"].samples
           if s.name == "facefleet_http_requests_total"}
    assert got == {("/v1/collections/{collection}", "401"): 1,
                   ("/v1/collections/{collection}/faces/{face_id}", "503"): 1,
                   ("unmatched", "503"): 1, ("/health", "200"): 1}


def test_start_up_gate_answers_503_until_ready_and_spares_operational_routes():
    app = _app()
    rs = asyncio.run(_calls(app, [("POST", "/v1/detect", None), ("GET", "/health", None),
                                  ("GET", "/ready", None), ("GET", "/metrics", None)]))
    detect, health, ready, metrics = rs
    assert detect.status_code == 503 and int(detect.headers["retry-after"]) > 0
    err = detect.json()["error"]
    assert err["code"] == "unavailable" and "starting" in err["message"]
    assert set(err["details"]["not_ready"]) == {"Detector", "Embedder", "Analyzer"}
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert int(ready.headers["retry-after"]) > 0
    assert metrics.status_code == 200
    # once every deployment has been seen ready, the gate stays open
    app.state.gate.saw({"Detector": True, "Embedder": True, "Analyzer": True})
    (again,) = asyncio.run(_calls(app, [("POST", "/v1/detect", None)]))
    assert again.status_code != 503  # routed: the body is checked (and missing) now
    assert again.json()["error"]["code"] == "validation_error"


def test_app_metrics_render_parses():
    s = Settings()
    m = AppMetrics(ProcessMetrics({"deployment": "Ingress", "replica": "r9"}))
    m.own.http.observe("/health", "GET", 200, 0.001)
    fams = parse(asyncio.run(m.render(Flow(s, None, None, None))))
    assert fams["facefleet_metrics_answered_by"].samples[0].labels["replica"] == "r9"
    assert "facefleet_gallery_up" not in fams  # this flow has no gallery
