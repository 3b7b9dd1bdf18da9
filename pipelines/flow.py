"""The request flow of the service as plain code: detect -> embed / analyze -> gallery.

:class:`Flow` runs every request the HTTP routes (and the DeepFace-compatible
routes) need over four small backends. A topology is nothing but a choice of
backends: Serve deployment handles (``deployments/backends.py``: each stage's
result is handed to the next stage as a ``DeploymentResponse``, so detections
travel from the Detector to the Embedder and on to the Gallery without a round
trip through the ingress), or stages in this very process (the fused
topology, and tests without Ray). The contract of a backend: a stage call
returns an awaitable *reference* at once, without waiting; a reference may be
handed to the next stage of the same topology or awaited for its value, which
is the result or a ``FacefleetError`` (stages return errors as values, so one
bad item of a batch fails alone). Nothing here knows Serve or FastAPI.

The gallery side of identify and register (:func:`identify_embedded`,
:func:`register_embedded`) runs where the gallery is, next to its search and
register, so only faces and matches travel back. The gallery calls take an
``actor`` (``index.audit.Actor``: who asks, under which request id), which
the gallery records in its audit trail with the change it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from configs.errors import (CollectionNotFound, FacefleetError, ModelMismatch, NoFaceDetected,
                            ValidationError)
from configs.settings import Settings
from pipelines.registry import DETECTORS
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest
from pipelines.types import AnalyzedImage, ChipSpec, DetectedImage, EmbeddedImage

#: the chip returned by ``/v1/detect`` with ``return_crops``
CROP_SPEC = ChipSpec(150, 0.25)


class DetectBackend(Protocol):
    def detect(self, request: DetectRequest) -> Awaitable[Any]: ...


class EmbedBackend(Protocol):
    def embed(self, detected: Any, model: str) -> Awaitable[Any]: ...
    def embed_chips(self, request: EmbedRequest) -> Awaitable[Any]: ...
    async def info(self, model: str) -> dict[str, Any] | FacefleetError: ...


class AnalyzeBackend(Protocol):
    def analyze(self, detected: Any, actions: tuple[str, ...]) -> Awaitable[Any]: ...
    def analyze_chips(self, request: AnalyzeRequest) -> Awaitable[Any]: ...
    async def info(self, action: str) -> dict[str, Any] | FacefleetError: ...


class GalleryBackend(Protocol):
    """The gallery's own operations (``index.gallery.GalleryService``) plus the two
    that take embedded images from the stage before."""

    def identify_embedded(self, embedded: Any, collection: str, k: int, per_person: bool,
                          actor: Any = None) -> Awaitable[Any]: ...
    def register_embedded(self, collection: str, metas: list[dict[str, Any]],
                          idempotency_key: str | None, embedded: list[Any],
                          actor: Any = None) -> Awaitable[Any]: ...
    def __getattr__(self, name: str) -> Any: ...


def unwrap(value: Any) -> Any:
    if isinstance(value, FacefleetError):
        raise value
    return value


@dataclass(frozen=True)
class FaceQuery:
    """How to find faces in one image."""

    detector: str | None = None
    max_faces: int | None = None
    min_confidence: float = 0.0
    enforce_detection: bool = True
    field: str = "img"


@dataclass(slots=True)
class IdentifiedImage:
    """Faces of a probe image and, per face, its matches (nearest first)."""

    image: EmbeddedImage
    hits: list[list[dict[str, Any]]]


@dataclass(slots=True)
class RegisteredImages:
    """One result per enrolled image: the face written (with its box) or an error."""

    collection: str
    model: str
    results: list[dict[str, Any] | FacefleetError] = field(default_factory=list)
    replayed: bool = False


class Flow:
    """Every request of the API over the backends of one topology."""

    def __init__(self, settings: Settings, detector: DetectBackend, embedder: EmbedBackend,
                 analyzer: AnalyzeBackend, gallery: GalleryBackend | None = None) -> None:
        self.s = settings
        self.detector = detector
        self.embedder = embedder
        self.analyzer = analyzer
        self._gallery = gallery
        self._embed_info: dict[str, dict[str, Any]] = {}
        self._attr_info: dict[str, dict[str, Any]] = {}
        #: collection -> the model it is bound to (dropped collections are forgotten)
        self._collection_models: dict[str, str] = {}

    @property
    def gallery(self) -> GalleryBackend:
        if self._gallery is None:
            from configs.errors import Unavailable

            raise Unavailable("the gallery is not enabled in this deployment (args.gallery)")
        return self._gallery

    @property
    def has_gallery(self) -> bool:
        return self._gallery is not None

    # ---------------------------------------------------------------- models
    async def embedder_info(self, name: str) -> dict[str, Any]:
        info = self._embed_info.get(name)
        if info is None:
            info = unwrap(await self.embedder.info(name))
            self._embed_info[name] = info
        return info

    async def attribute_info(self, action: str) -> dict[str, Any]:
        info = self._attr_info.get(action)
        if info is None:
            info = unwrap(await self.analyzer.info(action))
            self._attr_info[action] = info
        return info

    @staticmethod
    def chip_specs(info: Mapping[str, Any]) -> list[ChipSpec]:
        """The chips a model's info says it needs (a fused embedder needs several)."""
        if "chip_specs" in info:
            return [ChipSpec.from_dict(c) for c in info["chip_specs"]]
        return [ChipSpec(int(info["chip_size"]), float(info["chip_padding"]))]

    # ---------------------------------------------------------------- stages
    def _request(self, data: bytes, q: FaceQuery, specs: Sequence[ChipSpec]) -> DetectRequest:
        name = q.detector or self.s.default_detector
        if name not in DETECTORS:
            raise ValidationError(f"unknown detector '{name}'; available: {', '.join(DETECTORS)}",
                                  {"detector": name, "available": list(DETECTORS)})
        max_faces = min(q.max_faces or self.s.max_faces, self.s.max_faces)
        return DetectRequest(data=data, detector=name, max_faces=max_faces,
                             min_confidence=q.min_confidence, chip_specs=tuple(specs))

    @staticmethod
    def _enforce(faces: Sequence[Any], q: FaceQuery) -> None:
        if q.enforce_detection and not faces:
            raise NoFaceDetected(f"no face detected in '{q.field}'; set enforce_detection=false "
                                 "to get an empty result instead", {"field": q.field})

    async def detect(self, data: bytes, q: FaceQuery, crops: bool = False) -> DetectedImage:
        det: DetectedImage = unwrap(await self.detector.detect(
            self._request(data, q, [CROP_SPEC] if crops else [])))
        self._enforce(det.faces, q)
        return det

    async def _embedding_ref(self, data: bytes, q: FaceQuery, model: str) -> Any:
        """The embedder's reference for one image (not awaited)."""
        specs = self.chip_specs(await self.embedder_info(model))
        return self.embedder.embed(self.detector.detect(self._request(data, q, specs)), model)

    async def embed(self, data: bytes, q: FaceQuery, model: str | None = None) -> EmbeddedImage:
        emb: EmbeddedImage = unwrap(await (await self._embedding_ref(
            data, q, model or self.s.default_embedder)))
        self._enforce(emb.faces, q)
        return emb

    async def analyze(self, data: bytes, q: FaceQuery, actions: Sequence[str]) -> AnalyzedImage:
        if not actions:
            raise ValidationError("'actions' must name at least one of age, gender, emotion, race")
        actions = tuple(dict.fromkeys(actions))
        infos = await asyncio.gather(*(self.attribute_info(a) for a in actions))
        specs = list(dict.fromkeys(c for i in infos for c in self.chip_specs(i)))
        res: AnalyzedImage = unwrap(await self.analyzer.analyze(
            self.detector.detect(self._request(data, q, specs)), actions))
        self._enforce(res.faces, q)
        return res

    async def detect_chips(self, data: bytes, q: FaceQuery,
                           specs: Sequence[ChipSpec]) -> DetectedImage:
        """Detection with the chips ``specs`` cut, for callers that run models on them."""
        det: DetectedImage = unwrap(await self.detector.detect(self._request(data, q, specs)))
        self._enforce(det.faces, q)
        return det

    async def embed_chips(self, model: str, chips: Any) -> Any:
        return unwrap(await self.embedder.embed_chips(EmbedRequest(model, chips)))

    async def analyze_chips(self, actions: Sequence[str], chips: dict[str, Any]) -> list[dict]:
        return unwrap(await self.analyzer.analyze_chips(AnalyzeRequest(tuple(actions), chips)))

    # ---------------------------------------------------------------- gallery
    async def collection_model(self, collection: str, requested: str | None) -> str:
        """The model to embed with: the request's, else the collection's own (cached),
        else the default one (the collection is created on first enrolment)."""
        if requested is not None:
            return requested
        model = self._collection_models.get(collection)
        if model is None:
            try:
                model = (await self.gallery.get_collection(collection))["model"]
            except CollectionNotFound:
                return self.s.default_embedder
            self._collection_models[collection] = model
        return model

    def forget_collection(self, collection: str) -> None:
        self._collection_models.pop(collection, None)

    async def _retry_stale_model(self, collection: str, requested: str | None, run) -> Any:
        """Run ``run(model)``; if the cached model was stale (the collection was dropped
        and made again elsewhere), forget it and run once more."""
        model = await self.collection_model(collection, requested)
        try:
            return unwrap(await run(model))
        except (ModelMismatch, CollectionNotFound):
            if requested is not None or collection not in self._collection_models:
                raise
            self.forget_collection(collection)
            return unwrap(await run(await self.collection_model(collection, None)))

    async def identify(self, collection: str, data: bytes, q: FaceQuery, k: int,
                       per_person: bool = False, model: str | None = None,
                       actor: Any = None) -> IdentifiedImage:
        async def run(m: str) -> Any:
            return await self.gallery.identify_embedded(await self._embedding_ref(data, q, m),
                                                        collection, k, per_person, actor)

        res: IdentifiedImage = await self._retry_stale_model(collection, model, run)
        self._enforce(res.image.faces, q)
        self._collection_models.setdefault(collection, res.image.model)
        return res

    async def register(self, collection: str, images: Sequence[tuple[bytes | FacefleetError,
                                                                     dict[str, Any]]],
                       q: FaceQuery, model: str | None = None,
                       idempotency_key: str | None = None,
                       actor: Any = None) -> RegisteredImages:
        """Enrol the largest face of each image; ``images`` pairs each image (or the
        error met while reading it) with its ``person_id`` / ``name`` / ``labels``."""
        async def run(m: str) -> Any:
            refs = []
            for i, (data, _meta) in enumerate(images):
                if isinstance(data, FacefleetError):
                    refs.append(data)
                    continue
                field_q = FaceQuery(q.detector, 1, q.min_confidence, True,
                                    q.field if len(images) == 1 else f"items[{i}].img")
                refs.append(await self._embedding_ref(data, field_q, m))
            metas = [meta for _data, meta in images]
            return await self.gallery.register_embedded(collection, metas, idempotency_key, refs,
                                                        actor)

        res: RegisteredImages = await self._retry_stale_model(collection, model, run)
        if res.model:
            self._collection_models[collection] = res.model
        return res

    async def drop_collection(self, collection: str, actor: Any = None) -> dict[str, Any]:
        self.forget_collection(collection)
        return await self.gallery.drop_collection(collection, actor)


# --------------------------------------------------------------------------- gallery side


def nearest_per_person(row: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Each person's nearest face only, at most ``k`` of them (``row`` is nearest first)."""
    seen: set[str] = set()
    out = []
    for hit in row:
        if hit["person_id"] not in seen:
            seen.add(hit["person_id"])
            out.append(hit)
    return out[:k]


async def identify_embedded(gallery: Any, embedded: EmbeddedImage | FacefleetError,
                            collection: str, k: int, per_person: bool = False,
                            actor: Any = None) -> IdentifiedImage | FacefleetError:
    """Search every face of an embedded probe image (runs where the gallery is)."""
    if isinstance(embedded, FacefleetError):
        return embedded
    if not embedded.faces:
        return IdentifiedImage(embedded, [])
    # per person: look further, then keep each person's nearest face
    depth = min(k * 5, 500) if per_person else k
    try:
        hits = await gallery.search(collection, embedded.model, embedded.vectors, depth,
                                    actor=actor)
    except FacefleetError as exc:
        return exc
    if per_person:
        hits = [nearest_per_person(row, k) for row in hits]
    return IdentifiedImage(embedded, hits)


async def register_embedded(gallery: Any, collection: str, metas: Sequence[Mapping[str, Any]],
                            idempotency_key: str | None,
                            embedded: Sequence[EmbeddedImage | FacefleetError],
                            actor: Any = None) -> RegisteredImages | FacefleetError:
    """Commit the largest face of each embedded image in one register (runs where the
    gallery is); items without a face, or that failed before, fail alone. The
    collection is created on first enrolment unless ``actor.may_create`` is False."""
    results: list[dict[str, Any] | FacefleetError] = []
    ok: list[int] = []
    for i, (meta, emb) in enumerate(zip(metas, embedded, strict=True)):
        if isinstance(emb, FacefleetError):
            results.append(emb)
        elif not emb.faces:
            f = meta.get("field", "img")
            results.append(NoFaceDetected(f"no face detected in '{f}'", {"field": f}))
        else:
            results.append({})
            ok.append(i)
    if not ok:
        return RegisteredImages(collection, "", results)
    model = embedded[ok[0]].model  # type: ignore[union-attr]
    vecs = [embedded[i].vectors[0] for i in ok]  # type: ignore[union-attr]
    items = [{"embedding": v, "person_id": metas[i].get("person_id"),
              "name": metas[i].get("name"), "labels": metas[i].get("labels")}
             for i, v in zip(ok, vecs, strict=True)]
    try:
        res = await gallery.register(collection, model, int(len(vecs[0])), items,
                                     idempotency_key=idempotency_key,
                                     create_collection=getattr(actor, "may_create", True),
                                     actor=actor)
    except FacefleetError as exc:
        return exc
    for i, face in zip(ok, res["faces"], strict=True):
        box = embedded[i].faces[0].box  # type: ignore[union-attr]
        results[i] = {**face, "box": box.as_dict()}
    return RegisteredImages(collection, model, results, bool(res.get("replayed")))

