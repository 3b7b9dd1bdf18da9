"""Request ids: a client's ``X-Request-Id`` is kept only when it is short and plain.

Serve echoes the request's ``X-Request-Id`` header in its answer (its
``RequestIdMiddleware``, in the proxy and in each replica that serves HTTP
itself) before the app sees the request. A 10 KB id, or one with odd
characters, was therefore echoed verbatim while the app, which refused it,
answered and audited under an id of its own: two ids for one request.

:class:`SanitizeRequestId` runs in front of Serve's middleware (Serve applies
the middlewares returned by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
outside its own, in the proxy and in direct-ingress replicas alike) and
replaces an id that is not 1-128 characters of ``[A-Za-z0-9._:-]`` with a new
random one, in the request itself: Serve's echo, the answer's body, the logs
and the audit trail then all carry that one id. ``deployments.local`` sets the
variable for local instances; a cluster sets it in the Serve processes'
environment (``deployments.http.request_ids.proxy_middlewares``).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HEADER = b"x-request-id"


def valid(rid: str) -> bool:
    return bool(REQUEST_ID.match(rid))


def new_id() -> str:
    return uuid.uuid4().hex


class SanitizeRequestId:
    """ASGI middleware: at most one ``X-Request-Id`` reaches the app, and a valid one
    (a client's unusable id is replaced, never echoed)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = scope.get("headers") or []
            ids = [v for k, v in headers if k.lower() == _HEADER]
            if ids and (len(ids) > 1 or not valid(ids[0].decode("latin-1"))):
                kept = [(k, v) for k, v in headers if k.lower() != _HEADER]
                scope = {**scope, "headers": [*kept, (_HEADER, new_id().encode())]}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: Serve calls it in
    each process that serves HTTP and wraps its app with the middlewares returned."""
    from starlette.middleware import Middleware

    return [Middleware(SanitizeRequestId)]
