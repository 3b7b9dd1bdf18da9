"""The request flow of the DeepFace-compatible routes, over the same :class:`Flow`.

DeepFace differs from the ``/v1`` routes in three ways this module keeps:
it reports every face with its eyes; with ``enforce_detection`` off (or
``detector_backend: skip``) an image without a face is taken whole, as one
face; and with ``anti_spoofing`` any face judged a spoof fails the request.

``/register`` and ``/search`` send the Embedder's reference straight to the
Gallery as the ``/v1`` identify and enrolment do (no vectors come back to the
ingress). With anti-spoofing, the one detection (with both the model's and
the liveness model's chips) is handed to the Analyzer and then to the
Embedder (or the attribute models): the chips never come back to the
ingress, only the verdicts do, and nothing is embedded, stored or searched
before every face was judged real. Only DeepFace's whole-image stand-in is
cut in the ingress (it decodes the image itself) and sent to the models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from pipelines.errors import (FacefleetError, ModelNotInstalled, NoFaceDetected, SpoofDetected,
                            ValidationError)
from pipelines.antispoof import ANTI_SPOOFING
from pipelines.flow.contracts import Actor, IdentifiedImage, Record, Ref, RegisteredImages
from pipelines.flow.core import FaceQuery, Flow, chip_specs, enforce, unwrap
from pipelines.stages import EmbedRequest
from pipelines.types import AnalyzedImage, ChipSpec, EmbeddedImage, Face

T = TypeVar("T")
#: the detector name DeepFace uses for "no detection: the whole image is the face"
SKIP = "skip"


@dataclass
class DfFaces:
    """Faces of one image as DeepFace reports them: areas (box and eyes), scores,
    and the chips cut (only where the ingress itself runs models on them)."""

    areas: list[dict[str, Any]]
    scores: list[float]
    chips: dict[str, np.ndarray] = field(default_factory=dict)
    detector: str = ""

    def __len__(self) -> int:
        return len(self.areas)


def area(face: Face) -> dict[str, Any]:
    box = face.box.as_dict()
    # DeepFace reports the subject's own eyes as integer (x, y) pairs
    lm = face.landmarks
    return {**box, "left_eye": [int(round(float(lm[0][0]))), int(round(float(lm[0][1])))],
            "right_eye": [int(round(float(lm[1][0]))), int(round(float(lm[1][1])))]}


def _df_faces(faces: Sequence[Face], chips: dict[str, np.ndarray], detector: str) -> DfFaces:
    return DfFaces([area(f) for f in faces], [round(float(f.confidence), 2) for f in faces],
                   chips, detector)


def whole_image_chips(data: bytes, specs: list[ChipSpec], limits: Any
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


class DeepfaceFlow:
    """DeepFace's requests over a :class:`Flow` (its backends and its policy)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    async def spoof_specs(self, anti_spoofing: bool) -> list[ChipSpec]:
        """The anti-spoofing crops a request needs: none unless it set anti_spoofing.

        When the configured model's weights are missing, asking for it answers
        ``model_not_installed`` before any image is decoded.
        """
        if not anti_spoofing:
            return []
        try:
            return chip_specs(await self.flow.attribute_info(ANTI_SPOOFING))
        except ModelNotInstalled as exc:
            raise ModelNotInstalled(f"anti_spoofing=true: {exc.message}; or send "
                                    "anti_spoofing=false", {**exc.details,
                                                            "field": "anti_spoofing"}) from None

    @staticmethod
    def _judge(verdicts: Sequence[dict[str, Any]]) -> None:
        """DeepFace's anti_spoofing: any face judged a spoof fails the whole request."""
        if any(not v["is_real"] for v in verdicts):
            raise SpoofDetected("Spoof detected in the given image.",
                                {"faces": [i for i, v in enumerate(verdicts) if not v["is_real"]]})

    async def check_live(self, chips: dict[str, np.ndarray], specs: list[ChipSpec]) -> None:
        if specs:
            self._judge(await self.flow.analyze_chips(
                [ANTI_SPOOFING], {s.key: chips[s.key] for s in specs}))

    async def whole_image(self, data: bytes, specs: list[ChipSpec], detector: str) -> DfFaces:
        """DeepFace's stand-in when it finds no face (or is told to skip detection)."""
        chips, w, h = await asyncio.to_thread(whole_image_chips, data, specs, self.flow.s.images)
        whole = {"x": 0, "y": 0, "w": w, "h": h, "left_eye": None, "right_eye": None}
        return DfFaces([whole], [0.0], chips,
                       detector if detector == SKIP else f"{detector} (no face: whole image)")

    # ---------------------------------------------------------------- represent, verify
    async def embed(self, data: bytes, model: str, q: FaceQuery, anti_spoofing: bool
                    ) -> tuple[DfFaces, np.ndarray]:
        """Every face of an image and its embedding (answered to the client)."""
        async def send(ref: Ref, m: str | None) -> EmbeddedImage | np.ndarray:
            return unwrap(await ref)

        res, whole = await self._embedded(data, model, q, anti_spoofing, send,
                                          lambda r: bool(r.faces))
        if whole is not None:
            return whole, np.asarray(res, np.float32)
        detector = q.detector or self.flow.policy.default_detector
        return _df_faces(res.faces, {}, detector), np.asarray(res.vectors, np.float32)

    async def analyze(self, data: bytes, actions: list[str], q: FaceQuery,
                      anti_spoofing: bool) -> tuple[DfFaces, list[dict[str, Any]]]:
        """The attributes of every face; with anti-spoofing the one detection goes to
        the liveness model first, then to the attribute models."""
        infos = await asyncio.gather(*(self.flow.attribute_info(a) for a in actions))
        spoof = await self.spoof_specs(anti_spoofing)
        specs = list(dict.fromkeys([c for i in infos for c in chip_specs(i)] + spoof))
        detector = q.detector or self.flow.policy.default_detector
        if detector != SKIP:
            det = self.flow.detector.detect(self.flow.request(data, q, specs))
            if spoof:
                verdict: AnalyzedImage = unwrap(await self.flow.analyzer.analyze(
                    det, (ANTI_SPOOFING,)))
                enforce(verdict.faces, q)
                if verdict.faces:
                    self._judge(verdict.attributes)
            if not spoof or verdict.faces:
                res: AnalyzedImage = unwrap(await self.flow.analyzer.analyze(det, tuple(actions)))
                enforce(res.faces, q)
                if res.faces:
                    return _df_faces(res.faces, {}, detector), res.attributes
        faces = await self.whole_image(data, specs, detector)
        await self.check_live(faces.chips, spoof)
        return faces, await self.flow.analyze_chips(actions, faces.chips)

    # ---------------------------------------------------------------- register, search
    async def _embedded(self, data: bytes, model: str, q: FaceQuery, anti_spoofing: bool,
                          send: Callable[[Ref, str | None], Awaitable[T]],
                          found: Callable[[T], bool]) -> tuple[T, DfFaces | None]:
        """``send(ref, model)`` the embedding of an image's faces on (to the gallery, or
        awaited); with no face found, DeepFace's whole-image stand-in, returned with it
        (``model`` names the model of its vectors). With anti-spoofing the one detection
        goes to the Analyzer for the verdicts and, once every face was judged real, to
        the Embedder: the chips never come back to the ingress."""
        detector = q.detector or self.flow.policy.default_detector
        spoof = await self.spoof_specs(anti_spoofing)
        specs = chip_specs(await self.flow.embedder_info(model))
        if detector != SKIP:
            det = self.flow.detector.detect(
                self.flow.request(data, q, list(dict.fromkeys(specs + spoof))))
            if spoof:
                verdict: AnalyzedImage = unwrap(await self.flow.analyzer.analyze(
                    det, (ANTI_SPOOFING,)))
                enforce(verdict.faces, q)
                if verdict.faces:
                    self._judge(verdict.attributes)
                    return await send(self.flow.embedder.embed(det, model), None), None
            else:
                res = await send(self.flow.embedder.embed(det, model), None)
                if found(res):
                    return res, None
                enforce([], q)
        whole = await self.whole_image(data, list(dict.fromkeys(specs + spoof)), detector)
        await self.check_live(whole.chips, spoof)
        ref = self.flow.embedder.embed_chips(
            EmbedRequest(model, {c.key: whole.chips[c.key] for c in specs}))
        return await send(ref, model), whole

    async def register(self, collection: str, data: bytes, model: str, q: FaceQuery,
                       anti_spoofing: bool, meta: dict[str, Any],
                       actor: Actor | None = None) -> list[Record]:
        """Enrol every face of an image (DeepFace's ``/register``); the faces written."""
        create = self.flow.policy.may_create(actor)

        async def send(ref: Ref, m: str | None) -> RegisteredImages:
            return unwrap(await self.flow.gallery.register_embedded(
                collection, [meta], None, [ref], actor, create=create, every_face=True,
                model=m))

        def found(res: RegisteredImages) -> bool:
            return not (len(res.results) == 1 and isinstance(res.results[0], NoFaceDetected))

        res, _ = await self._embedded(data, model, q, anti_spoofing, send, found)
        out = []
        for r in res.results:
            if isinstance(r, FacefleetError):
                raise r
            out.append({k: v for k, v in r.items() if k != "box"})
        return out

    async def search(self, collection: str, data: bytes, model: str, q: FaceQuery,
                     anti_spoofing: bool, k: int, max_distance: float | None,
                     actor: Actor | None = None) -> tuple[IdentifiedImage, str]:
        """The matches of every face of an image (DeepFace's ``/search``), each face's
        box filled in (the whole image for the stand-in), and the detector used."""
        async def send(ref: Ref, m: str | None) -> IdentifiedImage:
            return unwrap(await self.flow.gallery.identify_embedded(
                ref, collection, k, False, actor, max_distance=max_distance, model=m))

        res, whole = await self._embedded(data, model, q, anti_spoofing, send,
                                            lambda r: bool(r.faces))
        detector = q.detector or self.flow.policy.default_detector
        if whole is not None:
            box = {key: whole.areas[0][key] for key in ("x", "y", "w", "h")}
            for f in res.faces:
                f.box = box
            detector = whole.detector
        return res, detector


def checked_actions(requested: list[str] | None, known: Sequence[str]) -> list[str] | None:
    """DeepFace's ``actions``: None for its default; an empty or unknown one is a 422."""
    if requested is None:
        return None
    if not requested:
        raise ValidationError(f"'actions' is empty; name at least one of {', '.join(known)}")
    for a in requested:
        if a not in known:
            raise ValidationError(f"Invalid action passed ({a!r}); available actions are "
                                  f"{', '.join(known)}", {"action": a})
    return list(dict.fromkeys(requested))


__all__ = ["DeepfaceFlow", "DfFaces", "NoFaceDetected", "area", "checked_actions",
           "whole_image_chips"]
