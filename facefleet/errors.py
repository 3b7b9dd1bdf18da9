"""Exceptions raised by the facefleet client.

The server answers every failure with ``{"error": {code, message, request_id,
details?}}``; :func:`error_from_response` turns that into the subclass of
:class:`ApiError` registered for the code, so callers can ``except
NoFaceDetected`` instead of comparing strings. Failures that never produced a
facefleet answer (connection refused, timeouts, a proxy's bare 503) are
:class:`TransportError`.
"""

from __future__ import annotations

from typing import Any

import httpx


class FacefleetError(Exception):
    """Base of everything this package raises on purpose."""


class TransportError(FacefleetError):
    """The request got no facefleet answer: connection, timeout, proxy error."""


class ApiError(FacefleetError):
    """The server answered with an error envelope."""

    code: str = "internal_error"

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 request_id: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.request_id = request_id
        self.details = details or {}

    def __str__(self) -> str:
        rid = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{rid}"


class ValidationError(ApiError):
    code = "validation_error"


class ImageDecodeError(ApiError):
    code = "image_decode_error"


class ImageTooLarge(ApiError):
    code = "image_too_large"


class TooManyPixels(ApiError):
    code = "too_many_pixels"


class NoFaceDetected(ApiError):
    code = "no_face_detected"


class ModelNotInstalled(ApiError):
    code = "model_not_installed"


class UnknownModel(ApiError):
    code = "unknown_model"


class UrlFetchFailed(ApiError):
    code = "url_fetch_failed"


class NotFound(ApiError):
    code = "not_found"


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class Conflict(ApiError):
    code = "conflict"


class ModelMismatch(Conflict):
    code = "model_mismatch"


class Unauthorized(ApiError):
    """No API key, or one the service does not know (or has revoked)."""

    code = "unauthorized"


class Forbidden(ApiError):
    """The key is known but lacks the scope the request needs."""

    code = "forbidden"


class AuthDisabled(Conflict):
    """Key management asked of a service that runs without authentication."""

    code = "auth_disabled"


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"


class RateLimited(ApiError):
    code = "rate_limited"


class Unavailable(ApiError):
    code = "unavailable"


class InternalError(ApiError):
    code = "internal_error"


ERRORS: dict[str, type[ApiError]] = {
    cls.code: cls for cls in (
        ValidationError, ImageDecodeError, ImageTooLarge, TooManyPixels, NoFaceDetected,
        ModelNotInstalled, UnknownModel, UrlFetchFailed, NotFound, CollectionNotFound, Conflict,
        ModelMismatch, Unauthorized, Forbidden, AuthDisabled, MethodNotAllowed, RateLimited,
        Unavailable, InternalError)
}

# A status without an envelope (a proxy, a load balancer) still gets a useful class.
_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed, 409: Conflict,
    422: ValidationError, 429: RateLimited, 503: Unavailable,
}


def envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The ``error`` object of a facefleet error answer, or None for anything else."""
    try:
        body = response.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return err
    return None


def error_from_response(response: httpx.Response) -> ApiError:
    err = envelope(response)
    if err is None:
        cls = _BY_STATUS.get(response.status_code,
                             InternalError if response.status_code >= 500 else ApiError)
        text = response.text.strip()[:300] or response.reason_phrase
        return cls(f"HTTP {response.status_code}: {text}", status=response.status_code,
                   request_id=response.headers.get("x-request-id", ""))
    code = err["code"]
    cls = ERRORS.get(code, ApiError)
    return cls(str(err.get("message", "")), status=response.status_code, code=code,
               request_id=str(err.get("request_id", "")), details=err.get("details"))


def error_from_job(err: dict[str, Any]) -> ApiError:
    """The error a failed job answered with (its ``error``: code and message)."""
    code = str(err.get("code", "internal_error"))
    return ERRORS.get(code, ApiError)(str(err.get("message", "the job failed")), status=200,
                                      code=code)
