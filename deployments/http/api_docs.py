"""Swagger UI (``/docs``) and ReDoc (``/redoc``) served by the service itself.

FastAPI's own pages load their JavaScript and CSS from a CDN, so they stay
blank on a machine without internet access. Here both pages point at assets
under :data:`ASSET_PREFIX`, read from the pinned ``fastapi-offline`` wheel,
which ships Swagger UI's bundle and ReDoc's standalone build as plain files
(its ``FastAPIOffline`` class itself is not used: the ingress has its own
FastAPI subclass). The routes are plain Starlette routes, outside the OpenAPI
document, open without a key and answered while the service starts, like
FastAPI's own docs routes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import (get_redoc_html, get_swagger_ui_html,
                                  get_swagger_ui_oauth2_redirect_html)
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipelines.errors import ErrorCode
from deployments.http.errors import error_response

ASSET_PREFIX = "/docs/assets/"
#: the files the pages use, and their types (nothing else is served from the wheel)
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def is_docs_path(path: str) -> bool:
    """Paths of the docs pages and their assets (open, and answered during start-up)."""
    return path in ("/docs", "/redoc", "/docs/oauth2-redirect") or \
        path.startswith(ASSET_PREFIX)


@lru_cache(maxsize=len(ASSETS))
def _asset(name: str) -> bytes:
    return files("fastapi_offline").joinpath("static", name).read_bytes()


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets to ``app`` (made with
    ``docs_url=None, redoc_url=None``)."""
    title = f"{app.title} - API"

    async def swagger(_: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=title,
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=ASSET_PREFIX + "swagger-ui-bundle.js",
            swagger_css_url=ASSET_PREFIX + "swagger-ui.css",
            swagger_favicon_url=ASSET_PREFIX + "favicon.png",
            # no badge fetched from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None})

    async def redirect(_: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(_: Request) -> HTMLResponse:
        # with_google_fonts=False: the page would otherwise load fonts from Google
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=title,
                              redoc_js_url=ASSET_PREFIX + "redoc.standalone.js",
                              redoc_favicon_url=ASSET_PREFIX + "favicon.png",
                              with_google_fonts=False)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return error_response(request, ErrorCode.NOT_FOUND, f"no docs asset '{name[:64]}'")
        return Response(_asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})

    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route("/docs/oauth2-redirect", redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
    app.add_route(ASSET_PREFIX + "{name}", asset, include_in_schema=False)
