"""Domain errors of facefleet, each with a stable error code.

Raised inside ``pipelines/``, ``index/`` and ``deployments/`` alike: this module
is the bottom of the domain and imports nothing of facefleet. Mapped to HTTP statuses
once, in the ingress (``deployments/http/errors.py``). Errors must survive pickling across Ray
processes, so they keep their state in ``args``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(str, Enum):
    VALIDATION_ERROR = "validation_error"
    IMAGE_DECODE_ERROR = "image_decode_error"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    NO_FACE_DETECTED = "no_face_detected"
    SPOOF_DETECTED = "spoof_detected"
    MODEL_NOT_INSTALLED = "model_not_installed"
    UNKNOWN_MODEL = "unknown_model"
    URL_FETCH_FAILED = "url_fetch_failed"
    NOT_FOUND = "not_found"
    COLLECTION_NOT_FOUND = "collection_not_found"
    CONFLICT = "conflict"
    MODEL_MISMATCH = "model_mismatch"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    AUTH_DISABLED = "auth_disabled"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"


class FacefleetError(Exception):
    """Base of every domain error: a code, a human message and optional details."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep the subclass and its fields across processes
        return (self.__class__, (self.message, self.details))


class ValidationError(FacefleetError):
    code = ErrorCode.VALIDATION_ERROR


class ImageDecodeError(FacefleetError):
    code = ErrorCode.IMAGE_DECODE_ERROR


class ImageTooLarge(FacefleetError):
    code = ErrorCode.IMAGE_TOO_LARGE


class TooManyPixels(FacefleetError):
    code = ErrorCode.TOO_MANY_PIXELS


class NoFaceDetected(FacefleetError):
    code = ErrorCode.NO_FACE_DETECTED


class SpoofDetected(FacefleetError):
    """A face the anti-spoofing model judged a print or a replay (compat routes)."""

    code = ErrorCode.SPOOF_DETECTED


class ModelNotInstalled(FacefleetError):
    """A known model whose weights are not on this machine."""

    code = ErrorCode.MODEL_NOT_INSTALLED


class UnknownModel(FacefleetError):
    """A model name that no registry knows."""

    code = ErrorCode.UNKNOWN_MODEL


class UrlFetchFailed(FacefleetError):
    code = ErrorCode.URL_FETCH_FAILED


class NotFound(FacefleetError):
    code = ErrorCode.NOT_FOUND


class CollectionNotFound(FacefleetError):
    code = ErrorCode.COLLECTION_NOT_FOUND


class Conflict(FacefleetError):
    code = ErrorCode.CONFLICT


class ModelMismatch(FacefleetError):
    code = ErrorCode.MODEL_MISMATCH


class Unavailable(FacefleetError):
    code = ErrorCode.UNAVAILABLE


class Unauthorized(FacefleetError):
    """No API key, or one that is unknown or revoked."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(FacefleetError):
    """A known API key without the scope the request needs."""

    code = ErrorCode.FORBIDDEN


class RateLimited(FacefleetError):
    """Too many requests (or failed authentications) from one key or client."""

    code = ErrorCode.RATE_LIMITED


class AuthDisabled(FacefleetError):
    """Key management asked of a service that runs without authentication."""

    code = ErrorCode.AUTH_DISABLED


def error_from_code(code: str, message: str, details: dict[str, Any] | None = None
                    ) -> FacefleetError:
    """The domain error of ``code`` (an error kept as data, say in a stored answer)."""
    def walk(cls: type[FacefleetError]) -> list[type[FacefleetError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    for cls in walk(FacefleetError):
        if cls.code.value == code and cls is not FacefleetError:
            return cls(message, details)
    return FacefleetError(message, details)
