"""The request flow of the service as plain code: detect -> embed / analyze -> gallery.

:class:`Flow` runs every request the HTTP routes (and the DeepFace-compatible
routes, ``pipelines.flow.deepface``) need over the four backends of one
topology (``pipelines.flow.contracts``). Each stage's reference is handed to
the next stage unawaited, so detections travel from the Detector to the
Embedder and on to the Gallery without a round trip through the ingress; the
gallery side (``pipelines.flow.gallery_side``) answers boxes and matches.
What a request may do, with which model and threshold, is asked of
:class:`pipelines.flow.policy.Policy` first, so a request that must fail
fails before any model runs. Embeddings a client sends in place of images
(:class:`pipelines.types.GivenEmbedding`) skip the model stages and are
checked against the collection's model and dimension first. Nothing here
knows Serve or FastAPI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import (CollectionNotFound, FacefleetError, ModelMismatch, NoFaceDetected,
                            Unavailable)
from configs.settings import Settings
from pipelines.flow.contracts import (Actor, AnalyzeBackend, DetectBackend, EmbedBackend,
                                      GalleryBackend, IdentifiedImage, Record, Ref,
                                      RegisteredImages)
from pipelines.flow.facts import CollectionModels
from pipelines.flow.gallery_side import given_vector, nearest_per_person, replayed_answer, \
    search_depth
from pipelines.flow.policy import Policy
from pipelines.stages import AnalyzeRequest, DetectRequest, EmbedRequest
from pipelines.types import (AnalyzedImage, ChipSpec, DetectedImage, EmbeddedImage,
                             GivenEmbedding)

#: the chip returned by ``/v1/detect`` with ``return_crops``
CROP_SPEC = ChipSpec(150, 0.25)


def unwrap(value: Any) -> Any:
    if isinstance(value, FacefleetError):
        raise value
    return value


def chip_specs(info: Mapping[str, Any]) -> list[ChipSpec]:
    """The chips a model's info says it needs (a fused embedder needs several)."""
    if "chip_specs" in info:
        return [ChipSpec.from_dict(c) for c in info["chip_specs"]]
    return [ChipSpec(int(info["chip_size"]), float(info["chip_padding"]))]


@dataclass(frozen=True)
class FaceQuery:
    """How to find faces in one image."""

    detector: str | None = None
    max_faces: int | None = None
    min_confidence: float = 0.0
    enforce_detection: bool = True
    field: str = "img"


def enforce(faces: Sequence[Any], q: FaceQuery) -> None:
    if q.enforce_detection and not faces:
        raise NoFaceDetected(f"no face detected in '{q.field}'; set enforce_detection=false "
                             "to get an empty result instead", {"field": q.field})


def _item_field(items: Sequence[Any], i: int, name: str) -> str:
    return name if len(items) == 1 else f"items[{i}].{name}"


class Flow:
    """Every request of the API over the backends of one topology."""

    def __init__(self, settings: Settings, detector: DetectBackend, embedder: EmbedBackend,
                 analyzer: AnalyzeBackend, gallery: GalleryBackend | None = None) -> None:
        self.s = settings
        self.policy = Policy(settings)
        self.detector = detector
        self.embedder = embedder
        self.analyzer = analyzer
        self._gallery = gallery
        self._embed_info: dict[str, Record] = {}
        self._attr_info: dict[str, Record] = {}
        self.collection_models = CollectionModels(settings.index.sync_interval_s)

    @property
    def gallery(self) -> GalleryBackend:
        if self._gallery is None:
            raise Unavailable("the gallery is not enabled in this deployment (args.gallery)")
        return self._gallery

    @property
    def has_gallery(self) -> bool:
        return self._gallery is not None

    # ---------------------------------------------------------------- models
    async def embedder_info(self, name: str) -> Record:
        info = self._embed_info.get(name)
        if info is None:
            info = unwrap(await self.embedder.info(name))
            self._embed_info[name] = info
        return info

    async def attribute_info(self, action: str) -> Record:
        info = self._attr_info.get(action)
        if info is None:
            info = unwrap(await self.analyzer.info(action))
            self._attr_info[action] = info
        return info

    # ---------------------------------------------------------------- stages
    def request(self, data: bytes, q: FaceQuery, specs: Sequence[ChipSpec],
                thumbnails: bool = False) -> DetectRequest:
        return DetectRequest(data=data, detector=self.policy.detector(q.detector),
                             max_faces=self.policy.max_faces(q.max_faces),
                             min_confidence=q.min_confidence, chip_specs=tuple(specs),
                             thumbnails=thumbnails)

    async def detect(self, data: bytes, q: FaceQuery, crops: bool = False) -> DetectedImage:
        det: DetectedImage = unwrap(await self.detector.detect(
            self.request(data, q, [CROP_SPEC] if crops else [])))
        enforce(det.faces, q)
        return det

    async def embedding_ref(self, data: bytes, q: FaceQuery, model: str,
                            thumbnails: bool = False) -> Ref:
        """The embedder's reference for one image (not awaited); with ``thumbnails`` the
        Detector also encodes a small JPEG of each face, which rides along."""
        specs = chip_specs(await self.embedder_info(model))
        return self.embedder.embed(
            self.detector.detect(self.request(data, q, specs, thumbnails)), model)

    async def embed(self, data: bytes, q: FaceQuery, model: str | None = None) -> EmbeddedImage:
        emb: EmbeddedImage = unwrap(await (await self.embedding_ref(
            data, q, self.policy.embedder(model))))
        enforce(emb.faces, q)
        return emb

    def verify_threshold(self, model: str | None, given: float | None) -> tuple[str, float]:
        """The model and threshold of a 1:1 verify, decided before either image is
        embedded (422 for a model without a calibrated threshold)."""
        name = self.policy.embedder(model)
        return name, self.policy.verify_threshold_of(name, given)

    async def analyze(self, data: bytes, q: FaceQuery, actions: Sequence[str]) -> AnalyzedImage:
        actions = self.policy.actions(actions)
        infos = await asyncio.gather(*(self.attribute_info(a) for a in actions))
        specs = list(dict.fromkeys(c for i in infos for c in chip_specs(i)))
        res: AnalyzedImage = unwrap(await self.analyzer.analyze(
            self.detector.detect(self.request(data, q, specs)), actions))
        enforce(res.faces, q)
        return res

    async def detect_chips(self, data: bytes, q: FaceQuery,
                           specs: Sequence[ChipSpec]) -> DetectedImage:
        """Detection with the chips ``specs`` cut, for callers that run models on them."""
        det: DetectedImage = unwrap(await self.detector.detect(self.request(data, q, specs)))
        enforce(det.faces, q)
        return det

    async def embed_chips(self, model: str, chips: Any) -> np.ndarray:
        return unwrap(await self.embedder.embed_chips(EmbedRequest(model, chips)))

    async def analyze_chips(self, actions: Sequence[str], chips: dict[str, Any]) -> list[dict]:
        return unwrap(await self.analyzer.analyze_chips(AnalyzeRequest(tuple(actions), chips)))

    # ---------------------------------------------------------------- collections
    @property
    def strict_collections(self) -> bool:
        return self.policy.strict_collections

    async def collection_model(self, collection: str, requested: str | None,
                               write: bool = False) -> str:
        """The model to embed with (:meth:`Policy.bound_model`): the request's, else
        the collection's own (remembered, ``pipelines.flow.facts``), else the default
        one for a collection the write will create. A collection that must exist and
        does not fails here, before any image is looked at."""
        must_exist = self.policy.must_exist(write)
        if requested is not None and not (write and must_exist):
            return requested
        model = self.collection_models.get(collection)
        if model is None:
            try:
                model = (await self.gallery.get_collection(collection))["model"]
            except CollectionNotFound:
                if must_exist:
                    raise
                return self.policy.bound_model(requested, None)
            self.collection_models.put(collection, model)
        return self.policy.bound_model(requested, model)

    async def vector_binding(self, collection: str, requested: str | None,
                             write: bool = False) -> tuple[str, int]:
        """The model and dimension vectors sent for ``collection`` must have: the
        collection's (a request naming another model is refused, 409), or for a
        collection the write will create, the requested (or default) model's."""
        try:
            info = await self.gallery.get_collection(collection)
        except CollectionNotFound:
            if self.policy.must_exist(write):
                raise
            model = self.policy.bound_model(requested, None)
            return model, int((await self.embedder_info(model))["dim"])
        if requested is not None and requested != info["model"]:
            raise ModelMismatch(
                f"collection {collection!r} holds {info['model']} embeddings, not {requested}",
                {"collection": collection, "collection_model": info["model"],
                 "model": requested})
        self.collection_models.put(collection, info["model"])
        return info["model"], int(info["dim"])

    async def _retry_stale_model(self, collection: str, requested: str | None,
                                 run: Callable[[str], Awaitable[Any]], write: bool = False,
                                 check: Callable[[str], Any] | None = None) -> Any:
        """Run ``run(model)`` (``check(model)`` first: the policy's checks that need the
        model); if the remembered model was stale (the collection was dropped and made
        again elsewhere), forget it and run once more."""
        model = await self.collection_model(collection, requested, write)
        remembered = requested is None and collection in self.collection_models
        if check is not None:
            check(model)
        try:
            return unwrap(await run(model))
        except (ModelMismatch, CollectionNotFound):
            if not remembered:
                raise
            self.collection_models.forget(collection)
            model = await self.collection_model(collection, None, write)
            if check is not None:
                check(model)
            return unwrap(await run(model))

    async def create_collection(self, name: str, model: str | None,
                                actor: Actor | None = None) -> Record:
        model = self.policy.embedder(model)
        info = await self.embedder_info(model)
        return await self.gallery.create_collection(name, model, int(info["dim"]), actor=actor)

    async def drop_collection(self, collection: str, actor: Actor | None = None) -> Record:
        self.collection_models.forget(collection)
        return await self.gallery.drop_collection(collection, actor)

    # ---------------------------------------------------------------- identify
    async def cluster(self, collection: str, scope: str = "unnamed",
                      threshold: float | None = None, actor: Actor | None = None,
                      job: bool = False) -> Record:
        """Group the collection's faces in scope into candidate people, cut at the
        identify threshold of its model (or ``threshold``); no model runs."""
        model = await self.collection_model(collection, None)
        cut = self.policy.identify_threshold_of(model, threshold)
        return await self.gallery.cluster(collection, cut, scope, actor, job)

    async def cluster_job(self, collection: str, job_id: str) -> Record:
        return await self.gallery.cluster_job(collection, job_id)

    async def identify(self, collection: str, data: bytes, q: FaceQuery, k: int,
                       per_person: bool = False, model: str | None = None,
                       threshold: float | None = None,
                       actor: Actor | None = None,
                       enrol_unknown: bool | None = None) -> tuple[IdentifiedImage, float]:
        """The faces of a probe image and their matches, and the 1:N threshold they are
        judged by (checked before any model runs). ``enrol_unknown`` (None: the
        collection's setting) enrols the faces that match nobody as new persons."""
        enrol = self.policy.enrol_unknown(enrol_unknown, actor)

        def check(m: str) -> None:
            self.policy.identify_threshold_of(m, threshold)

        async def run(m: str) -> Any:
            return await self.gallery.identify_embedded(
                await self.embedding_ref(data, q, m, self.policy.thumbnails(enrol)),
                collection, k, per_person, actor,
                enrol_unknown=enrol, threshold=self.policy.identify_threshold_of(m, threshold))

        res: IdentifiedImage = await self._retry_stale_model(collection, model, run,
                                                             check=check)
        enforce(res.faces, q)
        if res.faces and collection not in self.collection_models:  # it searched with it
            self.collection_models.put(collection, res.model)
        return res, self.policy.identify_threshold_of(res.model, threshold)

    async def identify_vector(self, collection: str, vector: Any, k: int,
                              per_person: bool = False, model: str | None = None,
                              threshold: float | None = None, actor: Actor | None = None
                              ) -> tuple[str, list[Record], float]:
        """The model, the matches (nearest first) and the threshold of one embedding
        sent by the client; its model and dimension must be the collection's."""
        def check(m: str) -> None:
            self.policy.identify_threshold_of(m, threshold)

        async def run(m: str) -> Any:
            hits = await self.gallery.search(collection, m, [vector], search_depth(k, per_person),
                                             actor=actor)
            return m, hits[0]

        m, row = await self._retry_stale_model(collection, model, run, check=check)
        if collection not in self.collection_models:
            self.collection_models.put(collection, m)
        return (m, nearest_per_person(row, k) if per_person else row,
                self.policy.identify_threshold_of(m, threshold))

    # ---------------------------------------------------------------- register
    async def replay_register(self, collection: str, idempotency_key: str | None,
                              request_hash: str | None, n: int) -> RegisteredImages | None:
        """The first answer of a register retried under ``idempotency_key`` (the same
        request: ``request_hash``), or None when none was committed; asked before
        any image is fetched or embedded."""
        if idempotency_key is None or request_hash is None:
            return None
        stored = await self.gallery.replay_register(collection, idempotency_key, request_hash)
        return None if stored is None else replayed_answer(collection, stored, n)

    async def register(self, collection: str,
                       images: Sequence[tuple[bytes | np.ndarray | FacefleetError,
                                              dict[str, Any]]],
                       q: FaceQuery, model: str | None = None,
                       idempotency_key: str | None = None,
                       request_hash: str | None = None,
                       actor: Actor | None = None) -> RegisteredImages:
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
        create = self.policy.may_create(actor)

        async def run(m: str) -> Any:
            refs: list[Any] = []
            for i, (data, _meta) in enumerate(images):
                if isinstance(data, FacefleetError | GivenEmbedding):
                    refs.append(data)
                    continue
                field_q = FaceQuery(q.detector, 1, q.min_confidence, True,
                                    q.field if len(images) == 1 else f"items[{i}].img")
                refs.append(await self.embedding_ref(data, field_q, m,
                                                     self.policy.thumbnails(True)))
            metas = [meta for _data, meta in images]
            return await self.gallery.register_embedded(
                collection, metas, idempotency_key, refs, actor, request_hash=request_hash,
                create=create)

        res: RegisteredImages = await self._retry_stale_model(collection, model, run,
                                                              write=True)
        if res.model:
            self.collection_models.put(collection, res.model)
        return res

    async def import_faces(self, collection: str, model: str, dim: int,
                           rows: Sequence[Mapping[str, Any]],
                           actor: Actor | None = None, copy: bool = False) -> Record:
        """One chunk of exported faces, kept with their ids (see ``GalleryCore.import_faces``;
        ``copy``: faces another collection holds are added under new ids); it may
        create the collection as the policy allows."""
        return await self.gallery.import_faces(collection, model, dim, rows,
                                               self.policy.may_create(actor), actor, copy)

    async def import_binding(self, collection: str,
                             actor: Actor | None = None) -> tuple[str, int] | None:
        """The model and dimension an import into ``collection`` must have, or None
        for a collection the import will create (fails at once when it may not)."""
        try:
            info = await self.gallery.get_collection(collection)
        except CollectionNotFound:
            if not self.policy.may_create(actor):
                raise
            return None
        return info["model"], int(info["dim"])
