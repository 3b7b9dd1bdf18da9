"""Readiness: what ``/ready`` checks, and the start-up gate in front of the real routes.

``/health`` is liveness only: it answers 200 whenever this Ingress process
runs. ``/ready`` answers 200 only when every deployment the routes need
answers its ``ready()`` (a model replica answers once its default models are
loaded; the Gallery once every shard copy has rebuilt and the store answers),
else 503 with ``Retry-After``; it is what a load balancer or readiness probe
should gate traffic on.

While the application starts, an Ingress replica can be up before the
deployments behind it: a request would then wait, without an answer, until
they are. The :class:`StartupGate` answers such requests at once with the API's
error envelope (503 ``unavailable`` with ``Retry-After``) until readiness has
been seen once; from then on it stays open, and a later outage is answered per
request (``deployments/http/errors.py``) while ``/ready`` reports it. The
operational paths (:data:`UNGATED`) are never held back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from pipelines.errors import ErrorCode
from deployments.http.api_docs import is_docs_path
from deployments.http.errors import error_response

#: answered during start-up as at any time (liveness, readiness, metrics, API docs)
UNGATED = {"/health", "/ready", "/metrics", "/openapi.json"}
#: seconds a client is told to wait while the service starts
STARTING_RETRY_AFTER_S = 5
#: how long ``/ready`` waits for each deployment's answer (a probe's timeout must
#: be longer: a deployment that takes longer is reported not ready)
READY_TIMEOUT_S = 3.0


async def probe(flow: Any, timeout_s: float = READY_TIMEOUT_S) -> dict[str, bool]:
    """``{deployment: ready}`` for every deployment the routes use; a deployment that
    has not answered within ``timeout_s`` is not ready."""
    checks = {"Detector": flow.detector, "Embedder": flow.embedder, "Analyzer": flow.analyzer}
    if flow.has_gallery:
        checks["Gallery"] = flow.gallery

    async def one(backend: Any) -> bool:
        try:
            return bool(await backend.ready())
        except Exception:  # noqa: BLE001 - a probe reports, it does not raise
            return False

    tasks = {name: asyncio.ensure_future(one(b)) for name, b in checks.items()}
    await asyncio.wait(tasks.values(), timeout=timeout_s)
    for t in tasks.values():
        # not awaited: a call to a deployment with no replica yet can take as long to
        # cancel as to answer (asyncio.wait_for would wait for that)
        t.cancel()
    return {name: t.done() and not t.cancelled() and t.result() for name, t in tasks.items()}


class StartupGate:
    """Holds real routes at 503 until every deployment has been ready once."""

    def __init__(self, flow: Any, probe_timeout_s: float = READY_TIMEOUT_S,
                 wait_s: float = 1.0) -> None:
        self.flow = flow
        self.open = False
        self.pending: list[str] = []
        self._probe_timeout = probe_timeout_s
        self._wait = wait_s
        self._task: asyncio.Task | None = None
        self.opened_at: float | None = None

    def saw(self, status: dict[str, bool]) -> None:
        """A readiness result, from the gate's own probe or from ``/ready``."""
        if all(status.values()):
            if not self.open:
                self.open, self.opened_at = True, time.time()
        else:
            self.pending = [name for name, ok in status.items() if not ok]

    async def admit(self) -> bool:
        """True when the request may go on; waits up to ``wait_s`` for a probe, one
        at a time however many requests arrive."""
        if self.open:
            return True
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._probe())
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._wait)
        except asyncio.TimeoutError:
            pass
        return self.open

    async def _probe(self) -> None:
        self.saw(await probe(self.flow, self._probe_timeout))


async def admit(request: Request) -> bool:
    gate: StartupGate | None = getattr(request.app.state, "gate", None)
    if gate is None or gate.open or request.url.path in UNGATED or \
            is_docs_path(request.url.path):
        return True
    return await gate.admit()


def starting_response(request: Request) -> JSONResponse:
    gate: StartupGate = request.app.state.gate
    waiting = ", ".join(gate.pending) or "the deployments"
    response = error_response(request, ErrorCode.UNAVAILABLE,
                              f"the service is starting: {waiting} not ready yet; retry shortly",
                              {"not_ready": list(gate.pending)} if gate.pending else None)
    response.headers["Retry-After"] = str(STARTING_RETRY_AFTER_S)
    return response
