"""Core face routes of the ingress: health, models, detect, embed, verify, analyze.

A mixin of the ``Ingress`` deployment: it expects ``self.s`` (Settings),
``self.images`` (ImageResolver) and the model handles ``self.detector``,
``self.embedder``, ``self.analyzer`` (and optionally ``self.gallery``). Its
helpers (body parsing, detection, embedding) are shared by the other route
groups.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures.
import asyncio
import json
import time
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import UploadFile

from deployments.http_app import app, body_schema, jpeg_b64, unwrap
from deployments.schemas import (AnalyzeBody, DetectBody, DetectOut, EmbedBody, EmbedOut,
                                 VerifyBody, VerifyOut)
from configs.errors import FacefleetError, ImageTooLarge, NoFaceDetected, ValidationError
from pipelines.registry import ATTRIBUTES, DETECTORS, EMBEDDER_LICENCES, embedder_names
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest
from pipelines.types import ChipSpec, DetectedImage

B = TypeVar("B", bound=BaseModel)


class FacesApi:
    # ---------------------------------------------------------------- helpers
    async def _parse(self, request: Request, model: type[B]) -> tuple[B, dict[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        files: dict[str, bytes] = {}
        limit = self.s.images.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageTooLarge(f"request body is {declared} bytes; the limit is {limit}",
                                {"bytes": int(declared), "max_request_bytes": limit})
        if ctype.startswith("multipart/form-data") or ctype.startswith(
                "application/x-www-form-urlencoded"):
            form = await request.form(max_part_size=self.s.images.max_bytes + 1)
            data: dict[str, Any] = {}
            list_fields = {n for n, f in model.model_fields.items()
                           if "list" in str(f.annotation)}
            for key in set(form.keys()):
                values = form.getlist(key)
                v = values[0]
                if isinstance(v, UploadFile):
                    content = await v.read()
                    files[key] = content
                    data[key] = f"@file:{key}"
                elif key in list_fields:
                    items: list[str] = []
                    for raw in values:
                        raw = str(raw).strip()
                        if raw.startswith("["):
                            try:
                                items.extend(json.loads(raw))
                                continue
                            except json.JSONDecodeError:
                                pass
                        items.extend(p.strip() for p in raw.split(",") if p.strip())
                    data[key] = items
                else:
                    data[key] = v
        else:
            raw = await self._read_body(request, limit)
            if not raw:
                raise ValidationError("request body is empty; send JSON or multipart/form-data")
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValidationError("request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise ValidationError("request body must be a JSON object")
        try:
            return model.model_validate(data), files
        except PydanticValidationError as exc:
            errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
            raise ValidationError("request is invalid", {"errors": errors}) from None

    @staticmethod
    async def _read_body(request: Request, limit: int) -> bytes:
        """The body, read with a cap: a chunked upload has no length to check first."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ImageTooLarge(f"request body exceeds {limit} bytes",
                                    {"max_request_bytes": limit})
            chunks.append(chunk)
        return b"".join(chunks)

    async def _image(self, value: str, files: dict[str, bytes], field: str) -> bytes:
        if value == f"@file:{field}" and field in files:
            return await self.images.resolve(files[field], field)
        return await self.images.resolve(value, field)

    async def _embedder(self, name: str) -> dict:
        info = self._embed_info.get(name)
        if info is None:
            info = unwrap(await self.embedder.embedder_info.remote(name))
            self._embed_info[name] = info
        return info

    async def _attribute(self, action: str) -> dict:
        info = self._attr_info.get(action)
        if info is None:
            info = unwrap(await self.analyzer.attribute_info.remote(action))
            self._attr_info[action] = info
        return info

    async def _detect(self, data: bytes, detector: str | None, max_faces: int | None,
                      min_conf: float, specs: list[ChipSpec], enforce: bool,
                      field: str = "img") -> DetectedImage:
        name = detector or self.s.default_detector
        if name not in DETECTORS:
            raise ValidationError(f"unknown detector '{name}'; available: {', '.join(DETECTORS)}",
                                  {"detector": name, "available": list(DETECTORS)})
        req = DetectRequest(data=data, detector=name,
                            max_faces=min(max_faces or self.s.max_faces, self.s.max_faces),
                            min_confidence=min_conf, chip_specs=tuple(specs))
        det: DetectedImage = unwrap(await self.detector.detect.remote(req))
        if enforce and not det.faces:
            raise NoFaceDetected(f"no face detected in '{field}'; set enforce_detection=false "
                                 "to get an empty result instead", {"field": field})
        return det

    async def _embed_faces(self, data: bytes, body, field: str = "img"
                           ) -> tuple[DetectedImage, np.ndarray, str]:
        model = body.model or self.s.default_embedder
        info = await self._embedder(model)
        specs = [ChipSpec.from_dict(c) for c in info["chip_specs"]]
        det = await self._detect(data, body.detector, getattr(body, "max_faces", None),
                                 getattr(body, "min_confidence", 0.0), specs,
                                 body.enforce_detection, field)
        if not det.faces:
            return det, np.zeros((0, info["dim"]), np.float32), model
        chips = {c.key: det.chips[c.key] for c in specs}
        vecs = unwrap(await self.embedder.embed.remote(EmbedRequest(model, chips)))
        return det, vecs, model

    # ---------------------------------------------------------------- routes
    @app.get("/health", tags=["ops"])
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(self, request: Request) -> Response:
        checks = {"Detector": self.detector, "Embedder": self.embedder, "Analyzer": self.analyzer}
        if self.gallery is not None:
            checks["Gallery"] = self.gallery
        status = {}
        for name, handle in checks.items():
            try:
                status[name] = bool(await asyncio.wait_for(handle.ready.remote(), 10))
            except Exception:  # noqa: BLE001 - a probe reports, it does not raise
                status[name] = False
        ok = all(status.values())
        return JSONResponse({"ready": ok, "deployments": status}, status_code=200 if ok else 503)

    @app.get("/v1/models", tags=["models"])
    async def models(self) -> dict:
        embedders = []
        for name in embedder_names(self.s.model_pack):
            try:
                info = await self._embedder(name)
                embedders.append({**info, "installed": True,
                                  "threshold": self.s.threshold_for(name),
                                  "identify_threshold": self.s.identify_threshold_for(name),
                                  "licence": EMBEDDER_LICENCES.get(name),
                                  "default": name == self.s.default_embedder})
            except FacefleetError as exc:
                embedders.append({"name": name, "installed": False, "reason": exc.message})
        attributes = []
        for action in ATTRIBUTES:
            try:
                attributes.append({**(await self._attribute(action)), "installed": True})
            except FacefleetError as exc:
                attributes.append({"action": action, "installed": False, "reason": exc.message})
        return {"detectors": [{"name": d, "default": d == self.s.default_detector}
                              for d in DETECTORS],
                "embedders": embedders, "attributes": attributes, "metric": "cosine"}

    @app.get("/v1/stats", tags=["ops"])
    async def stats(self) -> dict:
        """Batch sizes seen by one replica of each model deployment."""
        out = {}
        for name, handle in {"Detector": self.detector, "Embedder": self.embedder,
                             "Analyzer": self.analyzer}.items():
            out[name] = await handle.stats.remote()
        return {"batch_sizes": out}

    @app.post("/v1/detect", tags=["faces"], response_model=DetectOut,
              openapi_extra=body_schema(DetectBody))
    async def detect(self, request: Request) -> dict:
        body, files = await self._parse(request, DetectBody)
        data = await self._image(body.img, files, "img")
        specs = [ChipSpec(150, 0.25)] if body.return_crops else []
        det = await self._detect(data, body.detector, body.max_faces, body.min_confidence,
                                 specs, body.enforce_detection)
        faces = []
        for i, f in enumerate(det.faces):
            item = {"box": f.box.as_dict(), "confidence": round(f.confidence, 4),
                    "landmarks": f.landmarks_dict()}
            if body.return_crops:
                item["crop"] = jpeg_b64(det.chips["150@0.25"][i])
            faces.append(item)
        return {"faces": faces, "detector": det.detector,
                "image": {"width": det.width, "height": det.height},
                "time_ms": round(det.time_ms, 1)}

    @app.post("/v1/embed", tags=["faces"], response_model=EmbedOut,
              openapi_extra=body_schema(EmbedBody))
    async def embed(self, request: Request) -> dict:
        body, files = await self._parse(request, EmbedBody)
        data = await self._image(body.img, files, "img")
        det, vecs, model = await self._embed_faces(data, body)
        faces = [{"box": f.box.as_dict(), "confidence": round(f.confidence, 4),
                  "embedding": [float(x) for x in v], "dim": int(vecs.shape[1])}
                 for f, v in zip(det.faces, vecs, strict=True)]
        return {"faces": faces, "model": model, "detector": det.detector}

    @app.post("/v1/verify", tags=["faces"], response_model=VerifyOut,
              openapi_extra=body_schema(VerifyBody))
    async def verify(self, request: Request) -> dict:
        t0 = time.perf_counter()
        body, files = await self._parse(request, VerifyBody)
        d1, d2 = await asyncio.gather(self._image(body.img1, files, "img1"),
                                      self._image(body.img2, files, "img2"))
        (det1, v1, model), (det2, v2, _) = await asyncio.gather(
            self._embed_faces(d1, body, "img1"), self._embed_faces(d2, body, "img2"))
        threshold = body.threshold if body.threshold is not None else self.s.threshold_for(model)
        if threshold is None:
            raise ValidationError(f"model '{model}' has no calibrated threshold; pass 'threshold'")
        if not len(v1) or not len(v2):
            return {"verified": False, "distance": 2.0, "threshold": threshold, "model": model,
                    "detector": det1.detector, "faces": {},
                    "time_ms": round((time.perf_counter() - t0) * 1000, 1)}
        distance = float(1.0 - np.dot(v1[0], v2[0]))
        return {"verified": distance <= threshold, "distance": round(distance, 6),
                "threshold": threshold, "metric": "cosine", "model": model,
                "detector": det1.detector,
                "faces": {"img1": det1.faces[0].box.as_dict(), "img2": det2.faces[0].box.as_dict()},
                "time_ms": round((time.perf_counter() - t0) * 1000, 1)}

    @app.post("/v1/analyze", tags=["faces"], openapi_extra=body_schema(AnalyzeBody))
    async def analyze(self, request: Request) -> dict:
        body, files = await self._parse(request, AnalyzeBody)
        if not body.actions:
            raise ValidationError("'actions' must name at least one of age, gender, emotion, race")
        actions = list(dict.fromkeys(body.actions))
        infos = await asyncio.gather(*(self._attribute(a) for a in actions))
        specs = list({ChipSpec(i["chip_size"], i["chip_padding"]) for i in infos})
        data = await self._image(body.img, files, "img")
        det = await self._detect(data, body.detector, body.max_faces, 0.0, specs,
                                 body.enforce_detection)
        preds = [] if not det.faces else unwrap(
            await self.analyzer.analyze.remote(AnalyzeRequest(tuple(actions), det.chips)))
        faces = []
        for f, p in zip(det.faces, preds or [{}] * len(det.faces), strict=True):
            faces.append({"box": f.box.as_dict(), "confidence": round(f.confidence, 4), **p})
        return {"faces": faces, "actions": actions, "detector": det.detector}

