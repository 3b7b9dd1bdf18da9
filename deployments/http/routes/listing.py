"""Gallery routes that page through a collection, change persons, and move it.

- ``GET .../persons`` and ``GET .../faces`` list a collection in pages of
  ``limit`` with an opaque ``cursor`` (keyset pages: persons by id, faces in
  enrolment order), so a client paging while others write sees every row that
  existed throughout exactly once; ``GET .../persons?q=`` searches persons by
  name or id on the server, so a client never loads a whole collection to find one;
- ``PATCH .../persons/{person_id}`` renames or relabels a person, and
  ``POST .../persons/{person_id}:merge`` moves the faces of other persons into it
  (naming a cluster is a merge plus a PATCH);
- ``GET .../export`` streams the collection as JSON Lines, one face per line,
  read from the store a page at a time;
- ``POST .../import`` reads the same lines as the body streams in and commits
  them in chunks, each face keeping its id: faces the collection holds already
  are skipped, so an import can be run again, and a gallery moves between
  backends or machines. The first face binds a new collection to its model
  and dimension; an existing collection bound to another model refuses the
  import (409), another dimension too (422), before anything is written.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from pipelines.errors import FacefleetError, ModelMismatch, error_from_code
from deployments.http.access import actor_of, principal_of
from deployments.http.bodies import Collection, MergeBody, PersonPatchBody
from deployments.http.gallery_io import (LineError, export_lines, invalid, line_error, parse_line,
                                    read_lines)
from deployments.http.common import api_of, body_schema, lines_body_schema
from deployments.http.schemas import (GALLERY_ERRORS, ExportLine, FacesPageOut, ImportOut,
                                 MergedPersonOut, PersonOut, PersonsPageOut, errors)
from index.audit import AuditAction
from index.gallery import MAX_QUERY, check_import_row

router = APIRouter()

#: faces per store read of an export, and per commit of an import
EXPORT_PAGE = 1000
IMPORT_CHUNK = 500
#: invalid lines reported in an import's answer (all are counted)
MAX_REPORTED = 100

Limit = Annotated[int, Query(ge=1, le=1000, description="rows per page")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the "
                                     "previous page; none for the first")]
#: checked (after stripping) by the gallery, whose typed error answers 422 on every path
Search = Annotated[str | None, Query(
    description=f"only persons whose name or person_id contains this text, ignoring case "
    f"(`%`, `_` and `\\` are plain characters); at most {MAX_QUERY} characters after "
    "surrounding spaces are stripped, blank means no filter. A cursor is bound to "
    "its `q`: give the same `q` with it")]


@router.get("/v1/collections/{collection}/persons", tags=["gallery"],
            response_model=PersonsPageOut, responses=GALLERY_ERRORS)
async def list_persons(collection: Collection, request: Request, limit: Limit = 100,
                       cursor: Cursor = None, q: Search = None) -> dict:
    """A page of the collection's persons in person_id order, with face counts; with
    ``q``, only the persons whose name or person_id contains it (case-insensitive)."""
    return await api_of(request).flow.gallery.list_persons(collection, limit, cursor,
                                                           actor=actor_of(request), q=q)


@router.get("/v1/collections/{collection}/faces", tags=["gallery"],
            response_model=FacesPageOut, responses=GALLERY_ERRORS)
async def list_faces(collection: Collection, request: Request,
                     person_id: Annotated[str | None, Query(max_length=128)] = None,
                     limit: Limit = 100, cursor: Cursor = None) -> dict:
    """A page of the collection's faces (of one person with ``person_id``) in
    enrolment order."""
    page = await api_of(request).flow.gallery.list_faces(collection, person_id, limit, cursor,
                                                         actor=actor_of(request))
    page["faces"] = [{"id": f["face_id"], **f} for f in page["faces"]]
    return page


@router.patch("/v1/collections/{collection}/persons/{person_id}", tags=["gallery"],
              response_model=PersonOut, responses=GALLERY_ERRORS,
              openapi_extra=body_schema(PersonPatchBody))
async def update_person(collection: Collection, person_id: str, request: Request) -> dict:
    """Rename or relabel a person (what identify answers with changes at once)."""
    api = api_of(request)
    body, _ = await api.parse(request, PersonPatchBody)
    changes = body.model_dump(include=body.model_fields_set)
    return await api.flow.gallery.update_person(collection, person_id, changes,
                                                actor_of(request))


@router.post("/v1/collections/{collection}/persons/{person_id}:merge", tags=["gallery"],
             response_model=MergedPersonOut, responses=GALLERY_ERRORS,
             openapi_extra=body_schema(MergeBody))
async def merge_persons(collection: Collection, person_id: str, request: Request) -> dict:
    """Move every face of the persons in ``from`` into ``person_id`` (made, unnamed, when
    new) and remove them, in one transaction with its audit entry; identify answers
    the merged person at once. A person in ``from`` that does not exist: 404, and
    nothing moves."""
    api = api_of(request)
    body, _ = await api.parse(request, MergeBody)
    return await api.flow.gallery.merge_persons(collection, person_id, body.sources,
                                                actor_of(request))


@router.get("/v1/collections/{collection}/export", tags=["gallery"],
            response_class=StreamingResponse, responses={
                **GALLERY_ERRORS, 200: {
                    "description": "JSON Lines, one face per line (the body of an import)",
                    "content": {"application/x-ndjson": {
                        "schema": {"$ref": "#/components/schemas/ExportLine"}}}}})
async def export_collection(collection: Collection, request: Request) -> StreamingResponse:
    """The whole collection as JSON Lines, streamed page by page from the store (a
    face forgotten or enrolled meanwhile may or may not be in it; every face that
    existed throughout is, once). ``X-Facefleet-Faces`` says how many faces the
    collection held when the export began."""
    gallery = api_of(request).flow.gallery
    stats = await gallery.stats(collection)  # 404 before any byte is sent
    # recorded (durably) before any template leaves: the faces the collection holds now
    await gallery.record_read(AuditAction.EXPORT, collection, stats["faces"],
                              actor=actor_of(request))

    async def lines() -> AsyncIterator[bytes]:
        after: int | None = 0
        while after is not None:
            page = await gallery.export_page(collection, after, EXPORT_PAGE)
            if page["faces"]:
                yield await asyncio.to_thread(export_lines, page["faces"])
            after = page["after"]

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "X-Facefleet-Faces": str(stats["faces"]), "X-Facefleet-Model": stats["model"],
        "Content-Disposition": f'attachment; filename="{collection}.jsonl"'})


@router.post("/v1/collections/{collection}/import", tags=["gallery"],
             response_model=ImportOut, responses={**GALLERY_ERRORS, **errors(404)},
             openapi_extra=lines_body_schema(ExportLine))
async def import_collection(collection: Collection, request: Request) -> dict:
    """Faces as an export wrote them, one JSON object per line, committed in chunks
    of 500 as the body streams in. Faces keep their ids; ids the collection holds
    already are skipped (an import runs again safely); a face another collection
    of this service holds is copied under a new id (``copied`` maps old to new; a
    second run skips the copies), so a collection is copied, or renamed by copy
    and drop. A key limited to collections, which must not learn that an id
    exists outside them, copies nothing: those ids count as ``skipped``. Invalid
    lines are left out and listed."""
    api = api_of(request)
    importer = _Importer(api.flow, collection, actor_of(request))
    importer.hide_elsewhere = principal_of(request).collections is not None
    await importer.bind_existing()
    async for number, raw in read_lines(request.stream()):
        doc = raw if isinstance(raw, LineError) else parse_line(number, raw)
        if isinstance(doc, LineError):
            importer.fail(doc)
        else:
            await importer.add(number, doc)
    await importer.flush()
    if importer.lines == 0:
        raise invalid("the body holds no faces: send JSON Lines, one face per line")
    return importer.answer()


class _Importer:
    """The state of one import: the collection's binding, the chunk being filled,
    the counts and the lines left out."""

    def __init__(self, flow: Any, collection: str, actor: Any) -> None:
        self.flow = flow
        self.collection = collection
        self.actor = actor
        self.model: str | None = None
        self.dim: int | None = None
        self.existed = False
        self.chunk: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self.lines = self.imported = self.skipped = self.elsewhere = self.failed = 0
        self.errors: list[LineError] = []
        #: fold ``elsewhere`` into ``skipped`` in the answer (see import_collection)
        self.hide_elsewhere = False
        #: faces another collection of this service holds, copied: old id -> new id
        self.copied: dict[str, str] = {}

    async def bind_existing(self) -> None:
        binding = await self.flow.import_binding(self.collection, self.actor)
        if binding is not None:
            (self.model, self.dim), self.existed = binding, True

    def fail(self, error: LineError) -> None:
        self.lines += 1
        self.failed += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(error)

    async def add(self, number: int, doc: dict[str, Any]) -> None:
        model, dim = doc["model"], len(doc["embedding"])
        first = self.imported + self.skipped + self.elsewhere + len(self.chunk) == 0
        if self.model is None:
            await self._bind_new(model, dim)
        if model != self.model or dim != self.dim:
            if first and self.existed:  # the wrong collection, or the wrong file: say so
                raise self._mismatch(model, dim)
            what = (f"model {model}, not the collection's {self.model}" if model != self.model
                    else f"{dim} dimensions, not the collection's {self.dim}")
            code = "model_mismatch" if model != self.model else "validation_error"
            self.fail(LineError(number, code, f"this face has {what}"))
            return
        try:
            row = check_import_row(doc, dim, time.time())
        except FacefleetError as exc:
            self.fail(line_error(number, exc))
            return
        self.lines += 1
        if row["id"] in self.ids:  # repeated within the chunk: the next chunk skips it
            await self.flush()
        self.chunk.append(row)
        self.ids.add(row["id"])
        if len(self.chunk) >= IMPORT_CHUNK:
            await self.flush()

    async def _bind_new(self, model: str, dim: int) -> None:
        """The first face binds a new collection; a model this service runs must
        come with the dimension it computes."""
        try:
            info = await self.flow.embedder_info(model)
        except FacefleetError:
            info = None  # a model this service does not run: embeddings only
        if info is not None and int(info["dim"]) != dim:
            raise invalid(f"model {model} computes {info['dim']}-d embeddings, the first face "
                          f"has {dim}", dim=dim, model_dim=int(info["dim"]), model=model)
        self.model, self.dim = model, dim

    def _mismatch(self, model: str, dim: int) -> FacefleetError:
        details = {"collection": self.collection, "collection_model": self.model,
                   "collection_dim": self.dim, "model": model, "dim": dim}
        if model != self.model:
            return ModelMismatch(f"collection {self.collection!r} holds {self.model} "
                                 f"embeddings, the import {model}", details)
        return invalid(f"collection {self.collection!r} holds {self.dim}-d embeddings, the "
                       f"import {dim}-d", **details)

    async def flush(self) -> None:
        if not self.chunk:
            return
        chunk, self.chunk, self.ids = self.chunk, [], set()
        try:
            # a key limited to collections must not learn that an id exists outside
            # them: it gets no copies (those ids are counted as skipped)
            res = await self.flow.import_faces(self.collection, self.model, self.dim, chunk,
                                               self.actor, copy=not self.hide_elsewhere)
        except FacefleetError as exc:
            # what was committed stays (an import runs again safely): say how far it got
            raise error_from_code(exc.code.value, f"{exc.message} (after {self.imported} "
                                  "faces were imported; importing again skips them)",
                                  {**exc.details, "imported": self.imported}) from exc
        self.imported += len(res["imported"])
        self.skipped += len(res["skipped"])
        self.elsewhere += len(res["elsewhere"])
        self.copied.update(res.get("copied") or {})

    def answer(self) -> dict[str, Any]:
        skipped, elsewhere = self.skipped, self.elsewhere
        if self.hide_elsewhere:
            skipped, elsewhere = skipped + elsewhere, 0
        return {"collection": self.collection, "model": self.model, "dim": self.dim,
                "lines": self.lines, "imported": self.imported, "skipped": skipped,
                "elsewhere": elsewhere, "copied": self.copied, "failed": self.failed,
                "errors": [e.as_dict() for e in self.errors]}

