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
the gallery records in its audit trail with the change it makes. Embeddings a
client sends in place of images (:class:`pipelines.types.GivenEmbedding`) skip
the model stages and are checked against the collection's model and dimension
first. A register under an idempotency key stores its whole answer with its
commit, so a retry gets that answer back (:meth:`Flow.replay_register`,
:func:`replayed_answer`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from configs.errors import (CollectionNotFound, FacefleetError, ModelMismatch, NoFaceDetected,
                            ValidationError, error_from_code)
from configs.settings import Settings
from pipelines.registry import DETECTORS
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest
from pipelines.types import (AnalyzedImage, ChipSpec, DetectedImage, EmbeddedImage,
                             GivenEmbedding)

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
                          actor: Any = None, *, request_hash: str | None = None,
                          create: bool = True) -> Awaitable[Any]: ...
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
    #: this write created the collection (its first enrolment)
    collection_created: bool = False


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
            raise ValidationError("'actions' must name at least one of age, gender, emotion, race, "
                                  "anti_spoofing")
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
    @property
    def strict_collections(self) -> bool:
        """Writes to an unknown collection fail instead of creating it."""
        return self.s.index.strict_collections

    async def collection_model(self, collection: str, requested: str | None,
                               write: bool = False) -> str:
        """The model to embed with: the request's, else the collection's own (cached),
        else the default one (the collection is created on first enrolment, unless
        collections are strict: then a write to an unknown one fails here, before
        any image is looked at)."""
        if requested is not None and not (write and self.strict_collections):
            return requested
        model = self._collection_models.get(collection)
        if model is None:
            try:
                model = (await self.gallery.get_collection(collection))["model"]
            except CollectionNotFound:
                if write and self.strict_collections:
                    raise
                return requested or self.s.default_embedder
            self._collection_models[collection] = model
        return requested or model

    async def vector_binding(self, collection: str, requested: str | None,
                             write: bool = False) -> tuple[str, int]:
        """The model and dimension vectors sent for ``collection`` must have: the
        collection's (a request naming another model is refused, 409), or for a
        collection the write will create, the requested (or default) model's."""
        try:
            info = await self.gallery.get_collection(collection)
        except CollectionNotFound:
            if not write or self.strict_collections:
                raise
            model = requested or self.s.default_embedder
            return model, int((await self.embedder_info(model))["dim"])
        if requested is not None and requested != info["model"]:
            raise ModelMismatch(
                f"collection {collection!r} holds {info['model']} embeddings, not {requested}",
                {"collection": collection, "collection_model": info["model"],
                 "model": requested})
        self._collection_models[collection] = info["model"]
        return info["model"], int(info["dim"])

    def forget_collection(self, collection: str) -> None:
        self._collection_models.pop(collection, None)

    async def _retry_stale_model(self, collection: str, requested: str | None, run,
                                 write: bool = False) -> Any:
        """Run ``run(model)``; if the cached model was stale (the collection was dropped
        and made again elsewhere), forget it and run once more."""
        model = await self.collection_model(collection, requested, write)
        try:
            return unwrap(await run(model))
        except (ModelMismatch, CollectionNotFound):
            if requested is not None or collection not in self._collection_models:
                raise
            self.forget_collection(collection)
            return unwrap(await run(await self.collection_model(collection, None, write)))

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

    async def replay_register(self, collection: str, idempotency_key: str | None,
                              request_hash: str | None, n: int) -> RegisteredImages | None:
        """The first answer of a register retried under ``idempotency_key`` (the same
        request: ``request_hash``), or None when none was committed; asked before
        any image is fetched or embedded."""
        if idempotency_key is None or request_hash is None:
            return None
        stored = await self.gallery.replay_register(collection, idempotency_key, request_hash)
        return None if stored is None else replayed_answer(collection, stored, n)

    async def identify_vector(self, collection: str, vector: Any, k: int,
                              per_person: bool = False, model: str | None = None,
                              actor: Any = None) -> tuple[str, list[dict[str, Any]]]:
        """The model and the matches of one embedding sent by the client (nearest first);
        its model and dimension must be the collection's."""
        async def run(m: str) -> Any:
            hits = await self.gallery.search(collection, m, [vector], search_depth(k, per_person),
                                             actor=actor)
            return m, hits[0]

        m, row = await self._retry_stale_model(collection, model, run)
        self._collection_models.setdefault(collection, m)
        return m, nearest_per_person(row, k) if per_person else row

    async def register(self, collection: str,
                       images: Sequence[tuple[bytes | np.ndarray | FacefleetError,
                                              dict[str, Any]]],
                       q: FaceQuery, model: str | None = None,
                       idempotency_key: str | None = None,
                       request_hash: str | None = None,
                       actor: Any = None) -> RegisteredImages:
        """Enrol the largest face of each image, or each embedding as it is; ``images``
        pairs each image (its bytes), embedding (an array) or the error met while
        reading it with its ``person_id`` / ``name`` / ``labels``.

        Under an ``idempotency_key``, ``request_hash`` (a digest of the request as it
        was sent) is stored with the write; a retry that races this one finds
        the first answer in the store and gets it back (per-item failures
        included) instead of enrolling anything twice.
        """
        if any(isinstance(data, np.ndarray) for data, _meta in images):
            model, dim = await self.vector_binding(collection, model, write=True)
            images = [(given_vector(data, model, dim, _item_field(images, i, "embedding"))
                       if isinstance(data, np.ndarray) else data, meta)
                      for i, (data, meta) in enumerate(images)]

        async def run(m: str) -> Any:
            refs = []
            for i, (data, _meta) in enumerate(images):
                if isinstance(data, FacefleetError | GivenEmbedding):
                    refs.append(data)
                    continue
                field_q = FaceQuery(q.detector, 1, q.min_confidence, True,
                                    q.field if len(images) == 1 else f"items[{i}].img")
                refs.append(await self._embedding_ref(data, field_q, m))
            metas = [meta for _data, meta in images]
            return await self.gallery.register_embedded(
                collection, metas, idempotency_key, refs, actor, request_hash=request_hash,
                create=not self.strict_collections)

        res: RegisteredImages = await self._retry_stale_model(collection, model, run,
                                                              write=True)
        if res.model:
            self._collection_models[collection] = res.model
        return res

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]],
                           actor: Any = None) -> dict[str, Any]:
        """One chunk of exported faces, kept with their ids (see ``GalleryCore.import_faces``);
        it may create the collection unless collections are strict or the actor may not."""
        create = not self.strict_collections and getattr(actor, "may_create", True)
        return await self.gallery.import_faces(collection, model, dim, rows, create, actor)

    async def drop_collection(self, collection: str, actor: Any = None) -> dict[str, Any]:
        self.forget_collection(collection)
        return await self.gallery.drop_collection(collection, actor)


# --------------------------------------------------------------------------- gallery side


def _item_field(items: Sequence[Any], i: int, name: str) -> str:
    return name if len(items) == 1 else f"items[{i}].{name}"


def given_vector(vector: np.ndarray, model: str, dim: int,
                 field: str) -> GivenEmbedding | FacefleetError:
    """A client's embedding checked for the collection (its dimension, finite and
    not zero), or the error that item fails with. The gallery normalises it."""
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vec.shape[0] != dim:
        return ValidationError(
            f"'{field}' has {vec.shape[0]} dimensions; the collection's model {model} has {dim}",
            {"field": field, "dim": int(vec.shape[0]), "collection_dim": dim, "model": model})
    if not np.isfinite(vec).all() or not np.any(vec):
        return ValidationError(f"'{field}' must be finite and not all zeros", {"field": field})
    return GivenEmbedding(vec, model)


def search_depth(k: int, per_person: bool) -> int:
    """How many faces to fetch for ``k`` answers: per person, look further, then keep
    each person's nearest face."""
    return min(k * 5, 500) if per_person else k


def replayed_answer(collection: str, stored: Mapping[str, Any], n: int) -> RegisteredImages:
    """The first answer of a retried register, rebuilt from what it stored
    (:func:`register_embedded`'s ``extra``): created faces with their boxes, and
    the items that failed, with the same errors."""
    faces = list(stored.get("faces", []))
    extra = stored.get("extra") or {"ok": list(range(len(faces))), "boxes": [None] * len(faces),
                                    "errors": {}}
    results: list[dict[str, Any] | FacefleetError] = [
        ValidationError("this item was not enrolled", {}) for _ in range(n)]
    for i, box, face in zip(extra["ok"], extra["boxes"], faces, strict=True):
        results[i] = {**face, "box": box}
    for i, (code, message) in extra.get("errors", {}).items():
        results[int(i)] = error_from_code(code, message)
    return RegisteredImages(collection, stored.get("model", ""), results, True,
                            bool(stored.get("collection_created")))


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
    try:
        hits = await gallery.search(collection, embedded.model, embedded.vectors,
                                    search_depth(k, per_person), actor=actor)
    except FacefleetError as exc:
        return exc
    if per_person:
        hits = [nearest_per_person(row, k) for row in hits]
    return IdentifiedImage(embedded, hits)


async def register_embedded(gallery: Any, collection: str, metas: Sequence[Mapping[str, Any]],
                            idempotency_key: str | None,
                            embedded: Sequence[EmbeddedImage | GivenEmbedding | FacefleetError],
                            actor: Any = None, request_hash: str | None = None,
                            create: bool = True) -> RegisteredImages | FacefleetError:
    """Commit the largest face of each embedded image (and each embedding given as
    it is) in one register (runs where the gallery is); items without a face, or
    that failed before, fail alone. The collection is created on first enrolment
    unless ``create`` is False (strict collections) or ``actor.may_create`` is.
    Under an idempotency key the whole answer (boxes, and the failures) is stored
    with the write, so a retry that lands on it gets the first answer back,
    whatever its own images gave this time."""
    results: list[dict[str, Any] | FacefleetError] = []
    ok: list[int] = []
    vecs: list[np.ndarray] = []
    boxes: list[dict[str, int] | None] = []
    model = ""
    for i, (meta, emb) in enumerate(zip(metas, embedded, strict=True)):
        if isinstance(emb, FacefleetError):
            results.append(emb)
            continue
        if isinstance(emb, GivenEmbedding):
            vec, box, m = emb.vector, None, emb.model
        elif not emb.faces:
            f = meta.get("field", "img")
            results.append(NoFaceDetected(f"no face detected in '{f}'", {"field": f}))
            continue
        else:
            vec, box, m = emb.vectors[0], emb.faces[0].box.as_dict(), emb.model
        model = model or m
        results.append({})
        ok.append(i)
        vecs.append(vec)
        boxes.append(box)
    if not ok:
        return RegisteredImages(collection, "", results)
    items = [{"embedding": v, "person_id": metas[i].get("person_id"),
              "name": metas[i].get("name"), "labels": metas[i].get("labels")}
             for i, v in zip(ok, vecs, strict=True)]
    extra = {"ok": ok, "boxes": boxes,
             "errors": {str(i): [r.code.value, r.message] for i, r in enumerate(results)
                        if isinstance(r, FacefleetError)}}
    try:
        res = await gallery.register(collection, model, int(len(vecs[0])), items,
                                     idempotency_key=idempotency_key,
                                     create_collection=create and getattr(actor, "may_create",
                                                                          True),
                                     request_hash=request_hash, extra=extra, actor=actor)
    except FacefleetError as exc:
        return exc
    if res.get("replayed") and request_hash is not None:
        return replayed_answer(collection, res, len(metas))
    for i, box, face in zip(ok, boxes, res["faces"], strict=True):
        results[i] = {**face, "box": box}
    return RegisteredImages(collection, model, results, bool(res.get("replayed")),
                            bool(res.get("collection_created")))

