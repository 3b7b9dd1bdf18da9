"""Input checks of the gallery: names, ids, labels, limits, model bindings and
vectors (normalised to unit rows), each failing with a typed ``ValidationError``
or ``ModelMismatch`` that says what is wrong; and the random ids of new faces."""

from __future__ import annotations

import base64
import binascii

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.errors import ModelMismatch, ValidationError
from index.store import CollectionInfo

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_COLLECTION_RE = re.compile(COLLECTION_PATTERN)
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")
_PERSON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
FACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_DIM = 4096
MAX_K = 1000
MAX_LABELS = 32
#: rows per page of a listing, and per page an export reads
MAX_PAGE = 1000
MAX_EXPORT_PAGE = 5000
#: characters of a persons search (after surrounding spaces are stripped)
MAX_QUERY = 200
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def new_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex characters, generated in one go (bulk
    registers make a million of them)."""
    raw = os.urandom(16 * n).hex()
    return [raw[i:i + 32] for i in range(0, 32 * n, 32)]


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise ValidationError(
            "a collection name is 1-64 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit", {"collection": str(name)[:100]})
    return name


def check_model(model: Any, dim: Any) -> tuple[str, int]:
    if not isinstance(model, str) or not _MODEL_RE.match(model):
        raise ValidationError("invalid embedding model name", {"model": str(model)[:100]})
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or not 0 < dim <= MAX_DIM:
        raise ValidationError(f"dim must be an integer in 1..{MAX_DIM}", {"dim": str(dim)})
    return model, int(dim)


def check_person_id(person_id: Any) -> str:
    if not isinstance(person_id, str) or not _PERSON_RE.match(person_id):
        raise ValidationError(
            "a person_id is 1-128 characters: letters, digits, '_', '.', ':', '@', '-'",
            {"person_id": str(person_id)[:140]})
    return person_id


def check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise ValidationError("a person name is a string of 1-256 characters")
    return name


def check_labels(labels: Any) -> dict[str, str] | None:
    if labels is None:
        return None
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise ValidationError(f"labels is a map of at most {MAX_LABELS} string keys to strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.match(key):
            raise ValidationError("a label key is 1-64 characters: letters, digits, '_.:-'",
                                  {"label": str(key)[:80]})
        if not isinstance(value, str) or len(value) > 256:
            raise ValidationError("a label value is a string of at most 256 characters",
                                  {"label": key})
    return dict(labels)


def check_limit(limit: Any, most: int | None = None) -> int:
    most = most or MAX_PAGE
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or not 0 < limit <= most:
        raise ValidationError(f"limit must be an integer in 1..{most}", {"limit": str(limit)})
    return int(limit)


def check_query(q: Any) -> str | None:
    """A persons search, stripped; None (no filter) when absent or blank."""
    if q is None:
        return None
    if not isinstance(q, str):
        raise ValidationError("q is a string", {"q": str(q)[:100]})
    q = q.strip()
    if len(q) > MAX_QUERY:
        raise ValidationError(f"q is at most {MAX_QUERY} characters", {"length": len(q)})
    if _CONTROL_RE.search(q):  # PostgreSQL refuses NUL in text, and no name holds these
        raise ValidationError("q holds control characters")
    return q or None


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 128:
        raise ValidationError("an idempotency key is a string of 1-128 characters")
    return key


def check_face_id(face_id: Any) -> str:
    """A face id as stored: 32 lowercase hex digits; a UUID in any usual spelling
    (dashes, braces, upper case: the recipe's ``uuid`` column) is taken as its digits."""
    if isinstance(face_id, str):
        digits = face_id.strip("{}").replace("-", "").lower()
        if FACE_ID_RE.match(digits):
            return digits
    raise ValidationError("a face id is 32 hex digits (a UUID)", {"id": str(face_id)[:100]})


def check_time(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValidationError("created_at is a Unix time in seconds", {"created_at": str(value)})
    return float(value)


#: the largest thumbnail kept (a 112 px JPEG is 3-6 KB)
MAX_THUMBNAIL_BYTES = 64 * 1024


def check_thumbnail(value: Any) -> bytes | None:
    """A face thumbnail: JPEG bytes, or their base64 (an export line's), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error) as e:
            raise ValidationError("'thumbnail' is base64 of a JPEG") from e
    if not isinstance(value, bytes | bytearray) or not bytes(value[:3]) == b"\xff\xd8\xff":
        raise ValidationError("'thumbnail' is a JPEG")
    if len(value) > MAX_THUMBNAIL_BYTES:
        raise ValidationError(f"'thumbnail' is at most {MAX_THUMBNAIL_BYTES} bytes",
                              {"bytes": len(value)})
    return bytes(value)


def check_import_row(row: Mapping[str, Any], dim: int, now: float | None = None
                     ) -> dict[str, Any]:
    """One face of an import, checked as the gallery will store it: its id as 32 hex
    digits, a valid person id, name and labels, a Unix ``created_at`` (now when
    missing) and a unit embedding of ``dim`` dimensions; a ``ValidationError``
    says what is wrong."""
    if not isinstance(row, Mapping):
        raise ValidationError("a face to import is a JSON object")
    return {"id": check_face_id(row.get("id")),
            "person_id": check_person_id(row.get("person_id")),
            "name": check_name(row.get("name")), "labels": check_labels(row.get("labels")),
            "created_at": check_time(row.get("created_at"), time.time() if now is None else now),
            "embedding": unit_rows(row.get("embedding"), dim, "embedding")[0],
            "thumbnail": check_thumbnail(row.get("thumbnail"))}


def unit_rows(vectors: Any, dim: int, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous (n, dim) float32 array of unit rows."""
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{what} must be numeric arrays") from e
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValidationError(f"{what} must have {dim} dimensions",
                              {"shape": list(x.shape), "dim": dim})
    if not np.isfinite(x).all():
        raise ValidationError(f"{what} contain NaN or infinite values")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        # large float32 values overflow the norm to inf (and the vector to zeros)
        norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValidationError(f"{what} must not be zero vectors")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_model_binding(info: CollectionInfo, model: str, dim: int) -> None:
    if info.model != model or info.dim != dim:
        raise ModelMismatch(
            f"collection {info.name!r} holds {info.model} ({info.dim}-d) embeddings, "
            f"not {model} ({dim}-d)",
            {"collection": info.name, "collection_model": info.model,
             "collection_dim": info.dim, "model": model, "dim": dim})

