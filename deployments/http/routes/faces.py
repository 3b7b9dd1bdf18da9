"""Core face routes: health, readiness, models, stats, detect, embed, verify, analyze."""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pipelines.errors import FacefleetError
from deployments.http import readiness
from deployments.http.bodies import AnalyzeBody, DetectBody, EmbedBody, VerifyBody
from deployments.http.common import api_of, body_schema, compact_vector, jpeg_b64
from deployments.http.schemas import (ERRORS, AnalyzeOut, DetectOut, EmbedOut, HealthOut, ModelsOut,
                                 ReadyOut, StatsOut, VerifyOut, errors)
from pipelines.flow import CROP_SPEC, FaceQuery
from pipelines.registry import ATTRIBUTES, DETECTORS, EMBEDDER_LICENCES, embedder_names

router = APIRouter()


def _query(body, field: str = "img") -> FaceQuery:
    return FaceQuery(getattr(body, "detector", None), getattr(body, "max_faces", None),
                     getattr(body, "min_confidence", 0.0), body.enforce_detection, field)


def _face(f) -> dict:
    return {"box": f.box.as_dict(), "confidence": round(f.confidence, 4)}


@router.get("/health", tags=["ops"], response_model=HealthOut)
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", tags=["ops"], response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "a deployment is not ready"}})
async def ready(request: Request) -> Response:
    status = await readiness.probe(api_of(request).flow)
    request.app.state.gate.saw(status)
    ok = all(status.values())
    headers = None if ok else {"Retry-After": str(readiness.STARTING_RETRY_AFTER_S)}
    return JSONResponse({"ready": ok, "deployments": status}, status_code=200 if ok else 503,
                        headers=headers)


@router.get("/v1/models", tags=["models"], response_model=ModelsOut, responses=errors(401, 503))
async def models(request: Request) -> dict:
    api = api_of(request)
    policy = api.flow.policy
    embedders = []
    for name in embedder_names(api.s.model_pack):
        try:
            info = await api.flow.embedder_info(name)
            embedders.append({**info, "installed": True,
                              "threshold": policy.verify_threshold(name),
                              "identify_threshold": policy.identify_threshold(name),
                              "licence": EMBEDDER_LICENCES.get(name),
                              "default": name == policy.default_embedder})
        except FacefleetError as exc:
            embedders.append({"name": name, "installed": False, "reason": exc.message})
    attributes = []
    for action in ATTRIBUTES:
        try:
            attributes.append({**(await api.flow.attribute_info(action)), "installed": True})
        except FacefleetError as exc:
            attributes.append({"action": action, "installed": False, "reason": exc.message})
    return {"detectors": [{"name": d, "default": d == policy.default_detector}
                          for d in DETECTORS],
            "embedders": embedders, "attributes": attributes, "metric": "cosine"}


@router.get("/v1/stats", tags=["ops"], response_model=StatsOut, responses=errors(401, 503))
async def stats(request: Request) -> dict:
    """Batch sizes seen by one replica of each model deployment."""
    flow = api_of(request).flow
    out = {}
    for name, backend in {"Detector": flow.detector, "Embedder": flow.embedder,
                          "Analyzer": flow.analyzer}.items():
        out[name] = await backend.stats()
    return {"batch_sizes": out}


@router.post("/v1/detect", tags=["faces"], response_model=DetectOut, responses=ERRORS,
             openapi_extra=body_schema(DetectBody))
async def detect(request: Request) -> dict:
    api = api_of(request)
    body, files = await api.parse(request, DetectBody)
    data = await api.image(body.img, files, "img")
    det = await api.flow.detect(data, _query(body), crops=body.return_crops)
    faces = []
    for i, f in enumerate(det.faces):
        item = {**_face(f), "landmarks": f.landmarks_dict()}
        if body.return_crops:
            item["crop"] = jpeg_b64(det.chips[CROP_SPEC.key][i])
        faces.append(item)
    return {"faces": faces, "detector": det.detector,
            "image": {"width": det.width, "height": det.height},
            "time_ms": round(det.time_ms, 1)}


@router.post("/v1/embed", tags=["faces"], response_model=EmbedOut, responses=ERRORS,
             openapi_extra=body_schema(EmbedBody))
async def embed(request: Request) -> dict:
    api = api_of(request)
    body, files = await api.parse(request, EmbedBody)
    data = await api.image(body.img, files, "img")
    emb = await api.flow.embed(data, _query(body), body.model)
    dim = int(emb.vectors.shape[1])
    faces = [{**_face(f), "embedding": compact_vector(v), "dim": dim}
             for f, v in zip(emb.faces, emb.vectors, strict=True)]
    return {"faces": faces, "model": emb.model, "detector": emb.detector}


@router.post("/v1/verify", tags=["faces"], response_model=VerifyOut, responses=ERRORS,
             openapi_extra=body_schema(VerifyBody))
async def verify(request: Request) -> dict:
    t0 = time.perf_counter()
    api = api_of(request)
    body, files = await api.parse(request, VerifyBody)
    # a model without a calibrated threshold fails here, before any image is read
    model, threshold = api.flow.verify_threshold(body.model, body.threshold)
    d1, d2 = await asyncio.gather(api.image(body.img1, files, "img1"),
                                  api.image(body.img2, files, "img2"))
    q1, q2 = FaceQuery(body.detector, None, 0.0, body.enforce_detection, "img1"), \
        FaceQuery(body.detector, None, 0.0, body.enforce_detection, "img2")
    e1, e2 = await asyncio.gather(api.flow.embed(d1, q1, model), api.flow.embed(d2, q2, model))
    missing = [f for f, e in (("img1", e1), ("img2", e2)) if not len(e.vectors)]
    if missing:  # enforce_detection: false: nothing to compare, so no distance
        return {"verified": False, "distance": None, "threshold": threshold, "model": model,
                "detector": e1.detector, "no_face_in": missing,
                "faces": {f: e.faces[0].box.as_dict() for f, e in (("img1", e1), ("img2", e2))
                          if len(e.vectors)},
                "time_ms": round((time.perf_counter() - t0) * 1000, 1)}
    distance = float(1.0 - np.dot(e1.vectors[0], e2.vectors[0]))
    return {"verified": distance <= threshold, "distance": round(distance, 6),
            "threshold": threshold, "metric": "cosine", "model": model,
            "detector": e1.detector,
            "faces": {"img1": e1.faces[0].box.as_dict(), "img2": e2.faces[0].box.as_dict()},
            "time_ms": round((time.perf_counter() - t0) * 1000, 1)}


@router.post("/v1/analyze", tags=["faces"], response_model=AnalyzeOut, responses=ERRORS,
             openapi_extra=body_schema(AnalyzeBody))
async def analyze(request: Request) -> dict:
    api = api_of(request)
    body, files = await api.parse(request, AnalyzeBody)
    api.flow.policy.actions(body.actions)  # none: 422 before the image is read
    data = await api.image(body.img, files, "img")
    res = await api.flow.analyze(data, _query(body), body.actions)
    faces = [{**_face(f), **p} for f, p in zip(res.faces, res.attributes, strict=True)]
    return {"faces": faces, "actions": list(dict.fromkeys(body.actions)),
            "detector": res.detector}
