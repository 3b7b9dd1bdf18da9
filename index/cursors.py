"""Opaque page cursors of the gallery's listings.

A cursor is the key of the last row a page showed (a person id, or a face's
internal id), with the listing it belongs to: the collection's id and the
filter (a person id, or a digest of a persons search). It is base64url JSON,
opaque to clients; a cursor that was tampered with, or that belongs to another
listing (another collection, another person filter or search, or a collection
dropped and made again), is refused with a ``ValidationError`` instead of
silently paging something else.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pipelines.errors import ValidationError

_VERSION = 1


def encode(kind: str, cid: int, after: str | int, scope: str | None = None) -> str:
    raw = json.dumps({"v": _VERSION, "k": kind, "c": int(cid), "s": scope, "a": after},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str, kind: str, cid: int, scope: str | None = None) -> Any:
    """The ``after`` key of ``cursor``, checked to belong to this listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationError("cursor is not one this service gave out",
                              {"cursor": cursor[:100]}) from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION or doc.get("k") != kind:
        raise ValidationError("cursor is not one this service gave out",
                              {"cursor": cursor[:100]})
    if doc.get("c") != cid or doc.get("s") != scope:
        raise ValidationError("cursor belongs to another listing (collection or filter)",
                              {"cursor": cursor[:100]})
    after = doc.get("a")
    want = str if kind == "persons" else int
    if not isinstance(after, want) or isinstance(after, bool):
        raise ValidationError("cursor is not one this service gave out",
                              {"cursor": cursor[:100]})
    return after
