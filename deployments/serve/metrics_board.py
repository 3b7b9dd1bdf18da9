"""Where every replica's metrics meet, so that any Ingress replica can serve all of them.

Each Ingress, model and Gallery replica runs a :class:`Reporter`: a daemon
thread that sends a snapshot of its ``prometheus_client`` registry
(``deployments.metrics.ProcessMetrics``) to the application's
:class:`MetricsBoard` actor every :data:`REPORT_INTERVAL_S` seconds, and once
at start. The board keeps the latest report of each replica and forgets a
replica that has not reported for :data:`STALE_AFTER_S` (it stopped or died),
so a scrape lists exactly the replicas that are alive, each under its own
``replica`` label. The board is a named, detached actor (one per
application, restarted if it dies; a restarted board is complete again after
one interval). Ray's own metrics pipeline (``ray.serve.metrics``, exported on
each node's metrics port) carries the same batch-size numbers as
``ray_facefleet_batch_size``; this board exists so that the app's own
``/metrics`` is complete without scraping every node.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray
from ray import serve

from deployments.metrics import Family, ProcessMetrics, Report

log = logging.getLogger("facefleet.metrics")

NAMESPACE = "facefleet"
REPORT_INTERVAL_S = 2.0
STALE_AFTER_S = 30.0


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest report of every replica of one application."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, str], list[Family]]] = {}

    def put(self, labels: dict[str, str], families: list[Family]) -> None:
        self._reports[labels["replica"]] = (time.monotonic(), labels, families)

    def reports(self, stale_after_s: float = STALE_AFTER_S) -> list[tuple[dict, list, float]]:
        now = time.monotonic()
        for key in [k for k, (t, _, _) in self._reports.items() if now - t > stale_after_s]:
            del self._reports[key]
        return [(labels, fams, now - t) for t, labels, fams in self._reports.values()]


def board(app_name: str) -> Any:
    """The application's board, created by whichever replica asks first."""
    return MetricsBoard.options(
        name=f"metrics-board-{app_name}", namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_task_retries=-1,
    ).remote()


def replica_metrics() -> ProcessMetrics:
    """A registry labelled with this replica's deployment and id."""
    ctx = serve.get_replica_context()
    return ProcessMetrics({"deployment": ctx.deployment, "replica": ctx.replica_tag})


class Reporter:
    """Sends this replica's snapshot to the board, now and then every interval."""

    def __init__(self, metrics: ProcessMetrics, interval_s: float = REPORT_INTERVAL_S) -> None:
        self.metrics = metrics
        self.app_name = serve.get_replica_context().app_name
        self._interval = interval_s
        self._board: Any = None
        threading.Thread(target=self._run, daemon=True, name="metrics-report").start()

    def _run(self) -> None:
        while True:
            try:
                if self._board is None:
                    self._board = board(self.app_name)
                # wait for the call: a board that is gone is found again next time
                ray.get(self._board.put.remote(self.metrics.labels, self.metrics.snapshot()),
                        timeout=10)
            except Exception:  # noqa: BLE001 - reporting must never take the replica down
                log.warning("metrics report failed", exc_info=True)
                self._board = None
            time.sleep(self._interval)

    async def peers(self) -> list[Report]:
        """Every other replica's latest report (for the Ingress's /metrics)."""
        if self._board is None:
            self._board = board(self.app_name)
        rows = await self._board.reports.remote()
        own = self.metrics.labels["replica"]
        return [Report(labels, fams, age) for labels, fams, age in rows
                if labels.get("replica") != own]
