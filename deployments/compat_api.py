"""DeepFace-compatible routes: ``/represent``, ``/verify``, ``/analyze``, ``/register``,
``/search``, ``/build/index``, with DeepFace's field names and response shapes.

A mixin of the ``Ingress`` deployment so that a DeepFace REST client switches
by changing only its base URL. Requests run through the same detector,
embedder, analyzer and gallery deployments as the ``/v1`` routes; DeepFace
model and detector names are mapped in ``compat_schemas``. Errors keep
facefleet's typed ``{"error": {...}}`` body, add DeepFace's ``exception``
message field, and use status 400 for every client-side problem as DeepFace
does (401 and 5xx keep their status). See docs/deepface-compat.md.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import hashlib
import time
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from deployments.compat_schemas import (DEEPFACE_ACTIONS, AnalyzeBody, BuildIndexBody,
                                        RegisterBody, RepresentBody, SearchBody, VerifyBody,
                                        collection_for, confidence, deepface_model_name,
                                        detector_for, distance_from_similarity,
                                        distances, embedder_for, threshold_in,
                                        unit_embedding)
from deployments.errors import STATUS, request_id_of
from deployments.http_app import app, body_schema, unwrap
from configs.errors import (ErrorCode, FacefleetError, ModelNotInstalled, Unavailable,
                              ValidationError)
from pipelines.registry import ATTRIBUTES, DETECTORS, embedder_names
from pipelines.stages import AnalyzeRequest, EmbedRequest
from pipelines.types import ChipSpec, Face

_TAGS = ["deepface-compat"]


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


def _whole_image_chip(data: bytes, sizes: list[int], limits) -> tuple[dict[int, np.ndarray],
                                                                      int, int]:
    """The whole image letterboxed to each square size (DeepFace's ``skip``)."""
    import cv2

    from pipelines.decode import decode_image

    img = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                       work_max_side=max(sizes) * 4)
    px = img.pixels
    h, w = px.shape[:2]
    out = {}
    for size in sizes:
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(px, (nw, nh), interpolation=cv2.INTER_AREA)
        chip = np.zeros((size, size, 3), np.uint8)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        chip[y0:y0 + nh, x0:x0 + nw] = small
        out[size] = chip[None]
    return out, img.original_width, img.original_height


class CompatApi:
    # ---------------------------------------------------------------- helpers
    def _compat_error(self, request: Request, exc: FacefleetError) -> JSONResponse:
        status = STATUS.get(exc.code, 500)
        if (400 <= status < 500 and status != 401) or exc.code == ErrorCode.MODEL_NOT_INSTALLED:
            status = 400  # DeepFace answers every bad request (and unknown model) with 400
        err: dict[str, Any] = {"code": exc.code.value, "message": exc.message,
                               "request_id": request_id_of(request)}
        if exc.details:
            err["details"] = _plain(exc.details)
        # DeepFace's clients read a top-level "exception" message: send both shapes
        return JSONResponse({"error": err, "exception": exc.message}, status_code=status)

    async def _compat(self, request: Request, handler) -> Any:
        try:
            return await handler()
        except FacefleetError as exc:
            return self._compat_error(request, exc)
        except Exception as exc:  # noqa: BLE001 - Ray wraps remote errors; unwrap ours
            cause = getattr(exc, "cause", None)
            if isinstance(cause, FacefleetError):
                return self._compat_error(request, cause)
            raise

    async def _compat_embedder(self, model_name: str | None) -> tuple[str, dict]:
        known = embedder_names(self.s.model_pack)
        name = embedder_for(model_name, self.s.default_embedder, known)
        try:
            return name, await self._embedder(name)
        except FacefleetError as exc:
            available = await self._installed_models()
            raise type(exc)(f"model_name '{model_name}' is not available here: {exc.message}; "
                            f"available: {', '.join(available)}",
                            {**exc.details, "available": available}) from None

    async def _installed_models(self) -> list[str]:
        names = embedder_names(self.s.model_pack)
        found = await asyncio.gather(*(self._embedder(n) for n in names), return_exceptions=True)
        out: list[str] = []
        for n, info in zip(names, found, strict=True):
            if isinstance(info, dict):
                df = deepface_model_name(n)
                out.append(df if df not in out else n)
        return out

    async def _compat_image(self, value: Any, files: dict[str, bytes], field: str) -> bytes:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValidationError(f"'{field}' not found in either json or form data request",
                                  {"field": field})
        if not isinstance(value, str):
            raise ValidationError(f"'{field}' must be an image: base64, data URI or URL, "
                                  "or a multipart file", {"field": field})
        return await self._image(value, files, field)

    async def _compat_faces(self, data: bytes, body, specs: list[ChipSpec], field: str,
                            max_faces: int | None = None) -> _Faces:
        """Detect (or skip) and cut chips; with enforce_detection off and no face,
        the whole image stands in for the face, as in DeepFace."""
        detector = detector_for(body.detector_backend, self.s.default_detector, list(DETECTORS))
        if body.anti_spoofing:
            raise ModelNotInstalled("anti_spoofing needs DeepFace's MiniFASNet weights, which "
                                    "facefleet does not ship; send anti_spoofing=false",
                                    {"field": "anti_spoofing"})
        if detector != "skip":
            det = await self._detect(data, detector, max_faces, 0.0, specs,
                                     body.enforce_detection, field)
            if det.faces:
                return _Faces([_area(f) for f in det.faces],
                              [round(float(f.confidence), 2) for f in det.faces],
                              det.chips, detector)
        sizes = sorted({s.size for s in specs})
        by_size, w, h = await asyncio.to_thread(_whole_image_chip, data, sizes, self.s.images)
        area = {"x": 0, "y": 0, "w": w, "h": h, "left_eye": None, "right_eye": None}
        return _Faces([area], [0.0], {s.key: by_size[s.size] for s in specs},
                      detector if detector == "skip" else f"{detector} (no face: whole image)")

    async def _compat_embed(self, data: bytes, body, field: str, max_faces: int | None = None
                            ) -> tuple[_Faces, np.ndarray, str, dict]:
        name, info = await self._compat_embedder(body.model_name)
        specs = [ChipSpec.from_dict(c) for c in info["chip_specs"]]
        faces = await self._compat_faces(data, body, specs, field, max_faces)
        chips = {c.key: faces.chips[c.key] for c in specs}
        vecs = unwrap(await self.embedder.embed.remote(EmbedRequest(name, chips)))
        return faces, np.asarray(vecs, np.float32), name, info

    def _compat_gallery(self):
        if self.gallery is None:
            raise Unavailable("the gallery is disabled in this deployment (gallery: false); "
                              "/register and /search need it")
        return self.gallery

    async def _gallery_call(self, method: str, *args, **kwargs) -> Any:
        handle = self._compat_gallery()
        return await getattr(handle, method).remote(*args, **kwargs)

    # ---------------------------------------------------------------- routes
    @app.post("/represent", tags=_TAGS, openapi_extra=body_schema(RepresentBody))
    async def df_represent(self, request: Request) -> Any:
        async def run() -> dict:
            body, files = await self._parse(request, RepresentBody)
            data = await self._compat_image(body.img, files, "img")
            faces, vecs, _, _ = await self._compat_embed(data, body, "img", body.max_faces)
            return {"results": [
                {"embedding": [float(x) for x in v], "facial_area": a, "face_confidence": c}
                for v, a, c in zip(vecs, faces.areas, faces.scores, strict=True)]}
        return await self._compat(request, run)

    @app.post("/verify", tags=_TAGS, openapi_extra=body_schema(VerifyBody))
    async def df_verify(self, request: Request) -> Any:
        async def run() -> dict:
            t0 = time.perf_counter()
            body, files = await self._parse(request, VerifyBody)
            name, info = await self._compat_embedder(body.model_name)
            cos_t = self.s.threshold_for(name)
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
                data = await self._compat_image(value, files, field)
                faces, vecs, _, _ = await self._compat_embed(data, body, field)
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
                    "detector_backend": body.detector_backend or self.s.default_detector,
                    "similarity_metric": body.distance_metric,
                    "facial_areas": {"img1": a1[i], "img2": a2[j]},
                    "time": round(time.perf_counter() - t0, 2)}
        return await self._compat(request, run)

    async def _compat_actions(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            # DeepFace's default is all four; facefleet analyses those it has weights for
            infos = await asyncio.gather(*(self._attribute(a) for a in DEEPFACE_ACTIONS),
                                         return_exceptions=True)
            return [a for a, i in zip(DEEPFACE_ACTIONS, infos, strict=True) if isinstance(i, dict)]
        if not requested:
            raise ValidationError("'actions' is empty; name at least one of "
                                  f"{', '.join(DEEPFACE_ACTIONS)}")
        for a in requested:
            if a not in ATTRIBUTES:
                raise ValidationError(f"Invalid action passed ({a!r}); available actions are "
                                      f"{', '.join(DEEPFACE_ACTIONS)}", {"action": a})
        return list(dict.fromkeys(requested))

    @app.post("/analyze", tags=_TAGS, openapi_extra=body_schema(AnalyzeBody))
    async def df_analyze(self, request: Request) -> Any:
        async def run() -> dict:
            body, files = await self._parse(request, AnalyzeBody)
            data = await self._compat_image(body.img, files, "img")
            actions = await self._compat_actions(body.actions)
            infos = await asyncio.gather(*(self._attribute(a) for a in actions))
            specs = list({ChipSpec(i["chip_size"], i["chip_padding"]) for i in infos})
            faces = await self._compat_faces(data, body, specs, "img")
            preds = unwrap(await self.analyzer.analyze.remote(
                AnalyzeRequest(tuple(actions), faces.chips)))
            results = []
            for p, a, c in zip(preds, faces.areas, faces.scores, strict=True):
                results.append({**p, "region": a, "face_confidence": c})
            return {"results": results}
        return await self._compat(request, run)

    @app.post("/register", tags=_TAGS, openapi_extra=body_schema(RegisterBody))
    async def df_register(self, request: Request) -> Any:
        async def run() -> dict:
            body, files = await self._parse(request, RegisterBody)
            self._compat_gallery()
            data = await self._compat_image(body.img, files, "img")
            faces, vecs, name, info = await self._compat_embed(data, body, "img")
            img_name = body.img_name or hashlib.sha256(data).hexdigest()[:40]
            items = [{"embedding": v.tolist(), "person_id": body.person_id, "name": img_name}
                     for v in vecs]
            collection = collection_for(body.collection, name)
            res = await self._gallery_call("register", collection, name, int(info["dim"]),
                                           items, None, True)
            return {"inserted": len(items), "collection": collection,
                    "faces": res.get("faces", [])}
        return await self._compat(request, run)

    @app.post("/search", tags=_TAGS, openapi_extra=body_schema(SearchBody))
    async def df_search(self, request: Request) -> Any:
        async def run() -> dict:
            body, files = await self._parse(request, SearchBody)
            self._compat_gallery()
            if body.search_method not in ("exact", "ann"):
                raise ValidationError(f"Unsupported search method: {body.search_method}")
            data = await self._compat_image(body.img, files, "img")
            faces, vecs, name, _ = await self._compat_embed(data, body, "img")
            cos_t = self.s.identify_threshold_for(name)  # 1:N: the identify threshold
            if cos_t is None:
                raise ValidationError(f"model '{name}' has no calibrated identify threshold")
            threshold = round(threshold_in(body.distance_metric, cos_t), 6)
            collection = collection_for(body.collection, name)
            hits = await self._gallery_call(
                "search", collection, name, vecs, int(body.k or 20),
                None if body.similarity_search else cos_t)
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
        return await self._compat(request, run)

    @app.post("/build/index", tags=_TAGS, openapi_extra=body_schema(BuildIndexBody))
    async def df_build_index(self, request: Request) -> Any:
        async def run() -> dict:
            self._compat_gallery()
            # facefleet's shards index every face when it is registered: nothing to build
            return {"message": "Index built successfully"}
        return await self._compat(request, run)


def _plain(details: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v)
            for k, v in details.items()}
