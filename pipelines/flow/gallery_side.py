"""The gallery side of identify and register: runs where the gallery is.

The Gallery deployment (and the in-process gallery of tests) calls these with
the embedded image the Embedder handed it, next to its search and register,
so that only boxes and matches travel back to the ingress, never vectors or
landmarks. ``gallery`` is anything with the gallery's ``search``,
``register`` and ``replay_register`` (``index.gallery.GalleryService``).
The gallery calls take an ``actor`` (who asks, under which request id), which
the gallery records in its audit trail with the change it makes. A register
under an idempotency key stores its whole answer with its commit, so a retry
gets that answer back (:func:`replayed_answer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.errors import FacefleetError, NoFaceDetected, ValidationError, error_from_code
from pipelines.flow.contracts import (Actor, Embedded, FaceHits, IdentifiedImage, Record,
                                      RegisteredImages)
from pipelines.types import EmbeddedImage, GivenEmbedding


#: the audit action of a stranger's enrolment (``index.audit.AuditAction``; the flow
#: names it without importing the index)
ENROL_UNKNOWN_ACTION = "face.enrol_unknown"


def search_depth(k: int, per_person: bool) -> int:
    """How many faces to fetch for ``k`` answers: per person, look further, then keep
    each person's nearest face."""
    return min(k * 5, 500) if per_person else k


def nearest_per_person(row: list[Record], k: int) -> list[Record]:
    """Each person's nearest face only, at most ``k`` of them (``row`` is nearest first)."""
    seen: set[str] = set()
    out = []
    for hit in row:
        if hit["person_id"] not in seen:
            seen.add(hit["person_id"])
            out.append(hit)
    return out[:k]


def _probe(embedded: Embedded) -> tuple[str, np.ndarray, list[tuple[dict | None, float | None]]]:
    """The model, query vectors and (box, confidence) of each face of a probe."""
    if isinstance(embedded, EmbeddedImage):
        return embedded.model, embedded.vectors, [
            (f.box.as_dict(), round(float(f.confidence), 4)) for f in embedded.faces]
    if isinstance(embedded, GivenEmbedding):
        return embedded.model, embedded.vector[None], [(None, None)]
    raise ValidationError(f"a probe is an embedded image, not {type(embedded).__name__}")


async def identify_embedded(gallery: Any, embedded: Embedded, collection: str, k: int,
                            per_person: bool = False, actor: Actor | None = None,
                            max_distance: float | None = None,
                            model: str | None = None, enrol_unknown: bool | None = None,
                            threshold: float | None = None) -> IdentifiedImage | FacefleetError:
    """Search every face of an embedded probe (vectors of whole-image chips need
    ``model``) and answer its boxes and matches, nearest first.

    With ``enrol_unknown`` (None: the collection's setting), each detected face
    whose nearest match is farther than ``threshold`` (or that has none) is
    enrolled, in one register after the search, as a new unnamed person; its
    answer carries that person and face (``FaceHits.enrolled``), so the
    stranger's next sighting matches it."""
    if isinstance(embedded, FacefleetError):
        return embedded
    try:
        if isinstance(embedded, np.ndarray):
            m, vectors, faces = model or "", embedded, [(None, None)] * len(embedded)
            detector = ""
        else:
            (m, vectors, faces), detector = _probe(embedded), getattr(embedded, "detector", "")
        if not faces:
            return IdentifiedImage(m, [], detector)
        hits = await gallery.search(collection, m, vectors, search_depth(k, per_person),
                                    max_distance, actor=actor)
        enrolled: list[Record | None] = [None] * len(hits)
        if enrol_unknown is None and threshold is not None:
            enrol_unknown = bool((await gallery.collection_settings(collection))
                                 .get("enrol_unknown"))
        if enrol_unknown and threshold is not None and not isinstance(embedded, np.ndarray):
            enrolled = await _enrol_strangers(gallery, collection, m, vectors, hits,
                                              threshold, actor,
                                              getattr(embedded, "thumbnails", None))
    except FacefleetError as exc:
        return exc
    if per_person:
        hits = [nearest_per_person(row, k) for row in hits]
    return IdentifiedImage(m, [FaceHits(box, conf, row, new)
                               for (box, conf), row, new in zip(faces, hits, enrolled,
                                                                strict=True)], detector)


async def _enrol_strangers(gallery: Any, collection: str, model: str, vectors: np.ndarray,
                           hits: list[list[Record]], threshold: float,
                           actor: Actor | None,
                           thumbnails: list[bytes] | None = None) -> list[Record | None]:
    """Enrol each face whose nearest hit is beyond ``threshold`` as a new unnamed person
    (one register, audited as ``face.enrol_unknown``); per face, what it became."""
    unknown = [i for i, row in enumerate(hits) if not row or row[0]["distance"] > threshold]
    out: list[Record | None] = [None] * len(hits)
    if not unknown:
        return out
    res = await gallery.register(collection, model, int(vectors.shape[1]),
                                 [{"embedding": vectors[i],
                                   "thumbnail": thumbnails[i] if thumbnails else None}
                                  for i in unknown], actor=actor,
                                 action=ENROL_UNKNOWN_ACTION)
    for i, face in zip(unknown, res["faces"], strict=True):
        out[i] = {"person_id": face["person_id"], "face_id": face["face_id"]}
    return out


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


def replayed_answer(collection: str, stored: Mapping[str, Any], n: int) -> RegisteredImages:
    """The first answer of a retried register, rebuilt from what it stored
    (:func:`register_embedded`'s ``extra``): created faces with their boxes, and
    the items that failed, with the same errors."""
    faces = list(stored.get("faces", []))
    extra = stored.get("extra") or {"ok": list(range(len(faces))), "boxes": [None] * len(faces),
                                    "errors": {}}
    results: list[Record | FacefleetError] = [
        ValidationError("this item was not enrolled", {}) for _ in range(n)]
    for i, box, face in zip(extra["ok"], extra["boxes"], faces, strict=True):
        results[i] = {**face, "box": box}
    for i, (code, message) in extra.get("errors", {}).items():
        results[int(i)] = error_from_code(code, message)
    return RegisteredImages(collection, stored.get("model", ""), results, True,
                            bool(stored.get("collection_created")))


def _faces_of(emb: Embedded, every_face: bool, model: str | None
              ) -> tuple[str, list[tuple[np.ndarray, dict[str, int] | None, bytes | None]]]:
    """The model and (vector, box, thumbnail) of the faces of one item to enrol: its
    largest face, or with ``every_face`` all of them (DeepFace's ``/register``)."""
    if isinstance(emb, GivenEmbedding):
        return emb.model, [(emb.vector, None, None)]
    if isinstance(emb, np.ndarray):  # vectors of whole-image chips: no box
        return model or "", [(v, None, None) for v in (emb if every_face else emb[:1])]
    assert isinstance(emb, EmbeddedImage)
    thumbs = emb.thumbnails or [None] * len(emb.faces)
    faces = list(zip(emb.vectors, (f.box.as_dict() for f in emb.faces), thumbs, strict=True))
    return emb.model, faces if every_face else faces[:1]


async def register_embedded(gallery: Any, collection: str, metas: Sequence[Mapping[str, Any]],
                            idempotency_key: str | None, embedded: Sequence[Embedded],
                            actor: Actor | None = None, request_hash: str | None = None,
                            create: bool = True, every_face: bool = False,
                            model: str | None = None) -> RegisteredImages | FacefleetError:
    """Commit the largest face of each embedded image (with ``every_face``, each of
    its faces: one result per face) and each embedding given as it is, in one
    register; items without a face, or that failed before, fail alone. The
    collection is created on first enrolment when ``create`` (the flow's policy
    decided it). Under an idempotency key the whole answer (boxes, and the
    failures) is stored with the write, so a retry that lands on it gets the
    first answer back, whatever its own images gave this time."""
    results: list[Record | FacefleetError] = []
    ok: list[int] = []
    vecs: list[np.ndarray] = []
    boxes: list[dict[str, int] | None] = []
    thumbs: list[bytes | None] = []
    owners: list[Mapping[str, Any]] = []
    for meta, emb in zip(metas, embedded, strict=True):
        if isinstance(emb, FacefleetError):
            results.append(emb)
            continue
        m, faces = _faces_of(emb, every_face, model)
        if not faces:
            f = meta.get("field", "img")
            results.append(NoFaceDetected(f"no face detected in '{f}'", {"field": f}))
            continue
        model = model or m
        for vec, box, thumb in faces:
            results.append({})
            ok.append(len(results) - 1)
            vecs.append(vec)
            boxes.append(box)
            thumbs.append(thumb)
            owners.append(meta)
    if not ok:
        return RegisteredImages(collection, "", results)
    assert model
    items = [{"embedding": v, "person_id": meta.get("person_id"), "name": meta.get("name"),
              "labels": meta.get("labels"), "thumbnail": t}
             for v, meta, t in zip(vecs, owners, thumbs, strict=True)]
    extra = {"ok": ok, "boxes": boxes,
             "errors": {str(i): [r.code.value, r.message] for i, r in enumerate(results)
                        if isinstance(r, FacefleetError)}}
    try:
        res = await gallery.register(collection, model, int(len(vecs[0])), items,
                                     idempotency_key=idempotency_key, create_collection=create,
                                     request_hash=request_hash, extra=extra, actor=actor)
    except FacefleetError as exc:
        return exc
    if res.get("replayed") and request_hash is not None:
        return replayed_answer(collection, res, len(results))
    for i, box, face in zip(ok, boxes, res["faces"], strict=True):
        results[i] = {**face, "box": box}
    return RegisteredImages(collection, model, results, bool(res.get("replayed")),
                            bool(res.get("collection_created")))
