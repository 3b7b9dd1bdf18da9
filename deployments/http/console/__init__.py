"""The web console, served by the Ingress itself at ``/console``.

The console is plain ES modules, CSS and one HTML page under ``static/``
(no build step, no CDN, no external font: it works on an offline machine).
It talks to the service through the public HTTP API only, with the key the
user signs in with (kept in the tab's ``sessionStorage``). The page and its
assets are open without a key, like ``/docs``: they hold no data.

:func:`install` adds the static routes and the one API route the console needed
that the API lacked (``GET /v1/whoami``: a public route with its own rule in
``deployments/http/access.py`` and its own tests). The files live next to this module so that the console moves as one
folder, and ship in the wheel as package data.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import PurePosixPath

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pipelines.errors import ErrorCode
from deployments.http.errors import error_response

PREFIX = "/console"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
#: the page must not be cached past a release; assets are small and revalidated
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            # the console loads nothing from elsewhere: say so to the browser
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                       "media-src 'self' blob:; style-src 'self'; "
                                       "connect-src 'self'; frame-ancestors 'none'"}


def is_console_path(path: str) -> bool:
    """The console's page and assets: open without a key."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def static_files() -> dict[str, bytes]:
    """Every file the console serves, by its path under ``static/``."""
    return dict(_files())


@lru_cache(maxsize=1)
def _files() -> tuple[tuple[str, bytes], ...]:
    root = files(__name__).joinpath("static")
    out: list[tuple[str, bytes]] = []

    def walk(node, rel: PurePosixPath) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, rel / child.name)
            elif PurePosixPath(child.name).suffix in _TYPES:
                out.append((str(rel / child.name), child.read_bytes()))

    walk(root, PurePosixPath())
    return tuple(sorted(out))


def install(app: FastAPI) -> None:
    """Serve the console on ``app`` and add the routes it needs (after the app's
    own routers: their routes join the ones ``/metrics`` counts requests under)."""
    from deployments.http.routes import whoami as routes_whoami

    assets = static_files()

    async def page(_: Request) -> Response:
        return Response(assets["index.html"], media_type=_TYPES[".html"], headers=_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        body = assets.get(name)
        if body is None:  # only the files listed at start: no path ever reaches the disk
            return error_response(request, ErrorCode.NOT_FOUND,
                                  f"no console file '{name[:64]}'")
        return Response(body, media_type=_TYPES[PurePosixPath(name).suffix], headers=_HEADERS)

    async def slash(_: Request) -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    app.add_route(PREFIX, slash, include_in_schema=False)
    app.add_route(PREFIX + "/", page, include_in_schema=False)
    app.add_route(PREFIX + "/{name:path}", asset, include_in_schema=False)
    app.include_router(routes_whoami.router)
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:  # requests are counted under these routes' templates
        metrics.routes += [r for r in app.router.routes if isinstance(r, Route) and (
            is_console_path(r.path) or r.path == "/v1/whoami")]
