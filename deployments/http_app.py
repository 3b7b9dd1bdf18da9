"""The FastAPI application shared by every route group of the ingress.

Created once here, with the error handlers and the request middleware (request
id, timing, API keys). Route groups (``faces_api``, ``gallery_api``,
``compat_api``) register their routes on it as methods of mixin classes that
the ``Ingress`` deployment combines.
"""

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from deployments.errors import error_response, install_error_handlers, unexpected_response
from deployments.schemas import ErrorOut
from pipelines.errors import ErrorCode, FacefleetError

log = logging.getLogger("facefleet.ingress")

_REF = "#/components/schemas/{model}"


class IngressApp(FastAPI):
    """FastAPI with the request-body models of ``body_schema`` in its OpenAPI document.

    State lives on the instance, not in module globals: Serve pickles the app
    into its replicas.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body_models: list[tuple[type[BaseModel], dict[str, Any]]] = []

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        models = list(dict.fromkeys(m for m, _ in self.body_models))
        # one schema generation for all models: pydantic gives two different
        # models of the same name distinct component names
        refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
        for model, schema in self.body_models:
            schema.clear()
            schema.update(refs[(model, "validation")])
        doc = super().openapi()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, body in defs.get("$defs", {}).items():
            if components.get(name, body) != body:
                raise RuntimeError(f"request model {name} clashes with a response model")
            components[name] = body
        return doc


app = IngressApp(
    title="facefleet",
    version="0.1.0",
    description="Face detection, embedding, verification, analysis and 1:N identification.",
    responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
               501: {"model": ErrorOut}},
)
install_error_handlers(app)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_OPEN_PATHS = {"/health", "/ready", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


@app.middleware("http")
async def request_context(request: Request, call_next):
    """Request id (taken from X-Request-Id when valid), timing, API-key check."""
    t0 = time.perf_counter()
    rid = request.headers.get("x-request-id", "")
    request.state.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
    keys: list[str] = getattr(request.app.state, "api_key_sha256", [])
    try:
        if keys and request.url.path not in _OPEN_PATHS and not _authorised(request, keys):
            response = error_response(request, ErrorCode.UNAUTHORIZED,
                                      "missing or invalid API key (Authorization: Bearer or X-API-Key)")
        else:
            response = await call_next(request)
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback to the client
        response = unexpected_response(request, exc)
    ms = (time.perf_counter() - t0) * 1000
    # Serve's proxy already echoes X-Request-Id (the client's, or the one it made,
    # which is the one read above), so it is not set twice here.
    response.headers["X-Response-Time-Ms"] = f"{ms:.1f}"
    log.info(json.dumps({"event": "request", "request_id": request.state.request_id,
                         "method": request.method, "path": request.url.path,
                         "status": response.status_code, "ms": round(ms, 1)}))
    return response


def _authorised(request: Request, keys: list[str]) -> bool:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else \
        request.headers.get("x-api-key", "").strip()
    if not token:
        return False
    digest = hashlib.sha256(token.encode()).hexdigest()
    return any(hmac.compare_digest(digest, k.lower()) for k in keys)


def unwrap(result: Any) -> Any:
    if isinstance(result, FacefleetError):
        raise result
    return result


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as a route's JSON / multipart body.

    Routes read their bodies themselves (``request_body.parse_body``), so
    FastAPI does not see the models: ``IngressApp.openapi`` adds them to the
    document's components, nested models included, so that every ``$ref``
    resolves from the document root.
    """
    schema: dict[str, Any] = {}  # becomes {"$ref": ...} when the document is built
    app.body_models.append((model, schema))
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": schema}}}}


def jpeg_b64(chip: np.ndarray) -> str:
    """An RGB chip as base64 JPEG (crops in responses)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92])
    return base64.b64encode(buf.tobytes()).decode() if ok else ""
