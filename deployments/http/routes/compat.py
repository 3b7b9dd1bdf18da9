"""DeepFace-compatible routes: ``/represent``, ``/verify``, ``/analyze``, ``/register``,
``/search``, ``/build/index``, with DeepFace's field names and response shapes.

A DeepFace REST client switches by changing only its base URL. Requests run
through the same request flow (``pipelines.flow.deepface`` over
``pipelines.flow.Flow``) as the ``/v1`` routes; DeepFace model and detector names are mapped in
``compat_schemas``. Errors keep
facefleet's typed ``{"error": {...}}`` body, add DeepFace's ``exception``
message field, and use status 400 for every client-side problem as DeepFace
does (401, 403 and 5xx keep their status). See docs/deepface-compat.md.
Access follows ``deployments/http/access.py``: ``/register`` needs the ``write``
scope, ``/search`` and the rest ``read``; ``/register`` and ``/search`` check
the collection they resolve (``collection``, else ``deepface-<model>``)
against the key's collections once the body is read.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import hashlib
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from pipelines.errors import FacefleetError, Unavailable, ValidationError
from deployments.http.access import actor_of, check_collection
from deployments.http.compat_schemas import (COMPAT_ERRORS, DEEPFACE_ACTIONS, BuildIndexBody,
                                        BuildIndexOut, DfAnalyzeBody, DfAnalyzeOut,
                                        DfRegisterBody, DfRegisterOut, DfSearchOut,
                                        DfVerifyBody, DfVerifyOut, RepresentBody, RepresentOut,
                                        SearchBody, collection_for, confidence,
                                        deepface_model_name, detector_for,
                                        distance_from_similarity, distances, embedder_for,
                                        threshold_in, unit_embedding)
from deployments.http.errors import compat_error_response
from deployments.http.common import Api, api_of, body_schema, compact_vector
from pipelines.flow import FaceQuery
from pipelines.flow.deepface import DeepfaceFlow, checked_actions
from pipelines.registry import DETECTORS, embedder_names

_TAGS = ["deepface-compat"]

router = APIRouter()


# ---------------------------------------------------------------- helpers


async def _compat(request: Request, handler) -> Any:
    try:
        return await handler(api_of(request))
    except FacefleetError as exc:
        return compat_error_response(request, exc)
    except Exception as exc:  # noqa: BLE001 - Ray wraps remote errors; unwrap ours
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FacefleetError):
            return compat_error_response(request, cause)
        raise


async def _installed_models(api: Api) -> list[str]:
    names = embedder_names(api.s.model_pack)
    found = await asyncio.gather(*(api.flow.embedder_info(n) for n in names),
                                 return_exceptions=True)
    out: list[str] = []
    for n, info in zip(names, found, strict=True):
        if isinstance(info, dict):
            df = deepface_model_name(n)
            out.append(df if df not in out else n)
    return out


async def _compat_embedder(api: Api, model_name: str | None) -> tuple[str, dict]:
    name = embedder_for(model_name, api.flow.policy.default_embedder,
                        embedder_names(api.s.model_pack))
    try:
        return name, await api.flow.embedder_info(name)
    except FacefleetError as exc:
        available = await _installed_models(api)
        raise type(exc)(f"model_name '{model_name}' is not available here: {exc.message}; "
                        f"available: {', '.join(available)}",
                        {**exc.details, "available": available}) from None


async def _compat_image(api: Api, value: Any, files: dict[str, bytes], field: str) -> bytes:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValidationError(f"'{field}' not found in either json or form data request",
                              {"field": field})
    if not isinstance(value, str):
        raise ValidationError(f"'{field}' must be an image: base64, data URI or URL, "
                              "or a multipart file", {"field": field})
    return await api.image(value, files, field)


def _query(api: Api, body, field: str = "img", max_faces: int | None = None) -> FaceQuery:
    detector = detector_for(body.detector_backend, api.flow.policy.default_detector,
                            list(DETECTORS))
    return FaceQuery(detector, max_faces, 0.0, body.enforce_detection, field)


def _compat_gallery(api: Api) -> None:
    if not api.flow.has_gallery:
        raise Unavailable("the gallery is disabled in this deployment (gallery: false); "
                          "/register and /search need it")


async def _compat_actions(api: Api, requested: list[str] | None) -> list[str]:
    actions = checked_actions(requested, DEEPFACE_ACTIONS)
    if actions is not None:
        return actions
    # DeepFace's default is all four; facefleet analyses those it has weights for
    infos = await asyncio.gather(*(api.flow.attribute_info(a) for a in DEEPFACE_ACTIONS),
                                 return_exceptions=True)
    return [a for a, i in zip(DEEPFACE_ACTIONS, infos, strict=True) if isinstance(i, dict)]


# ---------------------------------------------------------------- routes


@router.post("/represent", tags=_TAGS, response_model=RepresentOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(RepresentBody))
async def df_represent(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, RepresentBody)
        data = await _compat_image(api, body.img, files, "img")
        name, _ = await _compat_embedder(api, body.model_name)
        faces, vecs = await DeepfaceFlow(api.flow).embed(
            data, name, _query(api, body, "img", body.max_faces), body.anti_spoofing)
        return {"results": [
            {"embedding": compact_vector(v), "facial_area": a, "face_confidence": c}
            for v, a, c in zip(vecs, faces.areas, faces.scores, strict=True)]}
    return await _compat(request, run)


@router.post("/verify", tags=_TAGS, response_model=DfVerifyOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(DfVerifyBody))
async def df_verify(request: Request) -> Any:
    async def run(api: Api) -> dict:
        t0 = time.perf_counter()
        body, files = await api.parse(request, DfVerifyBody)
        name, info = await _compat_embedder(api, body.model_name)
        cos_t = api.flow.policy.verify_threshold(name)
        if body.threshold is None and cos_t is None:
            raise ValidationError(f"model '{name}' has no calibrated threshold; "
                                  "pass 'threshold'")
        threshold = body.threshold if body.threshold is not None else \
            round(threshold_in(body.distance_metric, cos_t), 6)
        df = DeepfaceFlow(api.flow)

        async def side(field: str) -> tuple[np.ndarray, list[dict]]:
            value = getattr(body, field)
            if isinstance(value, list):  # a pre-computed embedding, as DeepFace allows
                none = {k: None for k in ("x", "y", "w", "h", "left_eye", "right_eye")}
                return unit_embedding(value, info["dim"], field), [none]
            data = await _compat_image(api, value, files, field)
            faces, vecs = await df.embed(data, name, _query(api, body, field),
                                         body.anti_spoofing)
            return vecs, faces.areas

        (v1, a1), (v2, a2) = await asyncio.gather(side("img1"), side("img2"))
        # like DeepFace: the closest pair of faces across the two images decides
        d = distances(v1, v2, body.distance_metric)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        distance = round(float(d[i, j]), 6)
        verified = distance <= threshold
        return {"verified": bool(verified), "distance": distance, "threshold": threshold,
                "confidence": confidence(distance, threshold, verified),
                "model": deepface_model_name(name),
                "detector_backend": body.detector_backend or api.flow.policy.default_detector,
                "similarity_metric": body.distance_metric,
                "facial_areas": {"img1": a1[i], "img2": a2[j]},
                "time": round(time.perf_counter() - t0, 2)}
    return await _compat(request, run)


@router.post("/analyze", tags=_TAGS, response_model=DfAnalyzeOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(DfAnalyzeBody))
async def df_analyze(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, DfAnalyzeBody)
        data = await _compat_image(api, body.img, files, "img")
        actions = await _compat_actions(api, body.actions)
        faces, preds = await DeepfaceFlow(api.flow).analyze(data, actions, _query(api, body),
                                                            body.anti_spoofing)
        results = [{**p, "region": a, "face_confidence": c}
                   for p, a, c in zip(preds, faces.areas, faces.scores, strict=True)]
        return {"results": results}
    return await _compat(request, run)


@router.post("/register", tags=_TAGS, response_model=DfRegisterOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(DfRegisterBody))
async def df_register(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, DfRegisterBody)
        _compat_gallery(api)
        # the collection is known from the body: check it before any model runs
        name, _ = await _compat_embedder(api, body.model_name)
        collection = check_collection(request, collection_for(body.collection, name))
        data = await _compat_image(api, body.img, files, "img")
        img_name = body.img_name or hashlib.sha256(data).hexdigest()[:40]
        faces = await DeepfaceFlow(api.flow).register(
            collection, data, name, _query(api, body), body.anti_spoofing,
            {"person_id": body.person_id, "name": img_name}, actor_of(request))
        return {"inserted": len(faces), "collection": collection, "faces": faces}
    return await _compat(request, run)


@router.post("/search", tags=_TAGS, response_model=DfSearchOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(SearchBody))
async def df_search(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, SearchBody)
        _compat_gallery(api)
        if body.search_method not in ("exact", "ann"):
            raise ValidationError(f"Unsupported search method: {body.search_method}")
        name, _ = await _compat_embedder(api, body.model_name)
        collection = check_collection(request, collection_for(body.collection, name))
        cos_t = api.flow.policy.search_threshold(name)  # 1:N: before any image is read
        threshold = round(threshold_in(body.distance_metric, cos_t), 6)
        data = await _compat_image(api, body.img, files, "img")
        res, detector = await DeepfaceFlow(api.flow).search(
            collection, data, name, _query(api, body), body.anti_spoofing, int(body.k or 20),
            None if body.similarity_search else cos_t, actor_of(request))
        results = []
        for face in res.faces:
            box = face.box or {}
            out = []
            for h in face.hits:
                dist = round(float(distance_from_similarity(h["similarity"],
                                                            body.distance_metric)), 6)
                ok = dist <= threshold
                out.append({"id": h["face_id"], "img_name": h.get("name"),
                            "person_id": h.get("person_id"),
                            "model_name": deepface_model_name(name),
                            "detector_backend": body.detector_backend or detector,
                            "aligned": True, "l2_normalized": True,
                            "search_method": body.search_method,
                            "target_x": box.get("x"), "target_y": box.get("y"),
                            "target_w": box.get("w"), "target_h": box.get("h"),
                            "threshold": threshold, "distance_metric": body.distance_metric,
                            "distance": dist,
                            "confidence": confidence(dist, threshold, ok)})
            if out:  # DeepFace leaves out faces with no match
                results.append(out)
        return {"results": results}
    return await _compat(request, run)


@router.post("/build/index", tags=_TAGS, response_model=BuildIndexOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(BuildIndexBody, required=False))
async def df_build_index(request: Request) -> Any:
    async def run(api: Api) -> dict:
        if request.headers.get("content-length", "0") != "0" or \
                "transfer-encoding" in request.headers:
            await api.parse(request, BuildIndexBody)  # optional, but checked when sent
        _compat_gallery(api)
        # facefleet's shards index every face when it is registered: nothing to build
        return {"message": "Index built successfully"}
    return await _compat(request, run)
