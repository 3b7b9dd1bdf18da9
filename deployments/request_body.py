"""Reading a request body into a validated pydantic model and its uploaded files.

JSON bodies and multipart/form-data (or url-encoded) forms are both accepted,
for every route: form values are parsed as the model's types, list fields take
JSON arrays or comma-separated values, and a file part stands for its field
(``@file:<field>``, resolved by the image resolver). The body size is capped
from Content-Length and again while streaming (a chunked upload has no length).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import UploadFile

from configs.errors import ImageTooLarge, ValidationError
from configs.settings import ImageLimits

B = TypeVar("B", bound=BaseModel)


async def parse_body(request: Request, model: type[B],
                     limits: ImageLimits) -> tuple[B, dict[str, bytes]]:
    """The validated body and the uploaded files by field name."""
    ctype = request.headers.get("content-type", "")
    files: dict[str, bytes] = {}
    limit = limits.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(f"request body is {declared} bytes; the limit is {limit}",
                            {"bytes": int(declared), "max_request_bytes": limit})
    if ctype.startswith("multipart/form-data") or ctype.startswith(
            "application/x-www-form-urlencoded"):
        form = await request.form(max_part_size=limits.max_bytes + 1)
        data: dict[str, Any] = {}
        list_fields = {n for n, f in model.model_fields.items() if "list" in str(f.annotation)}
        for key in set(form.keys()):
            values = form.getlist(key)
            v = values[0]
            if isinstance(v, UploadFile):
                files[key] = await v.read()
                data[key] = f"@file:{key}"
            elif key in list_fields:
                items: list[str] = []
                for raw in values:
                    raw = str(raw).strip()
                    if raw.startswith("["):
                        try:
                            items.extend(json.loads(raw))
                            continue
                        except json.JSONDecodeError:
                            pass
                    items.extend(p.strip() for p in raw.split(",") if p.strip())
                data[key] = items
            else:
                data[key] = v
    else:
        raw = await read_capped(request, limit)
        if not raw:
            raise ValidationError("request body is empty; send JSON or multipart/form-data")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValidationError("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValidationError("request body must be a JSON object")
    try:
        return model.model_validate(data), files
    except PydanticValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise ValidationError("request is invalid", {"errors": errors}) from None


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read with a cap: a chunked upload has no length to check first."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"request body exceeds {limit} bytes",
                                {"max_request_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)
