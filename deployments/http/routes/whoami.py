"""``GET /v1/whoami``: what the caller's key may do, so a client shows only that.

The console (``deployments/http/console``) asks it after sign-in to hide the
controls a key cannot use; any client may. It answers whether authentication
is on, the key's public id (``settings`` for a key from the settings, null
with authentication off), its scopes and its collections. It never answers
the secret. Open to any valid key (``deployments/http/access.py``): a key with no
ranked scope (``export`` only) may still learn what it is.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from deployments.http.access import ADMIN, EXPORT, READ, WRITE, principal_of
from deployments.http.common import api_of
from deployments.http.schemas import errors

router = APIRouter()


class WhoAmIOut(BaseModel):
    auth_enabled: bool = Field(..., description="false: every request may do everything")
    key_id: str | None = Field(..., examples=["f3a6b201bae72b86"], description="the key's "
                               'public id; "settings" for a key from the settings, null '
                               "with authentication off")
    scopes: list[str] = Field(..., examples=[["read", "write"]], description="every scope "
                              "the key holds, the ones its highest scope includes too")
    collections: list[str] | None = Field(..., description="the only collections it sees; "
                                          "null: every one")


@router.get("/v1/whoami", tags=["admin"], response_model=WhoAmIOut, responses=errors(401, 503))
async def whoami(request: Request) -> dict:
    """The caller's key: its id, scopes and collections, and whether keys are on."""
    p = principal_of(request)
    return {"auth_enabled": api_of(request).auth.enabled, "key_id": p.key_id,
            "scopes": [s for s in (READ, WRITE, ADMIN, EXPORT) if p.has(s)],
            "collections": None if p.collections is None else sorted(p.collections)}
