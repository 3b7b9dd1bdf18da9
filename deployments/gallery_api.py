"""Gallery routes of the ingress: register, identify, forget, collections.

A mixin of the ``Ingress`` deployment (see ``faces_api``): images go through
the same detect -> embed path as ``/v1/embed``; the vectors go to the
``Gallery`` deployment (sharded FAISS over the durable store). A collection is
bound to the embedding model it was created with.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from deployments.http_app import app, body_schema, unwrap
from configs.errors import CollectionNotFound, FacefleetError, Unavailable, ValidationError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(_Body):
    img: str = Field(..., description="base64, data URI or http(s) URL (or a multipart file)")
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None
    model: str | None = None
    detector: str | None = None


class BatchItem(_Body):
    img: str
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None


class RegisterBatchBody(_Body):
    items: list[BatchItem] = Field(..., min_length=1, max_length=256)
    model: str | None = None
    detector: str | None = None


class IdentifyBody(_Body):
    img: str
    top_k: int = Field(5, ge=1, le=100)
    per_person: bool = Field(False, description="at most one match (the nearest face) per person")
    threshold: float | None = Field(None, gt=0.0, le=2.0)
    model: str | None = None
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=256)
    enforce_detection: bool = True


class CreateCollectionBody(_Body):
    name: str
    model: str | None = None


class _Embed(BaseModel):
    """What ``FacesApi._embed_faces`` reads from a body."""

    model: str | None = None
    detector: str | None = None
    max_faces: int | None = None
    min_confidence: float = 0.0
    enforce_detection: bool = True


def _face_out(rec: dict[str, Any], box: dict | None = None) -> dict[str, Any]:
    out = {"id": rec.get("face_id"), "person_id": rec.get("person_id"),
           "name": rec.get("name"), "labels": rec.get("labels") or {},
           "collection": rec.get("collection"), "created_at": rec.get("created_at")}
    if box is not None:
        out["box"] = box
    return out


def _nearest_per_person(row: list[dict], k: int) -> list[dict]:
    seen: set[str] = set()
    out = []
    for hit in row:  # sorted nearest first
        if hit["person_id"] not in seen:
            seen.add(hit["person_id"])
            out.append(hit)
    return out[:k]


class GalleryApi:
    def _gallery_handle(self):
        if self.gallery is None:
            raise Unavailable("the gallery is not enabled in this deployment (args.gallery)")
        return self.gallery

    async def _collection_model(self, collection: str, requested: str | None) -> str | None:
        """The model to embed with: the request's, else the collection's own, so
        a collection created with a non-default model needs no model per call."""
        if requested is not None:
            return requested
        try:
            return (await self._gallery_handle().get_collection.remote(collection))["model"]
        except CollectionNotFound:
            return None  # created on first enrolment with the default model

    async def _largest_face_vector(self, img: str, files: dict[str, bytes], field: str,
                                   model: str | None, detector: str | None):
        data = await self._image(img, files, field)
        det, vecs, model_name = await self._embed_faces(
            data, _Embed(model=model, detector=detector, max_faces=1), field)
        return det.faces[0].box.as_dict(), vecs[0], model_name

    @app.post("/v1/collections", tags=["gallery"], status_code=201,
              openapi_extra=body_schema(CreateCollectionBody))
    async def create_collection(self, request: Request) -> Response:
        body, _ = await self._parse(request, CreateCollectionBody)
        model = body.model or self.s.default_embedder
        info = await self._embedder(model)
        out = await self._gallery_handle().create_collection.remote(body.name, model, info["dim"])
        return JSONResponse(out, status_code=201)

    @app.get("/v1/collections", tags=["gallery"])
    async def list_collections(self) -> dict:
        return {"collections": await self._gallery_handle().list_collections.remote()}

    @app.get("/v1/collections/{collection}", tags=["gallery"])
    async def collection_stats(self, collection: str) -> dict:
        return await self._gallery_handle().stats.remote(collection)

    @app.delete("/v1/collections/{collection}", tags=["gallery"])
    async def drop_collection(self, collection: str) -> dict:
        return await self._gallery_handle().drop_collection.remote(collection)

    @app.post("/v1/collections/{collection}/faces", tags=["gallery"], status_code=201,
              openapi_extra=body_schema(RegisterBody))
    async def register_face(self, collection: str, request: Request) -> Response:
        """Enrol the largest face of ``img``; ``Idempotency-Key`` makes retries safe."""
        body, files = await self._parse(request, RegisterBody)
        box, vec, model = await self._largest_face_vector(
            body.img, files, "img", await self._collection_model(collection, body.model),
            body.detector)
        g = self._gallery_handle()
        info = await self._embedder(model)
        res = await g.register.remote(
            collection, model, info["dim"],
            [{"embedding": vec, "person_id": body.person_id, "name": body.name,
              "labels": body.labels}],
            idempotency_key=request.headers.get("idempotency-key"), create_collection=True)
        face = res["faces"][0]
        rec = await g.get_face.remote(collection, face["face_id"])
        out = _face_out(rec, box)
        out["replayed"] = bool(res.get("replayed"))
        return JSONResponse(out, status_code=200 if out["replayed"] else 201)

    @app.post("/v1/collections/{collection}/faces:batch", tags=["gallery"],
              openapi_extra=body_schema(RegisterBatchBody))
    async def register_batch(self, collection: str, request: Request) -> dict:
        """Bulk enrolment: one result per item; failures are reported per item.
        An ``Idempotency-Key`` makes a retried batch return the first result."""
        body, files = await self._parse(request, RegisterBatchBody)
        requested = await self._collection_model(collection, body.model)

        async def one(i: int, item: BatchItem):
            try:
                return await self._largest_face_vector(item.img, files, f"items[{i}].img",
                                                       requested, body.detector)
            except FacefleetError as exc:
                return exc

        found = await asyncio.gather(*(one(i, it) for i, it in enumerate(body.items)))
        ok = [(i, r) for i, r in enumerate(found) if not isinstance(r, FacefleetError)]
        results: list[dict[str, Any]] = [{} for _ in body.items]
        for i, r in enumerate(found):
            if isinstance(r, FacefleetError):
                results[i] = {"index": i, "status": "error",
                              "error": {"code": r.code.value, "message": r.message}}
        if ok:
            model = ok[0][1][2]
            info = await self._embedder(model)
            res = await self._gallery_handle().register.remote(
                collection, model, info["dim"],
                [{"embedding": r[1], "person_id": body.items[i].person_id,
                  "name": body.items[i].name, "labels": body.items[i].labels} for i, r in ok],
                idempotency_key=request.headers.get("idempotency-key"), create_collection=True)
            for (i, r), face in zip(ok, res["faces"], strict=True):
                results[i] = {"index": i, "status": "created", "id": face["face_id"],
                              "person_id": face["person_id"], "box": r[0]}
        created = sum(1 for r in results if r.get("status") == "created")
        return {"collection": collection, "created": created,
                "failed": len(results) - created, "results": results}

    @app.post("/v1/collections/{collection}/identify", tags=["gallery"],
              openapi_extra=body_schema(IdentifyBody))
    async def identify(self, collection: str, request: Request) -> dict:
        """Every face of the probe image against the collection, nearest first."""
        body, files = await self._parse(request, IdentifyBody)
        data = await self._image(body.img, files, "img")
        det, vecs, model = await self._embed_faces(
            data, _Embed(model=await self._collection_model(collection, body.model),
                         detector=body.detector, max_faces=body.max_faces,
                         enforce_detection=body.enforce_detection))
        # 1:N has its own threshold: every enrolled face is a chance of a false accept
        threshold = body.threshold if body.threshold is not None else \
            self.s.identify_threshold_for(model)
        if threshold is None:
            raise ValidationError(f"model '{model}' has no calibrated identify threshold; "
                                  "pass 'threshold' or set identify_thresholds")
        # per person: look further, then keep each person's nearest face
        k = min(body.top_k * 5, 500) if body.per_person else body.top_k
        hits = [] if not len(vecs) else await self._gallery_handle().search.remote(
            collection, model, vecs, k)
        if body.per_person:
            hits = [_nearest_per_person(row, body.top_k) for row in hits]
        faces = []
        for f, row in zip(det.faces, hits or [[]] * len(det.faces), strict=True):
            matches = [{"id": h["face_id"], "person_id": h["person_id"], "name": h.get("name"),
                        "labels": h.get("labels") or {}, "distance": round(h["distance"], 6),
                        "match": h["distance"] <= threshold} for h in row]
            faces.append({"box": f.box.as_dict(), "confidence": round(f.confidence, 4),
                          "matches": matches})
        return {"faces": faces, "collection": collection, "model": model, "threshold": threshold}

    @app.get("/v1/collections/{collection}/faces/{face_id}", tags=["gallery"])
    async def get_face(self, collection: str, face_id: str) -> dict:
        return _face_out(await self._gallery_handle().get_face.remote(collection, face_id))

    @app.delete("/v1/collections/{collection}/faces/{face_id}", tags=["gallery"],
                status_code=204)
    async def delete_face(self, collection: str, face_id: str) -> Response:
        unwrap(await self._gallery_handle().delete_face.remote(collection, face_id))
        return Response(status_code=204)

    @app.get("/v1/collections/{collection}/persons/{person_id}", tags=["gallery"])
    async def get_person(self, collection: str, person_id: str) -> dict:
        return await self._gallery_handle().get_person.remote(collection, person_id)

    @app.delete("/v1/collections/{collection}/persons/{person_id}", tags=["gallery"])
    async def delete_person(self, collection: str, person_id: str) -> dict:
        return await self._gallery_handle().delete_person.remote(collection, person_id)
