"""Prometheus metrics of the service: what ``GET /metrics`` on the ingress answers.

Every replica records its own numbers with ``prometheus_client`` in a
:class:`ProcessMetrics` registry of its own: an Ingress replica its HTTP
requests (counted and timed by route *template*, never the raw path, so label
values stay bounded), a model replica the sizes of the batches its
``@serve.batch`` methods ran, the Gallery replica its search batches. Those
numbers are per replica, and every series carries ``deployment`` and
``replica`` labels. Replicas report them every few seconds to one shared
board (``deployments/serve/metrics_board.py``), so the Ingress replica that answers
a scrape serves every replica's series: its own live, the others' as last
reported (``facefleet_metrics_report_age_seconds`` says how old). Through a
load balancer each scrape therefore sees the whole service, whichever replica
answers. The gallery's numbers (faces per collection, store and shard
health, replication lag) are service-wide: they are read from the store and
the shard actors at scrape time, through the Gallery deployment.

Nothing here imports Ray; tests build the same app over in-process backends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.requests import Request
from starlette.routing import BaseRoute, Match

log = logging.getLogger("facefleet.metrics")

#: the classic text format, which every Prometheus version scrapes
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: seconds; from a health probe (a millisecond) to a large enrolment batch
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
#: requests per batch (the same boundaries as the Ray metric ``facefleet_batch_size``)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: the route label of a request that matched no route (keeps label values bounded)
UNMATCHED = "unmatched"
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

#: one metric family as plain data: (name, documentation, type, unit, samples), each
#: sample (name, labels, value); what replicas send to the board (no client classes)
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


class ProcessMetrics:
    """The metrics one process records itself, in a registry of its own.

    ``labels`` (``deployment``, ``replica``) are added to every series when the
    service's metrics are put together, not stored with each observation.
    """

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = dict(labels)
        self.registry = CollectorRegistry(auto_describe=False)
        self._http: HttpMetrics | None = None
        self._batches: BatchSizes | None = None

    @property
    def http(self) -> HttpMetrics:
        if self._http is None:
            self._http = HttpMetrics(self.registry)
        return self._http

    def batches(self, methods: Iterable[str]) -> BatchSizes:
        if self._batches is None:
            self._batches = BatchSizes(self.registry)
        self._batches.declare(methods)
        return self._batches

    def snapshot(self) -> list[Family]:
        return [(m.name, m.documentation, m.type, m.unit,
                 [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
                for m in self.registry.collect()]


class HttpMetrics:
    """Requests answered by one Ingress replica, by route template, method and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "facefleet_http_requests", "HTTP requests answered, by route template, method "
            "and status", ("route", "method", "status"), registry=registry)
        self.duration = Histogram(
            "facefleet_http_request_duration_seconds", "time from the request reaching the "
            "ingress to its response headers, by route template and method",
            ("route", "method"), buckets=LATENCY_BUCKETS, registry=registry)

        self.auth_failures = Counter(
            "facefleet_auth_failures", "requests refused for a missing, wrong, revoked or "
            "expired API key", ("reason",), registry=registry)
        self.rate_limited = Counter(
            "facefleet_rate_limited", "requests answered 429, by the limit they ran into "
            "(key, client, failed_auth)", ("limit",), registry=registry)
        for reason in ("missing", "invalid"):  # shown at 0 before the first failure
            self.auth_failures.labels(reason)
        for limit in ("key", "client", "failed_auth"):
            self.rate_limited.labels(limit)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)


class BatchSizes:
    """Requests per batch of each ``@serve.batch`` method (``method`` names the stage)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hist = Histogram("facefleet_batch_size", "requests per batch, by the deployment "
                              "method that ran it", ("method",), buckets=BATCH_BUCKETS,
                              registry=registry)

    def declare(self, methods: Iterable[str]) -> None:
        for m in methods:  # a stage that has not run yet still shows, with a count of 0
            self.hist.labels(m)

    def observe(self, method: str, n: int) -> None:
        self.hist.labels(method).observe(n)


def route_template(request: Request) -> str:
    """The path template of the route that answered (``/v1/collections/{collection}``),
    or :data:`UNMATCHED`; found without routing when a request was answered before
    it (an API-key refusal, the start-up gate)."""
    route = request.scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    metrics: AppMetrics | None = getattr(request.app.state, "metrics", None)
    partial = None
    for r in metrics.routes if metrics is not None else ():
        match, _ = r.matches(request.scope)
        if match == Match.FULL:
            return r.path
        if match == Match.PARTIAL and partial is None:  # the path, with another method
            partial = r.path
    return partial or UNMATCHED


def observe_request(request: Request, status: int, seconds: float) -> None:
    metrics: AppMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.own.http.observe(route_template(request), request.method, status, seconds)


@dataclass
class Report:
    """The families of one process, its labels, and how old they are."""

    labels: dict[str, str]
    families: list[Family]
    age_s: float = 0.0


@dataclass
class AppMetrics:
    """What the ``/metrics`` of one Ingress replica is made of.

    ``own``: this replica's registry (live). ``peers``: the other replicas'
    reports (from the board; None without Ray). The gallery is asked at scrape
    time through the flow's Gallery backend.
    """

    own: ProcessMetrics
    peers: Callable[[], Awaitable[list[Report]]] | None = None
    #: for the board and the gallery, asked at once: within Prometheus' default
    #: scrape timeout (10 s) even when neither answers
    timeout_s: float = 5.0
    #: every route of the app, each with a ``path`` template (set by ``create_app``)
    routes: list[BaseRoute] = field(default_factory=list)

    async def render(self, flow: Any) -> bytes:
        gallery = getattr(flow, "has_gallery", False)
        peers, report = await asyncio.gather(
            self._ask(self.peers() if self.peers is not None else None, "metrics board"),
            self._ask(flow.gallery.metrics() if gallery else None, "gallery metrics"))
        reports = [Report(self.own.labels, self.own.snapshot())]
        extra: list[Metric] = []
        if self.peers is not None:
            reports += peers or []
            extra.append(_gauge("facefleet_metrics_board_up", "1 when the other replicas' "
                                "reports could be read", [({}, 0.0 if peers is None else 1.0)]))
        extra.append(_gauge("facefleet_metrics_report_age_seconds", "age of the numbers of "
                            "each replica in this scrape (0: the replica that answered)",
                            [(r.labels, r.age_s) for r in reports]))
        extra.append(_gauge("facefleet_metrics_answered_by", "the Ingress replica that "
                            "answered this scrape", [(self.own.labels, 1.0)]))
        if gallery:
            extra += gallery_families(report)  # None: the Gallery did not answer
        return render(merge(reports) + extra)

    async def _ask(self, aw: Awaitable[Any] | None, what: str) -> Any:
        if aw is None:
            return None
        try:
            return await within(aw, self.timeout_s)
        except Exception:  # noqa: BLE001 - a scrape reports what it has, never fails
            log.warning("%s unavailable", what, exc_info=True)
            return None


async def within(aw: Awaitable[Any], timeout_s: float) -> Any:
    """``aw``'s result, or TimeoutError after ``timeout_s`` without waiting for it to
    cancel: a call to a deployment with no replica yet takes as long to cancel as to
    answer (``asyncio.wait_for`` would wait for that)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if not done:
        task.cancel()
        raise TimeoutError(f"no answer within {timeout_s}s")
    return task.result()


def merge(reports: Iterable[Report]) -> list[Metric]:
    """One family per metric name over every report, each sample labelled with the
    report's ``deployment`` and ``replica`` (a family appears once per scrape)."""
    families: dict[str, Metric] = {}
    for r in reports:
        for name, doc, typ, unit, samples in r.families:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = Metric(name, doc, typ, unit)
            for sname, labels, value in samples:
                fam.add_sample(sname, {**r.labels, **labels}, value)
    return list(families.values())


def gallery_families(report: dict[str, Any] | None) -> list[Metric]:
    """Prometheus gauges of an ``index.health.gallery_report`` (None: the Gallery
    deployment did not answer)."""
    out = [_gauge("facefleet_gallery_up", "1 when the Gallery deployment answered this scrape",
                  [({}, 0.0 if report is None else 1.0)])]
    if report is None:
        return out
    store = report["store"]
    cols = report["collections"]
    shards = report["shards"]
    out.append(_gauge("facefleet_gallery_store_up", "1 when the gallery store answered",
                      [({"backend": store["backend"]}, 1.0 if store["up"] else 0.0)]))
    if store["up"]:
        out.append(_gauge("facefleet_gallery_collections", "collections in the store",
                          [({}, float(len(cols)))]))
        out.append(_gauge("facefleet_gallery_faces", "faces enrolled, per collection (store)",
                          [({"collection": c["collection"]}, float(c["faces"])) for c in cols]))
        out.append(_gauge("facefleet_gallery_persons", "persons, per collection (store)",
                          [({"collection": c["collection"]}, float(c["persons"]))
                           for c in cols]))
    where = [({"shard": str(s["shard"]), "copy": str(s["copy"])}, s) for s in shards]
    out.append(_gauge("facefleet_gallery_shard_up", "1 when the shard copy answered",
                      [(k, 1.0 if s["up"] else 0.0) for k, s in where]))
    out.append(_gauge("facefleet_gallery_shard_faces", "vectors held by the shard copy",
                      [(k, float(s["faces"])) for k, s in where if s["up"]]))
    out.append(_gauge("facefleet_gallery_shard_index_bytes", "memory of the shard copy's "
                      "index structures", [(k, float(s["index_bytes"])) for k, s in where
                                           if s["up"]]))
    out.append(_gauge("facefleet_gallery_shard_changes_behind", "committed changes the "
                      "shard copy has not applied yet (replication lag)",
                      [(k, float(s["changes_behind"])) for k, s in where
                       if "changes_behind" in s]))
    return out


def _gauge(name: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    m = Metric(name, doc, "gauge")
    for labels, value in samples:
        m.add_sample(name, dict(labels), value)
    return m


class _Families:
    """A collector over families already built (one scrape's)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
