"""What every route module works with: the :class:`Api` of the app, and the helpers
that declare request bodies in the OpenAPI document and shape answers.

The route modules import this, never ``deployments.http.app`` (which imports
them to build the app). Nothing here imports Ray.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import BaseModel

from configs.settings import Settings
from deployments.http.auth import KeyTable
from deployments.http.guard import Guard
from deployments.http.images import ImageResolver
from deployments.http.request_body import BodyLimits, parse_body
from pipelines.flow import Flow


@dataclass
class Api:
    """What the routes of one ingress replica work with."""

    flow: Flow
    s: Settings
    images: ImageResolver
    #: settings keys (rotated by reconfigure) and this replica's copy of the key table
    auth: KeyTable = field(default_factory=lambda: KeyTable([], None))
    #: this replica's rate limits and failed-authentication windows
    guard: Guard = field(default_factory=Guard)

    async def parse(self, request: Request, model: type[BaseModel]) -> tuple[Any, dict[str, bytes]]:
        return await parse_body(request, model, self.limits)

    @property
    def limits(self) -> BodyLimits:
        return BodyLimits.of(self.s.images)

    async def image(self, value: str, files: dict[str, bytes], field: str) -> bytes:
        """The encoded bytes of an image field (a multipart file, or a string form)."""
        if value == f"@file:{field}" and field in files:
            return await self.images.resolve(files[field], field)
        return await self.images.resolve(value, field)


def api_of(request: Request) -> Api:
    return request.app.state.api


#: request-body models named by the routes' ``openapi_extra`` (see :func:`body_schema`),
#: each with the schema and multipart form filled in when the document is built
BODY_MODELS: list[tuple[type[BaseModel], dict[str, Any], dict[str, Any]]] = []


def body_schema(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as a route's JSON / multipart body (the
    schema is filled in when the document is built, ``http_app.IngressApp``)."""
    schema: dict[str, Any] = {}
    form: dict[str, Any] = {}
    BODY_MODELS.append((model, schema, form))
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": form}}}}


def lines_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON Lines body, each line a ``model`` (which
    also becomes a named component, for responses that stream the same lines)."""
    schema: dict[str, Any] = {}
    BODY_MODELS.append((model, schema, {}))
    return {"requestBody": {"required": True, "content": {
        "application/x-ndjson": {"schema": schema}}}}


def form_schema(ref: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The multipart form of a body model (``ref`` to its component): a form field
    is text or a file and cannot be null, so an optional field is left out instead."""
    import copy

    body = copy.deepcopy(defs["$defs"][ref["$ref"].rsplit("/", 1)[-1]])
    for prop in body.get("properties", {}).values():
        variants = prop.get("anyOf")
        if variants and any(v.get("type") == "null" for v in variants):
            kept = [v for v in variants if v.get("type") != "null"]
            del prop["anyOf"]
            if len(kept) == 1:
                prop.update(kept[0])
            else:
                prop["anyOf"] = kept
            if prop.get("default", 0) is None:
                del prop["default"]
    return body


def jpeg_b64(chip: np.ndarray) -> str:
    """An RGB chip as base64 JPEG (crops in responses)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92])
    return base64.b64encode(buf.tobytes()).decode() if ok else ""


def compact_vector(v: np.ndarray) -> list[float]:
    """A float32 vector as short JSON numbers: rounded to 9 decimals (within 5e-10 of
    each component, at most one float32 step), ~11 characters each instead of the
    17-20 of a float64 repr: a 640-d answer shrinks from 14 to 8.6 KB."""
    return np.round(np.asarray(v, dtype=np.float64), 9).tolist()
