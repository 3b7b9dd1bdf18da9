"""DeepFace-compatible routes: ``/represent``, ``/verify``, ``/analyze``, ``/register``,
``/search``, ``/build/index``, with DeepFace's field names and response shapes.

A DeepFace REST client switches by changing only its base URL. Requests run
through the same request flow (detector, embedder, analyzer and gallery
stages) as the ``/v1`` routes; DeepFace model and detector names are mapped in
``compat_schemas``. Errors keep
facefleet's typed ``{"error": {...}}`` body, add DeepFace's ``exception``
message field, and use status 400 for every client-side problem as DeepFace
does (401, 403 and 5xx keep their status). See docs/deepface-compat.md.
Access follows ``deployments/access.py``: ``/register`` needs the ``write``
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

from deployments.compat_schemas import (COMPAT_ERRORS, DEEPFACE_ACTIONS, AnalyzeBody,
                                        BuildIndexBody, BuildIndexOut, DfAnalyzeOut,
                                        DfRegisterOut, DfSearchOut, DfVerifyOut, RegisterBody,
                                        RepresentBody, RepresentOut, SearchBody, VerifyBody,
                                        collection_for, confidence, deepface_model_name,
                                        detector_for, distance_from_similarity,
                                        distances, embedder_for, threshold_in,
                                        unit_embedding)
from configs.errors import FacefleetError, ModelNotInstalled, SpoofDetected, ValidationError
from deployments.access import actor_of, check_collection
from deployments.errors import compat_error_response
from deployments.http_app import Api, api_of, body_schema
from pipelines.antispoof import ANTI_SPOOFING
from pipelines.flow import FaceQuery
from pipelines.registry import DETECTORS, embedder_names
from pipelines.types import ChipSpec, Face

_TAGS = ["deepface-compat"]

router = APIRouter()


class _Faces:
    """Faces of one image as the compat routes need them: areas, scores, chips."""

    def __init__(self, areas: list[dict], scores: list[float], chips: dict[str, np.ndarray],
                 detector: str) -> None:
        self.areas, self.scores, self.chips, self.detector = areas, scores, chips, detector

    def __len__(self) -> int:
        return len(self.areas)


def _area(face: Face) -> dict[str, Any]:
    box = face.box.as_dict()
    # DeepFace reports the subject's own eyes as integer (x, y) pairs
    lm = face.landmarks
    return {**box, "left_eye": [int(round(float(lm[0][0]))), int(round(float(lm[0][1])))],
            "right_eye": [int(round(float(lm[1][0]))), int(round(float(lm[1][1])))]}


def _whole_image_chip(data: bytes, specs: list[ChipSpec], limits
                      ) -> tuple[dict[str, np.ndarray], int, int]:
    """The whole image as each spec's chip (DeepFace's ``skip``): letterboxed to
    the square size, or for ``box`` chips the whole frame as the face's box."""
    import cv2

    from pipelines.align import box_chip
    from pipelines.decode import decode_image
    from pipelines.types import Box

    img = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                       work_max_side=max(s.size for s in specs) * 4)
    px = img.pixels
    h, w = px.shape[:2]
    out = {}
    for spec in specs:
        size = spec.size
        if spec.kind == "box":
            out[spec.key] = box_chip(px, Box(0, 0, w, h), spec)[None]
            continue
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(px, (nw, nh), interpolation=cv2.INTER_AREA)
        chip = np.zeros((size, size, 3), np.uint8)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        chip[y0:y0 + nh, x0:x0 + nw] = small
        out[spec.key] = chip[None]
    return out, img.original_width, img.original_height


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
    name = embedder_for(model_name, api.s.default_embedder, embedder_names(api.s.model_pack))
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


def _detector(api: Api, body) -> str:
    return detector_for(body.detector_backend, api.s.default_detector, list(DETECTORS))


async def _spoof_specs(api: Api, body) -> list[ChipSpec]:
    """The anti-spoofing crops a request needs: none unless it set anti_spoofing.

    When the configured model's weights are missing (the user's MiniFASNet pair
    not installed), asking for it answers ``model_not_installed`` before any
    image is decoded.
    """
    if not body.anti_spoofing:
        return []
    try:
        return api.flow.chip_specs(await api.flow.attribute_info(ANTI_SPOOFING))
    except ModelNotInstalled as exc:
        raise ModelNotInstalled(f"anti_spoofing=true: {exc.message}; or send "
                                "anti_spoofing=false", {**exc.details,
                                                        "field": "anti_spoofing"}) from None


async def _check_live(api: Api, chips: dict[str, np.ndarray], specs: list[ChipSpec]) -> None:
    """DeepFace's anti_spoofing: any face judged a spoof fails the whole request."""
    if not specs:
        return
    verdicts = await api.flow.analyze_chips([ANTI_SPOOFING], {s.key: chips[s.key] for s in specs})
    if any(not v["is_real"] for v in verdicts):
        raise SpoofDetected("Spoof detected in the given image.",
                            {"faces": [i for i, v in enumerate(verdicts) if not v["is_real"]]})


async def _whole_image(api: Api, data: bytes, specs: list[ChipSpec],
                       detector: str) -> _Faces:
    """DeepFace's stand-in when it finds no face (or is told to skip detection)."""
    chips, w, h = await asyncio.to_thread(_whole_image_chip, data, specs, api.s.images)
    area = {"x": 0, "y": 0, "w": w, "h": h, "left_eye": None, "right_eye": None}
    return _Faces([area], [0.0], chips,
                  detector if detector == "skip" else f"{detector} (no face: whole image)")


async def _compat_embed(api: Api, data: bytes, body, field: str, max_faces: int | None = None
                        ) -> tuple[_Faces, np.ndarray, str, dict]:
    name, info = await _compat_embedder(api, body.model_name)
    detector = _detector(api, body)
    spoof = await _spoof_specs(api, body)
    specs = api.flow.chip_specs(info)
    query = FaceQuery(detector, max_faces, 0.0, body.enforce_detection, field)
    faces = None
    if detector != "skip" and not spoof:
        # detect -> embed stage to stage, as /v1/embed does
        emb = await api.flow.embed(data, query, name)
        if emb.faces:
            return (_Faces([_area(f) for f in emb.faces],
                           [round(float(f.confidence), 2) for f in emb.faces], {}, detector),
                    np.asarray(emb.vectors, np.float32), name, info)
    elif detector != "skip":
        # the liveness crops come back with the embedder's chips, checked first
        det = await api.flow.detect_chips(data, query, list(dict.fromkeys(specs + spoof)))
        if det.faces:
            faces = _Faces([_area(f) for f in det.faces],
                           [round(float(f.confidence), 2) for f in det.faces], det.chips,
                           detector)
    if faces is None:
        faces = await _whole_image(api, data, list(dict.fromkeys(specs + spoof)), detector)
    await _check_live(api, faces.chips, spoof)
    vecs = await api.flow.embed_chips(name, {c.key: faces.chips[c.key] for c in specs})
    return faces, np.asarray(vecs, np.float32), name, info


def _compat_gallery(api: Api):
    if not api.flow.has_gallery:
        from configs.errors import Unavailable

        raise Unavailable("the gallery is disabled in this deployment (gallery: false); "
                          "/register and /search need it")
    return api.flow.gallery


async def _compat_actions(api: Api, requested: list[str] | None) -> list[str]:
    if requested is None:
        # DeepFace's default is all four; facefleet analyses those it has weights for
        infos = await asyncio.gather(*(api.flow.attribute_info(a) for a in DEEPFACE_ACTIONS),
                                     return_exceptions=True)
        return [a for a, i in zip(DEEPFACE_ACTIONS, infos, strict=True) if isinstance(i, dict)]
    if not requested:
        raise ValidationError("'actions' is empty; name at least one of "
                              f"{', '.join(DEEPFACE_ACTIONS)}")
    for a in requested:
        if a not in DEEPFACE_ACTIONS:
            raise ValidationError(f"Invalid action passed ({a!r}); available actions are "
                                  f"{', '.join(DEEPFACE_ACTIONS)}", {"action": a})
    return list(dict.fromkeys(requested))


# ---------------------------------------------------------------- routes


@router.post("/represent", tags=_TAGS, response_model=RepresentOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(RepresentBody))
async def df_represent(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, RepresentBody)
        data = await _compat_image(api, body.img, files, "img")
        faces, vecs, _, _ = await _compat_embed(api, data, body, "img", body.max_faces)
        return {"results": [
            {"embedding": v.tolist(), "facial_area": a, "face_confidence": c}
            for v, a, c in zip(vecs, faces.areas, faces.scores, strict=True)]}
    return await _compat(request, run)


@router.post("/verify", tags=_TAGS, response_model=DfVerifyOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(VerifyBody))
async def df_verify(request: Request) -> Any:
    async def run(api: Api) -> dict:
        t0 = time.perf_counter()
        body, files = await api.parse(request, VerifyBody)
        name, info = await _compat_embedder(api, body.model_name)
        cos_t = api.s.threshold_for(name)
        if body.threshold is None and cos_t is None:
            raise ValidationError(f"model '{name}' has no calibrated threshold; "
                                  "pass 'threshold'")
        threshold = body.threshold if body.threshold is not None else \
            round(threshold_in(body.distance_metric, cos_t), 6)

        async def side(field: str) -> tuple[np.ndarray, list[dict]]:
            value = getattr(body, field)
            if isinstance(value, list):  # a pre-computed embedding, as DeepFace allows
                none = {k: None for k in ("x", "y", "w", "h", "left_eye", "right_eye")}
                return unit_embedding(value, info["dim"], field), [none]
            data = await _compat_image(api, value, files, field)
            faces, vecs, _, _ = await _compat_embed(api, data, body, field)
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
                "detector_backend": body.detector_backend or api.s.default_detector,
                "similarity_metric": body.distance_metric,
                "facial_areas": {"img1": a1[i], "img2": a2[j]},
                "time": round(time.perf_counter() - t0, 2)}
    return await _compat(request, run)


@router.post("/analyze", tags=_TAGS, response_model=DfAnalyzeOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(AnalyzeBody))
async def df_analyze(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, AnalyzeBody)
        data = await _compat_image(api, body.img, files, "img")
        actions = await _compat_actions(api, body.actions)
        infos = await asyncio.gather(*(api.flow.attribute_info(a) for a in actions))
        spoof = await _spoof_specs(api, body)
        specs = list(dict.fromkeys([c for i in infos for c in api.flow.chip_specs(i)] + spoof))
        detector = _detector(api, body)
        faces = None
        if detector != "skip":
            det = await api.flow.detect_chips(
                data, FaceQuery(detector, None, 0.0, body.enforce_detection, "img"), specs)
            if det.faces:
                faces = _Faces([_area(f) for f in det.faces],
                               [round(float(f.confidence), 2) for f in det.faces],
                               det.chips, detector)
        if faces is None:
            faces = await _whole_image(api, data, specs, detector)
        await _check_live(api, faces.chips, spoof)
        preds = await api.flow.analyze_chips(actions, faces.chips)
        results = [{**p, "region": a, "face_confidence": c}
                   for p, a, c in zip(preds, faces.areas, faces.scores, strict=True)]
        return {"results": results}
    return await _compat(request, run)


@router.post("/register", tags=_TAGS, response_model=DfRegisterOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(RegisterBody))
async def df_register(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, RegisterBody)
        gallery = _compat_gallery(api)
        # the collection is known from the body: check it before any model runs
        name, _ = await _compat_embedder(api, body.model_name)
        collection = check_collection(request, collection_for(body.collection, name))
        data = await _compat_image(api, body.img, files, "img")
        faces, vecs, name, info = await _compat_embed(api, data, body, "img")
        img_name = body.img_name or hashlib.sha256(data).hexdigest()[:40]
        items = [{"embedding": v.tolist(), "person_id": body.person_id, "name": img_name}
                 for v in vecs]
        actor = actor_of(request)
        res = await gallery.register(collection, name, int(info["dim"]), items, None,
                                     actor.may_create and not api.s.index.strict_collections,
                                     actor=actor)
        return {"inserted": len(items), "collection": collection,
                "faces": res.get("faces", [])}
    return await _compat(request, run)


@router.post("/search", tags=_TAGS, response_model=DfSearchOut, responses=COMPAT_ERRORS,
             openapi_extra=body_schema(SearchBody))
async def df_search(request: Request) -> Any:
    async def run(api: Api) -> dict:
        body, files = await api.parse(request, SearchBody)
        gallery = _compat_gallery(api)
        if body.search_method not in ("exact", "ann"):
            raise ValidationError(f"Unsupported search method: {body.search_method}")
        name, _ = await _compat_embedder(api, body.model_name)
        collection = check_collection(request, collection_for(body.collection, name))
        data = await _compat_image(api, body.img, files, "img")
        faces, vecs, name, _ = await _compat_embed(api, data, body, "img")
        cos_t = api.s.identify_threshold_for(name)  # 1:N: the identify threshold
        if cos_t is None:
            raise ValidationError(f"model '{name}' has no calibrated identify threshold")
        threshold = round(threshold_in(body.distance_metric, cos_t), 6)
        hits = await gallery.search(collection, name, vecs, int(body.k or 20),
                                    None if body.similarity_search else cos_t,
                                    actor=actor_of(request))
        results = []
        for rows, area in zip(hits, faces.areas, strict=True):
            out = []
            for h in rows:
                dist = round(float(distance_from_similarity(h["similarity"],
                                                            body.distance_metric)), 6)
                ok = dist <= threshold
                out.append({"id": h["face_id"], "img_name": h.get("name"),
                            "person_id": h.get("person_id"),
                            "model_name": deepface_model_name(name),
                            "detector_backend": body.detector_backend or faces.detector,
                            "aligned": True, "l2_normalized": True,
                            "search_method": body.search_method,
                            "target_x": area["x"], "target_y": area["y"],
                            "target_w": area["w"], "target_h": area["h"],
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
