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

from deployments.errors import error_response, install_error_handlers, unexpected_response
from deployments.schemas import ErrorOut
from configs.errors import ErrorCode, FacefleetError

log = logging.getLogger("facefleet.ingress")

app = FastAPI(
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
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": schema}}}}


def jpeg_b64(chip: np.ndarray) -> str:
    """An RGB chip as base64 JPEG (crops in responses)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92])
    return base64.b64encode(buf.tobytes()).decode() if ok else ""
