"""Domain errors -> HTTP: the one place where codes become statuses.

Every error response has the shape ``{"error": {code, message, request_id,
details?}}``; unexpected exceptions are logged with their traceback and answer
``internal_error`` without one. The DeepFace-compatible routes (tagged
``deepface-compat``) add DeepFace's top-level ``exception`` message and use
400 for every client-side problem, as DeepFace does (401, 403 and 5xx keep
their status).
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import ErrorCode, FacefleetError

log = logging.getLogger("facefleet.http")

STATUS: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.IMAGE_DECODE_ERROR: 400,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_PIXELS: 413,
    ErrorCode.NO_FACE_DETECTED: 422,
    ErrorCode.SPOOF_DETECTED: 422,
    # 400, not 501: the service works, and the client can pick an installed model
    # (/v1/models lists them); a 5xx would page whoever watches the error rate
    ErrorCode.MODEL_NOT_INSTALLED: 400,
    ErrorCode.UNKNOWN_MODEL: 400,
    ErrorCode.URL_FETCH_FAILED: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.COLLECTION_NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.MODEL_MISMATCH: 409,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.AUTH_DISABLED: 409,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
}


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_response(request: Request, code: ErrorCode, message: str,
                   details: dict | None = None, status: int | None = None) -> JSONResponse:
    body: dict = {"code": code.value, "message": message, "request_id": request_id_of(request)}
    if details:
        body["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if code == ErrorCode.UNAUTHORIZED else None
    return JSONResponse({"error": body}, status_code=status or STATUS[code], headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FacefleetError)
    async def _domain(request: Request, exc: FacefleetError) -> JSONResponse:
        log.info("request failed: %s", exc.code.value,
                 extra={"request_id": request_id_of(request), "code": exc.code.value})
        if _is_compat(request):  # raised before the route ran (authorization)
            return compat_error_response(request, exc)
        return error_response(request, exc.code, exc.message, _jsonable(exc.details))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
                  for e in exc.errors()]
        return error_response(request, ErrorCode.VALIDATION_ERROR, "request is invalid",
                              {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
                401: ErrorCode.UNAUTHORIZED, 422: ErrorCode.VALIDATION_ERROR}.get(
            exc.status_code, ErrorCode.VALIDATION_ERROR if exc.status_code < 500
            else ErrorCode.INTERNAL_ERROR)
        response = error_response(request, code, str(exc.detail), status=exc.status_code)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path
            # served by several routes (GET and DELETE) allows all their methods
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(request, exc)


def _is_compat(request: Request) -> bool:
    route = request.scope.get("route")
    return "deepface-compat" in (getattr(route, "tags", None) or ())


def compat_error_response(request: Request, exc: FacefleetError) -> JSONResponse:
    """A domain error in DeepFace's shape (see the module docstring)."""
    status = STATUS.get(exc.code, 500)
    if (400 <= status < 500 and status not in (401, 403)) \
            or exc.code == ErrorCode.MODEL_NOT_INSTALLED:
        status = 400  # DeepFace answers every bad request (and unknown model) with 400
    err: dict = {"code": exc.code.value, "message": exc.message,
                 "request_id": request_id_of(request)}
    if exc.details:
        err["details"] = _jsonable(exc.details)
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == ErrorCode.UNAUTHORIZED else None
    # DeepFace's clients read a top-level "exception" message: send both shapes
    return JSONResponse({"error": err, "exception": exc.message}, status_code=status,
                        headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    from starlette.routing import Match

    def walk(routes) -> list:
        out = []
        for route in routes:
            # FastAPI keeps an included router as one node over the router's routes
            inner = getattr(getattr(route, "original_router", None), "routes", None)
            out.extend(walk(inner) if inner is not None else [route])
        return out

    # template -> its methods, for every route whose path matches (Match.PARTIAL: the
    # path matched with another method)
    found: dict[str, set[str]] = {}
    for route in walk(request.app.routes):
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            found.setdefault(route.path, set()).update(route.methods)
    if not found:
        return []
    # ".../persons/{person_id}:merge" also matches ".../persons/{person_id}" (a person
    # id may hold ':'): the path is the resource of the template that spells more of it
    best = max(len(re.sub(r"{[^}]*}", "", t)) for t in found)
    return sorted(set().union(*(m for t, m in found.items()
                                if len(re.sub(r"{[^}]*}", "", t)) == best)))


def unexpected_response(request: Request, exc: Exception) -> JSONResponse:
    """An exception no handler knows: 503 for a backend outage, else a logged 500."""
    if _is_backend_outage(exc):
        # a replica or actor died, is restarting, or sheds load: worth a retry
        log.warning("backend unavailable: %s on %s %s request_id=%s", type(exc).__name__,
                    request.method, request.url.path, request_id_of(request))
        response = error_response(request, ErrorCode.UNAVAILABLE,
                                  "a backend deployment is unavailable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response
    # the id in the text too: Serve's log filter sets record.request_id to its own
    log.error("unhandled error on %s %s request_id=%s", request.method, request.url.path,
              request_id_of(request), exc_info=exc)
    return error_response(request, ErrorCode.INTERNAL_ERROR,
                          "internal error; see the server log for this request id")


def _is_backend_outage(exc: Exception) -> bool:
    """Ray's errors for a dead, restarting or overloaded replica (not a bug in one)."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    if isinstance(exc, rx.RayTaskError):  # an exception raised by our own code
        return False
    return isinstance(exc, (rx.RayActorError, rx.ActorUnavailableError, rx.ObjectLostError,
                            rx.GetTimeoutError, sx.BackPressureError,
                            sx.DeploymentUnavailableError))


def _jsonable(details: dict) -> dict:
    out = {}
    for k, v in details.items():
        out[k] = v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v)
    return out
