"""A collection as JSON Lines: the lines an export writes and an import reads.

One face per line: ``{"id", "person_id", "name", "labels", "model",
"created_at", "embedding"}``, the id as 32 hex digits (a UUID in any usual
spelling is read too), ``created_at`` in Unix seconds, the embedding as the
unit vector the gallery holds, written with 9 significant digits so float32
values come back bit for bit. An export is written page by page and an import
is read line by line as the body streams in, so neither holds a collection in
memory; neither needs Ray (the routes in ``routes_listing`` drive them).
"""

from __future__ import annotations

import base64

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core

from pipelines.errors import FacefleetError, ValidationError

#: the longest line an import accepts (a 4096-d embedding is about 70 KiB)
MAX_LINE_BYTES = 1024 * 1024
_FLOAT = "{:.9g}".format


def export_lines(faces: Iterable[Mapping[str, Any]]) -> bytes:
    """Faces of an export page (``GalleryCore.export_page``) as JSON Lines."""
    out = []
    for f in faces:
        line = {"id": f["id"], "person_id": f["person_id"], "name": f["name"],
                "labels": f["labels"], "model": f["model"], "created_at": f["created_at"]}
        if f.get("thumbnail"):
            line["thumbnail"] = base64.b64encode(f["thumbnail"]).decode()
        head = pydantic_core.to_json(line)
        vec = ",".join(map(_FLOAT, np.asarray(f["embedding"], dtype=np.float32).tolist()))
        out.append(head[:-1] + b',"embedding":[' + vec.encode() + b"]}\n")
    return b"".join(out)


@dataclass(frozen=True)
class LineError:
    """A line an import left out, and why."""

    line: int
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


async def read_lines(chunks: AsyncIterator[bytes], max_line: int = MAX_LINE_BYTES
                     ) -> AsyncIterator[tuple[int, bytes | LineError]]:
    """``(line number, line)`` for each non-blank line of a streamed body (numbers
    from 1); a line longer than ``max_line`` is skipped whole and given as a
    :class:`LineError`, so a runaway line cannot grow without bound."""
    buf = bytearray()
    number = 0
    too_long = False
    async for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not too_long:
                buf += piece
                if len(buf) > max_line:
                    too_long, buf = True, bytearray()
            if nl < 0:
                break
            number += 1
            if too_long:
                yield number, LineError(number, "validation_error",
                                        f"line is longer than {max_line} bytes")
            elif buf.strip():
                yield number, bytes(buf)
            buf, too_long, start = bytearray(), False, nl + 1
    if too_long:
        yield number + 1, LineError(number + 1, "validation_error",
                                    f"line is longer than {max_line} bytes")
    elif buf.strip():
        yield number + 1, bytes(buf)


def parse_line(number: int, raw: bytes) -> dict[str, Any] | LineError:
    """A line as a JSON object with at least a model and an embedding list, or why not
    (the gallery checks the rest: id, person, labels, dimension)."""
    try:
        doc = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        return LineError(number, "validation_error", f"not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return LineError(number, "validation_error", "a line is a JSON object (one face)")
    if not isinstance(doc.get("model"), str):
        return LineError(number, "validation_error", "'model' (a string) is missing")
    emb = doc.get("embedding")
    if not isinstance(emb, list) or not emb or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in emb):
        return LineError(number, "validation_error", "'embedding' is not a list of numbers")
    return doc


def line_error(number: int, exc: FacefleetError) -> LineError:
    return LineError(number, exc.code.value, exc.message)


def invalid(message: str, **details: Any) -> ValidationError:
    return ValidationError(message, details)
