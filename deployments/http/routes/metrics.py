"""``GET /metrics``: the service's Prometheus metrics (``deployments/metrics.py``).

It follows the API-key check like every route but ``/health`` and ``/ready``:
the numbers name collections and show traffic per route, and Prometheus
sends a key as a bearer token (``authorization`` in its scrape config).
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments.http.common import api_of
from deployments.metrics import CONTENT_TYPE
from deployments.http.schemas import errors

router = APIRouter()


@router.get("/metrics", tags=["ops"], response_class=Response, responses={
    **errors(401), 200: {"content": {"text/plain": {}},
                         "description": "Prometheus text exposition format 0.0.4"}})
async def metrics(request: Request) -> Response:
    text = await request.app.state.metrics.render(api_of(request).flow)
    return Response(text, media_type=CONTENT_TYPE)
