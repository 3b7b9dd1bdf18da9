"""Administration routes: API keys (``/v1/keys``) and the audit trail (``/v1/audit``).

A key's secret is made here, in the ingress, and only its SHA-256 travels on
to the Gallery deployment and the store: the secret is in the one answer to
``POST /v1/keys`` and nowhere else (not in logs, not in the audit trail).
Creating and revoking a key are recorded in the audit trail in the same
transaction. Only admin keys that are not limited to collections reach these
routes (``deployments/http/access.py``).
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import math
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import NotFound, ValidationError
from deployments.http.access import actor_of
from deployments.http.auth import SCOPES, new_key
from deployments.http.common import api_of, body_schema
from deployments.http.schemas import ApiKeysOut, AuditPageOut, NewApiKeyOut, errors
from index.audit import AuditAction
from index.gallery import check_collection_name
from index.store import KeyRecord

router = APIRouter()
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="what the key is for")
    scopes: list[Literal["read", "write", "admin", "export"]] = Field(
        ..., min_length=1, description="read < write < admin; each includes the ones before; "
        "export (GET .../export, every template of a collection) stands apart: only export "
        "or admin gives it")
    collections: list[str] | None = Field(
        None, max_length=1000,
        description="the only collections the key may see (exact names); null: every one")
    expires_at: float | str | None = Field(
        None, description="when the key stops working: Unix time or ISO 8601 (UTC unless "
        "it names a zone); at most auth.key_max_lifetime_days ahead, which is also the "
        "expiry of a key that names none")
    ttl_s: float | None = Field(
        None, gt=0, le=100 * 365 * 86400, description="the key stops working this many "
        "seconds from now (instead of expires_at)")

    @field_validator("collections")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        for name in v:
            check_collection_name(name)
        return list(dict.fromkeys(v))


_KEY_ERRORS = errors(401, 403, 409, 422, 503)


@router.post("/v1/keys", tags=["admin"], status_code=201, response_model=NewApiKeyOut,
             responses=_KEY_ERRORS, openapi_extra=body_schema(CreateKeyBody))
async def create_key(request: Request) -> Response:
    """A new API key; the ``key`` field of the answer is the secret, shown only here."""
    api = api_of(request)
    body, _ = await api.parse(request, CreateKeyBody)
    now = time.time()
    expires = _expiry(body, now, api.s.auth.key_max_lifetime_days)
    key_id, key, digest = new_key()
    scopes = tuple(s for s in SCOPES if s in body.scopes)
    rec = KeyRecord(key_id, body.name, digest, scopes,
                    None if body.collections is None else tuple(body.collections), now,
                    expires_at=expires)
    out = await api.flow.gallery.create_key(rec, actor=actor_of(request))
    api.auth.invalidate()
    out["key"] = key
    return JSONResponse(out, status_code=201)


# exclude_unset: a field the answer leaves out (never used, no collection) stays out
@router.get("/v1/keys", tags=["admin"], response_model=ApiKeysOut,
            response_model_exclude_unset=True, responses=_KEY_ERRORS)
async def list_keys(request: Request) -> dict:
    """Every live key, without secrets."""
    return {"keys": await api_of(request).flow.gallery.list_keys()}


@router.delete("/v1/keys/{key_id}", tags=["admin"], status_code=204, response_class=Response,
               responses={**_KEY_ERRORS, **errors(404)})
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke a key: every ingress replica refuses it within ``auth.max_age_s``."""
    if not _KEY_ID.match(key_id):
        raise NotFound(f"API key {key_id!r} does not exist", {"key_id": key_id[:40]})
    api = api_of(request)
    await api.flow.gallery.revoke_key(key_id, actor=actor_of(request))
    api.auth.invalidate()
    return Response(status_code=204)


@router.get("/v1/audit", tags=["admin"], response_model=AuditPageOut,
            response_model_exclude_unset=True, responses=errors(401, 403, 422, 503))
async def audit(
        request: Request,
        collection: Annotated[str | None, Query(description="only this collection")] = None,
        action: Annotated[AuditAction | None, Query(description="only this action")] = None,
        since: Annotated[str | None, Query(
            description="entries at or after this time: epoch seconds or ISO 8601 "
            "(UTC unless it names a zone)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(
            description="next_cursor of the previous page")] = None) -> dict:
    """The audit trail, oldest first, one page at a time."""
    after = 0
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 19:
            raise ValidationError("invalid cursor: pass the next_cursor of a previous page",
                                  {"cursor": cursor[:40]})
        after = int(cursor)
    entries = await api_of(request).flow.gallery.audit_entries(
        collection, action.value if action else None, _since(since), after, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    return {"entries": entries,
            "next_cursor": str(entries[-1]["seq"]) if more else None}


def _expiry(body: CreateKeyBody, now: float, max_days: float | None) -> float | None:
    """The key's expiry: asked for (``expires_at`` or ``ttl_s``), else the longest
    lifetime allowed; 422 when it is past or beyond that lifetime."""
    if body.expires_at is not None and body.ttl_s is not None:
        raise ValidationError("give expires_at or ttl_s, not both", {"field": "expires_at"})
    latest = None if max_days is None else now + max_days * 86400.0
    if body.ttl_s is not None:
        at: float | None = now + body.ttl_s
    elif body.expires_at is not None:
        at = _since(str(body.expires_at), "expires_at")
    else:
        return latest
    assert at is not None
    if at <= now:
        raise ValidationError("expires_at is not in the future", {"field": "expires_at"})
    if latest is not None and at > latest + 1.0:
        raise ValidationError(
            f"a key may live at most {max_days:g} days (auth.key_max_lifetime_days)",
            {"field": "expires_at", "max_lifetime_days": max_days})
    return at


def _since(value: str | None, name: str = "since") -> float | None:
    if value is None:
        return None
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(t):
            raise ValidationError(f"'{name}' must be a finite time", {name: value[:40]})
        return t
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"'{name}' is epoch seconds or an ISO 8601 time",
                              {name: value[:40]}) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.timestamp()

