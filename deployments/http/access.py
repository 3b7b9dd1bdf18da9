"""What each route requires: one declarative map, enforced by one FastAPI dependency.

:data:`RULES` maps every route (method and path template) to the scope it
needs and to where it names its collection: a path parameter, or its body
(:data:`BODY`; the route calls :func:`check_collection` once it has read the
name). :func:`authorize` runs before every route of the app (it is the app's
dependency), after the middleware has found the caller's
:class:`deployments.http.auth.Principal`. A route missing from the map needs an
unrestricted admin key, so a route added without a rule is closed, not open
(and a unit test lists any such route).

The answers: a key without the scope gets 403 ``forbidden`` (before the
collection is looked at, so it says nothing about which collections exist);
a collection outside the key's list gets 404 ``collection_not_found`` with
the very body of a collection that does not exist. Key management and the
audit trail need an admin key that is not limited to collections: a limited
one could otherwise make itself an unlimited key. ``/metrics`` names every
collection, so it needs a key (any scope) that sees them all.

DeepFace routes bind their collection from the body (``collection``, or
``deepface-<model>`` by default), so they check it after parsing it; their
scopes follow their meaning (``/register`` writes, ``/search`` reads).
"""

# No `from __future__ import annotations`: FastAPI inspects the dependency's signature.
from dataclasses import dataclass

from fastapi import Request

from pipelines.errors import AuthDisabled, CollectionNotFound, Forbidden
from deployments.http.auth import NOBODY, Principal
from index.audit import Actor

READ, WRITE, ADMIN, EXPORT = "read", "write", "admin", "export"
#: the route reads its collection's name from its body and calls check_collection
BODY = "<body>"


@dataclass(frozen=True)
class Rule:
    #: None: open to everyone, keys or not (probes)
    scope: str | None
    #: the path parameter naming the collection, BODY, or None (no collection)
    collection: str | None = None
    #: the key must not be limited to collections
    every_collection: bool = False
    #: 409 auth_disabled when authentication is off (nothing to manage)
    needs_auth: bool = False


OPEN = Rule(None)
_KEYS = Rule(ADMIN, every_collection=True, needs_auth=True)
_C = "collection"
#: what an unmapped route requires
UNMAPPED = Rule(ADMIN, every_collection=True)

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): OPEN,
    ("GET", "/ready"): OPEN,
    ("GET", "/v1/models"): Rule(READ),
    ("GET", "/v1/stats"): Rule(READ),
    # names every collection and shows all traffic: a key that sees every collection
    ("GET", "/metrics"): Rule(READ, every_collection=True),
    # faces, without a gallery
    ("POST", "/v1/detect"): Rule(READ),
    ("POST", "/v1/embed"): Rule(READ),
    ("POST", "/v1/verify"): Rule(READ),
    ("POST", "/v1/analyze"): Rule(READ),
    # collections
    ("GET", "/v1/collections"): Rule(READ),  # lists only the key's collections
    ("POST", "/v1/collections"): Rule(ADMIN, BODY),
    ("GET", "/v1/collections/{collection}"): Rule(READ, _C),
    ("DELETE", "/v1/collections/{collection}"): Rule(ADMIN, _C),
    ("PATCH", "/v1/collections/{collection}"): Rule(ADMIN, _C),
    # enrolment, search, forget
    ("POST", "/v1/collections/{collection}/faces"): Rule(WRITE, _C),
    ("POST", "/v1/collections/{collection}/faces:batch"): Rule(WRITE, _C),
    ("POST", "/v1/collections/{collection}/identify"): Rule(READ, _C),
    ("GET", "/v1/collections/{collection}/faces/{face_id}"): Rule(READ, _C),
    ("GET", "/v1/collections/{collection}/faces/{face_id}/thumbnail"): Rule(READ, _C),
    ("DELETE", "/v1/collections/{collection}/faces/{face_id}"): Rule(WRITE, _C),
    ("GET", "/v1/collections/{collection}/persons/{person_id}"): Rule(READ, _C),
    ("DELETE", "/v1/collections/{collection}/persons/{person_id}"): Rule(WRITE, _C),
    # listings, person updates, export and import (an import creates its collection
    # only for an admin key, as enrolment does)
    ("GET", "/v1/collections/{collection}/persons"): Rule(READ, _C),
    ("GET", "/v1/collections/{collection}/faces"): Rule(READ, _C),
    ("POST", "/v1/collections/{collection}/clusters"): Rule(READ, _C),
    ("GET", "/v1/collections/{collection}/clusters/jobs/{job_id}"): Rule(READ, _C),
    ("PATCH", "/v1/collections/{collection}/persons/{person_id}"): Rule(WRITE, _C),
    ("POST", "/v1/collections/{collection}/persons/{person_id}:merge"): Rule(WRITE, _C),
    # every template of the collection: a scope of its own (or admin), not read
    ("GET", "/v1/collections/{collection}/export"): Rule(EXPORT, _C),
    ("POST", "/v1/collections/{collection}/import"): Rule(WRITE, _C),
    # keys and the audit trail
    ("POST", "/v1/keys"): _KEYS,
    ("GET", "/v1/keys"): _KEYS,
    ("DELETE", "/v1/keys/{key_id}"): _KEYS,
    ("GET", "/v1/audit"): Rule(ADMIN, every_collection=True),
    # what the caller's own key may do (any valid key; deployments/http/routes/whoami.py)
    ("GET", "/v1/whoami"): OPEN,
    # DeepFace-compatible routes
    ("POST", "/represent"): Rule(READ),
    ("POST", "/verify"): Rule(READ),
    ("POST", "/analyze"): Rule(READ),
    ("POST", "/register"): Rule(WRITE, BODY),
    ("POST", "/search"): Rule(READ, BODY),
    ("POST", "/build/index"): Rule(WRITE),  # builds nothing: shards index on register
}


def principal_of(request: Request) -> Principal:
    # set by the middleware on every request; absent means nobody (fail closed)
    return getattr(request.state, "principal", None) or NOBODY


def rule_of(method: str, path: str) -> Rule:
    return RULES.get((method, path), UNMAPPED)


async def authorize(request: Request) -> None:
    """The app-wide dependency: the caller may use this route (and its collection)."""
    route = request.scope.get("route")
    rule = rule_of(request.method, getattr(route, "path", request.url.path))
    if rule.needs_auth and not request.app.state.api.auth.enabled:
        raise AuthDisabled("authentication is off (auth.enabled false, or no api_key_sha256 "
                           "in the settings): there are no keys to manage")
    if rule.scope is None:
        return
    p = principal_of(request)
    if not p.has(rule.scope):
        raise Forbidden(f"this API key lacks the '{rule.scope}' scope this request needs",
                        {"scope": rule.scope})
    if rule.every_collection and p.collections is not None:
        raise Forbidden(f"this request needs a '{rule.scope}' key that is not limited to "
                        "collections", {"scope": rule.scope})
    if rule.collection not in (None, BODY):
        check_collection(request, request.path_params[rule.collection])


def check_collection(request: Request, name: str) -> str:
    """``name`` if the caller's key may see it; else exactly the answer for a collection
    that does not exist."""
    if not principal_of(request).sees(name):
        raise CollectionNotFound(f"collection {name!r} does not exist", {"collection": name})
    return name


def visible(request: Request, collections: list[dict]) -> list[dict]:
    """The collections of a listing that the caller's key may see."""
    p = principal_of(request)
    return [c for c in collections if p.sees(c["collection"])]


def actor_of(request: Request) -> Actor:
    """Who makes this request, for the audit trail; only admin keys (or anyone, with
    authentication off) create a collection on first enrolment."""
    p = principal_of(request)
    return Actor(p.key_id, getattr(request.state, "request_id", None), p.has(ADMIN),
                 p.has(WRITE))
