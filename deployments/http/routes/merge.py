"""``POST /v1/collections/{c}/persons/{person_id}/merge``: one person into another.

Two persons found to be the same (two enrolments under different ids) become
one: every face of ``person_id`` is enrolled again under ``into``, from its
stored template, then ``person_id`` is forgotten (the same erasure as
``DELETE .../persons/{id}``). The kept person keeps its name and labels.

The faces move as an import does (``GalleryService.import_faces``, audited as
``face.import``), each under a new id derived from its old id and the kept
person, so a merge that failed half-way (the import committed, the forget
not) runs again without enrolling anything twice. The templates are read
from the store page by page (the export's pages): a merge reads the whole
collection once, the price of not adding a store operation per backend.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import hashlib
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from pipelines.errors import ValidationError
from deployments.http.access import actor_of
from deployments.http.common import api_of, body_schema
from deployments.http.bodies import Body, Collection
from deployments.http.schemas import GALLERY_ERRORS, PersonOut

router = APIRouter()

#: faces per store read while collecting the merged person's templates
PAGE = 1000


class MergeBody(Body):
    into: str = Field(..., min_length=1, max_length=128, description="the person to keep")


class MergedOut(BaseModel):
    collection: str
    merged: str = Field(..., description="the person merged away (forgotten)")
    moved_faces: int = Field(..., description="faces now enrolled under the kept person")
    person: PersonOut = Field(..., description="the kept person, with every face")


def moved_id(face_id: str, into: str) -> str:
    """The id a face gets under the kept person: the same for a retried merge."""
    return hashlib.sha256(f"merge\0{into}\0{face_id}".encode()).hexdigest()[:32]


@router.post("/v1/collections/{collection}/persons/{person_id}/merge", tags=["gallery"],
             response_model=MergedOut, responses=GALLERY_ERRORS,
             openapi_extra=body_schema(MergeBody))
async def merge_person(collection: Collection, person_id: str, request: Request) -> dict:
    """Move every face of ``person_id`` to ``into`` and forget ``person_id``."""
    api = api_of(request)
    body, _ = await api.parse(request, MergeBody)
    if body.into == person_id:
        raise ValidationError("a person cannot be merged into itself",
                              {"person_id": person_id})
    gallery, actor = api.flow.gallery, actor_of(request)
    # both must exist (404 person_not_found otherwise) before anything changes
    source = await gallery.get_person(collection, person_id, actor=actor)
    kept = await gallery.get_person(collection, body.into, actor=actor)
    rows = await _templates(gallery, collection, person_id, len(source["faces"]))
    for row in rows:
        row.update(id=moved_id(row["id"], body.into), person_id=body.into,
                   name=kept["name"], labels=kept["labels"])
    if rows:
        info = await gallery.get_collection(collection)
        await api.flow.import_faces(collection, info["model"], int(info["dim"]), rows, actor)
    await gallery.delete_person(collection, person_id, actor=actor)
    person = await gallery.get_person(collection, body.into, actor=actor)
    return {"collection": collection, "merged": person_id, "moved_faces": len(rows),
            "person": person}


async def _templates(gallery: Any, collection: str, person_id: str,
                     expected: int) -> list[dict[str, Any]]:
    """The stored faces of ``person_id`` with their embeddings (stops once all are found)."""
    found: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None and len(found) < expected:
        page = await gallery.export_page(collection, after, PAGE)
        found += [dict(f) for f in page["faces"] if f["person_id"] == person_id]
        after = page["after"]
    return found
