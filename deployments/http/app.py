"""The FastAPI application of the ingress, built per replica by :func:`create_app`.

The app holds what every route needs in one ``Api`` object on ``app.state``
(the request flow, the settings, the image resolver:
``deployments/http/common.py``, which the route modules import instead of this
module); the route modules (``routes/``: faces, gallery, listing, admin, compat,
metrics)
are plain ``APIRouter`` functions that parse a request, call the flow and
shape the answer. The middleware tags every request with an id, times it, finds who is
calling (``deployments/http/auth.py``), holds the real routes back while the
service starts (``deployments/http/readiness.py``) and counts every answer for
``/metrics`` (``deployments/metrics.py``); what each route then allows is one
map in ``deployments/http/access.py``, enforced by the app's dependency. Domain
errors become HTTP answers in ``deployments/http/errors.py``. Nothing here imports
Ray: tests build the same app over in-process backends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic.json_schema import models_json_schema
from starlette.routing import Route

from pipelines.errors import ErrorCode, FacefleetError
from configs.settings import Settings
from deployments.http import api_docs, console, readiness, request_ids
from deployments.http.access import authorize
from deployments.http.auth import ANONYMOUS, NOBODY, KeyTable, key_id_of, presented_key
from deployments.http.errors import error_response, install_error_handlers, unexpected_response
from deployments.http.guard import Guard, Refusal
from deployments.http.common import BODY_MODELS, Api, api_of, form_schema
from deployments.http.images import ImageResolver
from deployments.metrics import AppMetrics, ProcessMetrics, observe_request
from deployments.http.readiness import StartupGate
from deployments.http.schemas import ErrorOut
from pipelines.flow import Flow

log = logging.getLogger("facefleet.ingress")

# with the API docs' own paths (api_docs.is_docs_path): no key, answered during start-up
_OPEN_PATHS = {"/health", "/ready", "/openapi.json"}


_REF = "#/components/schemas/{model}"


def _published_names() -> dict[str, str]:
    """Component names the API published for request bodies when two models shared
    a class name: kept, so that clients generated from the document keep their
    type names (the models now have names of their own)."""
    from deployments.http import bodies, compat_schemas

    return {m.__name__: name for m, name in (
        (bodies.RegisterBody, "deployments__routes_gallery__RegisterBody"),
        (bodies.VerifyBody, "deployments__schemas__VerifyBody"),
        (bodies.AnalyzeBody, "deployments__schemas__AnalyzeBody"),
        (compat_schemas.DfRegisterBody, "deployments__compat_schemas__RegisterBody"),
        (compat_schemas.DfVerifyBody, "deployments__compat_schemas__VerifyBody"),
        (compat_schemas.DfAnalyzeBody, "deployments__compat_schemas__AnalyzeBody"))}


def _renamed(node: Any, names: dict[str, str]) -> Any:
    """``node`` with every ``$ref`` to a renamed component pointing at its new name."""
    if isinstance(node, dict):
        out = {k: _renamed(v, names) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF.format(model="")):
            name = ref.rsplit("/", 1)[-1]
            out["$ref"] = _REF.format(model=names.get(name, name))
        return out
    if isinstance(node, list):
        return [_renamed(v, names) for v in node]
    return node


class IngressApp(FastAPI):
    """FastAPI with the routes' request-body models in its OpenAPI document.

    Routes read their bodies themselves (``request_body.parse_body``), so FastAPI
    never sees those models: :meth:`openapi` adds them, nested models included,
    as named components, so that every ``$ref`` resolves from the document root.
    """

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        models = list(dict.fromkeys(m for m, _, _ in BODY_MODELS))
        # one schema generation for all models, so that nested models are shared
        refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
        names = _published_names()
        refs = _renamed(refs, names)
        defs = {"$defs": {names.get(k, k): _renamed(v, names)
                          for k, v in defs.get("$defs", {}).items()}}
        for model, schema, form in BODY_MODELS:
            schema.clear()
            schema.update(refs[(model, "validation")])
            form.clear()
            form.update(form_schema(refs[(model, "validation")], defs))
        doc = super().openapi()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, body in defs.get("$defs", {}).items():
            if components.get(name, body) != body:
                raise RuntimeError(f"request model {name} clashes with a response model")
            components[name] = body
        return doc


def create_app(flow: Flow, settings: Settings, metrics: AppMetrics | None = None) -> FastAPI:
    """``metrics``: this replica's metrics and how to reach the other replicas'
    (the Ingress deployment's); without, the app counts its own requests only."""
    from deployments.http.routes import admin as routes_admin
    from deployments.http.routes import clusters as routes_clusters
    from deployments.http.routes import compat as routes_compat
    from deployments.http.routes import faces as routes_faces
    from deployments.http.routes import gallery as routes_gallery
    from deployments.http.routes import listing as routes_listing
    from deployments.http.routes import metrics as routes_metrics

    app = IngressApp(
        title="facefleet",
        version="0.1.0",
        description="Face detection, embedding, verification, analysis and 1:N identification.",
        responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut},
                   413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        # every route is checked against deployments.http.access.RULES
        dependencies=[Depends(authorize)],
        # served from the service's own files, not a CDN (deployments/http/api_docs.py)
        docs_url=None, redoc_url=None,
    )
    api_docs.install(app)
    source = flow.gallery.key_table if flow.has_gallery else None
    app.state.api = Api(flow, settings, ImageResolver(settings),
                        KeyTable(settings.api_key_sha256, source, settings.auth),
                        Guard(settings.rate_limits))
    app.state.metrics = metrics or AppMetrics(ProcessMetrics({"deployment": "Ingress",
                                                              "replica": "local"}))
    app.state.gate = StartupGate(flow)
    install_error_handlers(app)
    app.middleware("http")(request_context)
    app.include_router(routes_faces.router)
    app.include_router(routes_gallery.router)
    app.include_router(routes_listing.router)
    app.include_router(routes_clusters.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_compat.router)
    app.include_router(routes_metrics.router)
    # the route templates requests are counted under (routers' own lists: FastAPI
    # may keep included routers nested in the app's)
    app.state.metrics.routes = [r for r in app.router.routes if isinstance(r, Route)] + [
        r for m in (routes_faces, routes_gallery, routes_listing, routes_clusters, routes_admin,
                    routes_compat, routes_metrics)
        for r in m.router.routes]
    # the web console at /console and the two routes it added (deployments/http/console)
    console.install(app)
    return app


async def request_context(request: Request, call_next):
    """Request id (taken from X-Request-Id when valid), timing, who is calling, the
    start-up gate (``deployments/http/readiness.py``) and the request metrics."""
    t0 = time.perf_counter()
    rid = request.headers.get("x-request-id", "")
    # normally made valid before Serve echoes it (request_ids.SanitizeRequestId)
    request.state.request_id = rid if request_ids.valid(rid) else request_ids.new_id()
    api = api_of(request)
    auth, guard = api.auth, api.guard
    open_path = request.url.path in _OPEN_PATHS or api_docs.is_docs_path(request.url.path) \
        or console.is_console_path(request.url.path)
    client = guard.client_of(request)
    try:
        refused = None if open_path else guard.before_auth(client)
        if refused is not None:
            request.state.principal = NOBODY
        elif not auth.enabled:
            request.state.principal = ANONYMOUS
        elif open_path:
            request.state.principal = NOBODY
        else:
            key = presented_key(request.headers)
            request.state.principal = await auth.authenticate(key)
            if request.state.principal is None:
                _failed_auth(request, api, client, key)
        if refused is None and request.state.principal is not None and not open_path:
            refused = guard.after_auth(request.state.principal.key_id)
        if refused is not None:
            response = _rate_limited(request, refused)
        elif request.state.principal is None:
            response = error_response(request, ErrorCode.UNAUTHORIZED,
                                      "missing or invalid API key (Authorization: Bearer or X-API-Key)")
        elif not await readiness.admit(request):
            response = readiness.starting_response(request)
        else:
            response = await call_next(request)
    except FacefleetError as exc:  # the key table cannot be read: 503
        response = error_response(request, exc.code, exc.message)
        response.headers["Retry-After"] = "1"
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback to the client
        response = unexpected_response(request, exc)
    ms = (time.perf_counter() - t0) * 1000
    observe_request(request, response.status_code, ms / 1000)
    # Serve's proxy already echoes X-Request-Id (the client's, or the one it made,
    # which is the one read above), so it is not set twice here.
    response.headers["X-Response-Time-Ms"] = f"{ms:.1f}"
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": "request", "request_id": request.state.request_id,
                             "method": request.method, "path": request.url.path,
                             "status": response.status_code, "ms": round(ms, 1)}))
    return response


def _rate_limited(request: Request, refused: Refusal) -> Any:
    metrics: AppMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.own.http.rate_limited.labels(refused.limit).inc()
    what = {"failed_auth": "too many failed authentications from this client",
            "client": "too many requests from this client",
            "key": "too many requests with this API key"}[refused.limit]
    response = error_response(request, ErrorCode.RATE_LIMITED, f"{what}; retry later",
                              {"limit": refused.limit, "retry_after_s": refused.retry_after_s})
    response.headers["Retry-After"] = str(refused.retry_after_s)
    return response


def _failed_auth(request: Request, api: Api, client: str, key: str) -> None:
    """Count a failed authentication in /metrics and its client's window; sample it
    into the audit trail (without waiting for the write)."""
    metrics: AppMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.own.http.auth_failures.labels("missing" if not key else "invalid").inc()
    sample, failures = api.guard.failed(client)
    if not sample or not api.flow.has_gallery:
        return
    from index.audit import AuditAction, AuditEntry

    # the key id of a store key's format (never a secret); a settings key has none
    entry = AuditEntry(AuditAction.AUTH_FAILURE.value, key_id=key_id_of(key),
                       request_id=request.state.request_id, status="refused",
                       client=client, failures=failures)
    task = asyncio.ensure_future(_record(api, entry))
    _PENDING.add(task)
    task.add_done_callback(_audited)


async def _record(api: Api, entry: Any) -> None:
    await api.flow.gallery.record(entry)


#: sampled audit writes in flight (kept referenced until they finish)
_PENDING: set[asyncio.Future] = set()


def _audited(task: asyncio.Future) -> None:
    _PENDING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("a failed authentication could not be audited: %r", task.exception())
