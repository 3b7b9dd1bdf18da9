"""Gallery routes: collections, enrolment, identify, faces and persons.

Images go through the same detect -> embed stages as ``/v1/embed`` and on to
the Gallery deployment (sharded FAISS over the durable store, or pgvector).
Enrolment and identify also take an ``embedding`` instead of an image, checked
against the collection's model (409) and dimension (422). A collection is
bound to the embedding model it was created with; requests that name no model
use the collection's. Listings, person updates, export and import are in
``routes_listing``. Who may call which route, and see which collection, is
``deployments/access.py``; every change carries the caller (``actor_of``) to
the gallery, which records it in the audit trail in the same transaction.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import hashlib
from typing import Annotated, Any, Self

import numpy as np
import pydantic_core
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.errors import FacefleetError, ValidationError
from deployments.access import actor_of, check_collection, visible
from deployments.http_app import api_of, body_schema
from deployments.schemas import (GALLERY_ERRORS, BatchOut, CollectionOut, CollectionsOut,
                                 CollectionStatsOut, EnrolledFaceOut, FaceRecordOut,
                                 ForgottenPersonOut, IdentifyOut, PersonOut, errors)
from index.gallery import COLLECTION_PATTERN, MAX_DIM
from pipelines.flow import FaceQuery

router = APIRouter()

#: a collection name in a path, checked (and documented) before the route runs
Collection = Annotated[str, Path(pattern=COLLECTION_PATTERN, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


_IMG = "base64, data URI or http(s) URL (or a multipart file); or give 'embedding'"
_EMBEDDING = ("an embedding of the collection's model instead of an image (normalised as "
              "every vector is; its dimension must be the collection's)")


class _ImageOrEmbedding(_Body):
    img: str | None = Field(None, min_length=1, description=_IMG)
    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM,
                                          description=_EMBEDDING)

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.img is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'img' and 'embedding'")
        return self


class RegisterBody(_ImageOrEmbedding):
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None
    model: str | None = None
    detector: str | None = None


class BatchItem(_ImageOrEmbedding):
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None


class RegisterBatchBody(_Body):
    items: list[BatchItem] = Field(..., min_length=1, max_length=256)
    model: str | None = None
    detector: str | None = None


class IdentifyBody(_ImageOrEmbedding):
    top_k: int = Field(5, ge=1, le=100)
    per_person: bool = Field(False, description="at most one match (the nearest face) per person")
    threshold: float | None = Field(None, gt=0.0, le=2.0)
    model: str | None = None
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=256)
    enforce_detection: bool = True


class CreateCollectionBody(_Body):
    name: str = Field(..., pattern=COLLECTION_PATTERN, max_length=64)
    model: str | None = None


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
    model = body.model or api.s.default_embedder
    info = await api.flow.embedder_info(model)
    out = await api.flow.gallery.create_collection(body.name, model, info["dim"],
                                                   actor=actor_of(request))
    return JSONResponse(out, status_code=201)


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
        model, row = await api.flow.identify_vector(
            collection, np.asarray(body.embedding, dtype=np.float32), body.top_k,
            body.per_person, body.model, actor_of(request))
        threshold = _threshold(api, body, model)
        return {"faces": [{"box": None, "confidence": None, "matches": _matches(row, threshold)}],
                "collection": collection, "model": model, "threshold": threshold}
    data = await api.image(body.img, files, "img")
    res = await api.flow.identify(
        collection, data, FaceQuery(body.detector, body.max_faces, 0.0, body.enforce_detection),
        body.top_k, body.per_person, body.model, actor_of(request))
    model = res.image.model
    threshold = _threshold(api, body, model)
    faces = []
    for f, row in zip(res.image.faces, res.hits or [[]] * len(res.image.faces), strict=True):
        faces.append({"box": f.box.as_dict(), "confidence": round(f.confidence, 4),
                      "matches": _matches(row, threshold)})
    return {"faces": faces, "collection": collection, "model": model, "threshold": threshold}


def _threshold(api: Any, body: IdentifyBody, model: str) -> float:
    # 1:N has its own threshold: every enrolled face is a chance of a false accept
    threshold = body.threshold if body.threshold is not None else \
        api.s.identify_threshold_for(model)
    if threshold is None:
        raise ValidationError(f"model '{model}' has no calibrated identify threshold; "
                              "pass 'threshold' or set identify_thresholds")
    return threshold


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
