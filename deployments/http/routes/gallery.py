"""Gallery routes: collections, enrolment, identify, faces and persons.

Images go through the same detect -> embed stages as ``/v1/embed`` and on to
the Gallery deployment (sharded FAISS over the durable store, or pgvector).
Enrolment and identify also take an ``embedding`` instead of an image, checked
against the collection's model (409) and dimension (422). A collection is
bound to the embedding model it was created with; requests that name no model
use the collection's. Listings, person updates, export and import are in
``routes_listing``. Who may call which route, and see which collection, is
``deployments/http/access.py``; every change carries the caller (``actor_of``) to
the gallery, which records it in the audit trail in the same transaction.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import hashlib
from typing import Any

import numpy as np
import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from pipelines.errors import FacefleetError, ValidationError
from deployments.http.access import actor_of, check_collection, visible
from deployments.http.bodies import (BatchItem, Collection, CollectionPatchBody,
                                     CreateCollectionBody, IdentifyBody, RegisterBatchBody,
                                     RegisterBody)
from deployments.http.common import api_of, body_schema
from deployments.http.schemas import (GALLERY_ERRORS, BatchOut, CollectionOut, CollectionsOut,
                                 CollectionStatsOut, EnrolledFaceOut, FaceRecordOut,
                                 ForgottenPersonOut, IdentifyOut, PersonOut, errors)
from pipelines.flow import FaceQuery

router = APIRouter()

def _face_out(rec: dict[str, Any], box: dict | None = None) -> dict[str, Any]:
    out = {"id": rec.get("face_id"), "face_id": rec.get("face_id"),
           "person_id": rec.get("person_id"),
           "name": rec.get("name"), "labels": rec.get("labels") or {},
           "collection": rec.get("collection"), "created_at": rec.get("created_at")}
    if box is not None:
        out["box"] = box
    return out


def _meta(item: Any) -> dict[str, Any]:
    return {"person_id": item.person_id, "name": item.name, "labels": item.labels}


def _digest(body: BaseModel, files: dict[str, bytes]) -> str:
    """The request as it was sent (body fields and uploaded files), which tells a retry
    under the same Idempotency-Key from another request."""
    h = hashlib.sha256(pydantic_core.to_json(body.model_dump()))
    for name in sorted(files):
        h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


async def _idempotency(request: Request, body: BaseModel,
                       files: dict[str, bytes]) -> tuple[str | None, str | None]:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None, None
    if not 0 < len(key) <= 128:
        raise ValidationError("an Idempotency-Key is 1-128 characters")
    # bodies reach tens of MiB: hash off the event loop
    return key, await asyncio.to_thread(_digest, body, files)


@router.post("/v1/collections", tags=["gallery"], status_code=201, response_model=CollectionOut,
             responses=GALLERY_ERRORS, openapi_extra=body_schema(CreateCollectionBody))
async def create_collection(request: Request) -> Response:
    api = api_of(request)
    body, _ = await api.parse(request, CreateCollectionBody)
    check_collection(request, body.name)
    actor = actor_of(request)
    out = await api.flow.create_collection(body.name, body.model, actor=actor)
    settings = {k: v for k, v in (("enrol_unknown", body.enrol_unknown),
                                  ("thumbnails", body.thumbnails))
                if v != CollectionOut.model_fields[k].default}
    if settings:  # the settings, as a PATCH would set them
        out = await api.flow.gallery.update_collection(body.name, settings, actor)
    return JSONResponse(out, status_code=201)


@router.patch("/v1/collections/{collection}", tags=["gallery"], response_model=CollectionOut,
              responses=GALLERY_ERRORS, openapi_extra=body_schema(CollectionPatchBody))
async def update_collection(collection: Collection, request: Request) -> dict:
    """Change the collection's settings (``enrol_unknown``); other replicas apply it
    within ``index.sync_interval_s``."""
    api = api_of(request)
    body, _ = await api.parse(request, CollectionPatchBody)
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)
    if not changes:
        raise ValidationError("nothing to change: give 'enrol_unknown' or 'thumbnails'")
    return await api.flow.gallery.update_collection(collection, changes, actor_of(request))


@router.get("/v1/collections", tags=["gallery"], response_model=CollectionsOut,
            responses=errors(401, 503))
async def list_collections(request: Request) -> dict:
    """The collections the caller's key may see."""
    return {"collections": visible(request,
                                   await api_of(request).flow.gallery.list_collections())}


@router.get("/v1/collections/{collection}", tags=["gallery"], response_model=CollectionStatsOut,
            responses=GALLERY_ERRORS)
async def collection_stats(collection: Collection, request: Request) -> dict:
    return await api_of(request).flow.gallery.stats(collection)


@router.delete("/v1/collections/{collection}", tags=["gallery"], response_model=CollectionOut,
               responses=GALLERY_ERRORS)
async def drop_collection(collection: Collection, request: Request) -> dict:
    return await api_of(request).flow.drop_collection(collection, actor_of(request))


@router.post("/v1/collections/{collection}/faces", tags=["gallery"], status_code=201,
             response_model=EnrolledFaceOut,
             responses={**GALLERY_ERRORS, 200: {"model": EnrolledFaceOut,
                                                "description": "an Idempotency-Key replay"}},
             openapi_extra=body_schema(RegisterBody))
async def register_face(collection: Collection, request: Request) -> Response:
    """Enrol the largest face of ``img``; ``Idempotency-Key`` makes retries safe."""
    api = api_of(request)
    body, files = await api.parse(request, RegisterBody)
    key, digest = await _idempotency(request, body, files)
    res = await api.flow.replay_register(collection, key, digest, 1)
    if res is None:
        data: Any = (np.asarray(body.embedding, dtype=np.float32) if body.embedding is not None
                     else await api.image(body.img, files, "img"))
        res = await api.flow.register(collection, [(data, _meta(body))],
                                      FaceQuery(body.detector), body.model, key, digest,
                                      actor_of(request))
    face = res.results[0]
    if isinstance(face, FacefleetError):
        raise face
    out = _face_out(face)
    out["box"] = face.get("box")  # None: enrolled by embedding
    out["replayed"] = res.replayed
    out["collection_created"] = res.collection_created
    return JSONResponse(out, status_code=200 if res.replayed else 201)


@router.post("/v1/collections/{collection}/faces:batch", tags=["gallery"],
             response_model=BatchOut, responses=GALLERY_ERRORS,
             openapi_extra=body_schema(RegisterBatchBody))
async def register_batch(collection: Collection, request: Request) -> dict:
    """Bulk enrolment of images and / or embeddings: one result per item; failures
    are reported per item. Under an ``Idempotency-Key`` a retried batch (the same
    body) gets the first answer back, failures included, and enrols nothing twice,
    even while the first is still running; another body under the key gets 409."""
    api = api_of(request)
    body, files = await api.parse(request, RegisterBatchBody)
    key, digest = await _idempotency(request, body, files)
    res = await api.flow.replay_register(collection, key, digest, len(body.items))
    if res is None:
        async def read(i: int, item: BatchItem) -> Any:
            if item.embedding is not None:
                return np.asarray(item.embedding, dtype=np.float32)
            try:
                return await api.image(item.img, files, f"items[{i}].img")
            except FacefleetError as exc:
                return exc

        datas = await asyncio.gather(*(read(i, it) for i, it in enumerate(body.items)))
        res = await api.flow.register(
            collection, [(d, {**_meta(it), "field": f"items[{i}].img"})
                         for i, (d, it) in enumerate(zip(datas, body.items, strict=True))],
            FaceQuery(body.detector), body.model, key, digest, actor_of(request))
    results: list[dict[str, Any]] = []
    for i, r in enumerate(res.results):
        if isinstance(r, FacefleetError):
            results.append({"index": i, "status": "error",
                            "error": {"code": r.code.value, "message": r.message}})
        else:
            results.append({"index": i, "status": "created", "id": r["face_id"],
                            "face_id": r["face_id"],
                            "person_id": r["person_id"], "box": r.get("box")})
    created = sum(1 for r in results if r["status"] == "created")
    return {"collection": collection, "created": created, "failed": len(results) - created,
            "results": results, "replayed": res.replayed,
            "collection_created": res.collection_created}


@router.post("/v1/collections/{collection}/identify", tags=["gallery"],
             response_model=IdentifyOut, responses=GALLERY_ERRORS,
             openapi_extra=body_schema(IdentifyBody))
async def identify(collection: Collection, request: Request) -> dict:
    """Every face of the probe image (or the one probe ``embedding``) against the
    collection, nearest first."""
    api = api_of(request)
    body, files = await api.parse(request, IdentifyBody)
    if body.embedding is not None:
        if body.enrol_unknown:
            raise ValidationError("'enrol_unknown' enrols detected faces: send an image",
                                  {"field": "enrol_unknown"})
        model, row, threshold = await api.flow.identify_vector(
            collection, np.asarray(body.embedding, dtype=np.float32), body.top_k,
            body.per_person, body.model, body.threshold, actor_of(request))
        return {"faces": [{"box": None, "confidence": None, "matches": _matches(row, threshold)}],
                "collection": collection, "model": model, "threshold": threshold}
    data = await api.image(body.img, files, "img")
    res, threshold = await api.flow.identify(
        collection, data, FaceQuery(body.detector, body.max_faces, 0.0, body.enforce_detection),
        body.top_k, body.per_person, body.model, body.threshold, actor_of(request),
        body.enrol_unknown)
    faces = [{"box": f.box, "confidence": f.confidence, "matches": _matches(f.hits, threshold),
              "enrolled": f.enrolled} for f in res.faces]
    return {"faces": faces, "collection": collection, "model": res.model, "threshold": threshold}


def _matches(row: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    return [{"id": h["face_id"], "face_id": h["face_id"], "person_id": h["person_id"],
             "name": h.get("name"),
             "labels": h.get("labels") or {}, "distance": round(h["distance"], 6),
             "match": h["distance"] <= threshold} for h in row]


@router.get("/v1/collections/{collection}/faces/{face_id}", tags=["gallery"],
            response_model=FaceRecordOut, responses=GALLERY_ERRORS)
async def get_face(collection: Collection, face_id: str, request: Request) -> dict:
    return _face_out(await api_of(request).flow.gallery.get_face(
        collection, face_id, actor=actor_of(request)))


@router.get("/v1/collections/{collection}/faces/{face_id}/thumbnail", tags=["gallery"],
            response_class=Response, responses={
                **GALLERY_ERRORS, 200: {"description": "the face's 112 px JPEG thumbnail",
                                        "content": {"image/jpeg": {}}}})
async def face_thumbnail(collection: Collection, face_id: str, request: Request) -> Response:
    """The small crop kept when the face was enrolled from an image, for review (404
    for a face enrolled by embedding, or in a collection that keeps none)."""
    jpeg = await api_of(request).flow.gallery.thumbnail(collection, face_id,
                                                        actor=actor_of(request))
    return Response(jpeg, media_type="image/jpeg",
                    headers={"Cache-Control": "private, no-store"})


@router.delete("/v1/collections/{collection}/faces/{face_id}", tags=["gallery"],
               status_code=204, response_class=Response, responses=GALLERY_ERRORS)
async def delete_face(collection: Collection, face_id: str, request: Request) -> Response:
    await api_of(request).flow.gallery.delete_face(collection, face_id, actor=actor_of(request))
    return Response(status_code=204)


@router.get("/v1/collections/{collection}/persons/{person_id}", tags=["gallery"],
            response_model=PersonOut, responses=GALLERY_ERRORS)
async def get_person(collection: Collection, person_id: str, request: Request) -> dict:
    return await api_of(request).flow.gallery.get_person(collection, person_id,
                                                         actor=actor_of(request))


@router.delete("/v1/collections/{collection}/persons/{person_id}", tags=["gallery"],
               response_model=ForgottenPersonOut, responses=GALLERY_ERRORS)
async def delete_person(collection: Collection, person_id: str, request: Request) -> dict:
    return await api_of(request).flow.gallery.delete_person(collection, person_id,
                                                            actor=actor_of(request))
