"""Response models of the HTTP API (pydantic, shown in /docs); the request bodies
are in ``deployments/http/bodies.py``.

Every route declares its answer here (``response_model``) and the error
envelope for its error statuses (:data:`ERRORS`), so ``/openapi.json``
documents every answer a client can get, with examples.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from index.audit import AuditAction


class BoxOut(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FaceOut(BaseModel):
    box: BoxOut
    confidence: float
    landmarks: dict[str, list[float]] | None = None
    crop: str | None = Field(None, description="aligned 150 px crop, base64 JPEG")


class DetectOut(BaseModel):
    faces: list[FaceOut]
    detector: str
    image: dict[str, int]
    time_ms: float


class EmbeddedFace(BaseModel):
    box: BoxOut
    confidence: float
    embedding: list[float]
    dim: int


class EmbedOut(BaseModel):
    faces: list[EmbeddedFace]
    model: str
    detector: str


class VerifyOut(BaseModel):
    verified: bool
    distance: float | None = Field(..., description="cosine distance of the largest face of "
                                   "each image; null when an image has no face "
                                   "(enforce_detection: false, see no_face_in)")
    threshold: float
    metric: Literal["cosine"] = "cosine"
    model: str
    detector: str
    faces: dict[str, BoxOut]
    no_face_in: list[Literal["img1", "img2"]] = Field(
        default_factory=list, description="images without a face (only with enforce_detection: "
        "false; otherwise such a pair answers 422 no_face_detected): nothing was compared")
    time_ms: float


class AnalyzedFace(BaseModel):
    box: BoxOut
    confidence: float
    age: int | None = None
    gender: dict[str, float] | None = Field(None, examples=[{"Woman": 97.1, "Man": 2.9}])
    dominant_gender: str | None = None
    emotion: dict[str, float] | None = None
    dominant_emotion: str | None = None
    race: dict[str, float] | None = None
    dominant_race: str | None = None
    is_real: bool | None = Field(None, description="anti_spoofing: the face is live, not a "
                                 "print or a replay")
    antispoof_score: float | None = Field(None, description="anti_spoofing: the model's "
                                          "probability for its verdict (fr_liveness: p(live) "
                                          "when real, 1 - p(live) when a spoof; the MiniFASNet "
                                          "pair: the winning class's, 0.33-1)")


class AnalyzeOut(BaseModel):
    faces: list[AnalyzedFace]
    actions: list[str]
    detector: str


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    ready: bool
    deployments: dict[str, bool] = Field(
        ..., examples=[{"Detector": True, "Embedder": True, "Analyzer": True, "Gallery": True}])


class DetectorInfo(BaseModel):
    name: str
    default: bool


class ChipSpecOut(BaseModel):
    size: int
    padding: float
    kind: str = Field(..., description="dlib: dlib's face chip; warp5: 5-point similarity "
                                       "warp; box: the detector's box grown `padding` times")


class EmbedderInfo(BaseModel):
    name: str
    installed: bool
    dim: int | None = None
    chip_specs: list[ChipSpecOut] | None = Field(None, description="the aligned chips it embeds")
    chip_size: int | None = Field(None, description="the first chip spec's size")
    chip_padding: float | None = Field(None, description="the first chip spec's padding")
    threshold: float | None = Field(None, description="cosine-distance threshold of 1:1 verify")
    identify_threshold: float | None = Field(
        None, description="cosine-distance threshold of 1:N identify (open-set, calibrated "
                          "for a false-accept rate)")
    licence: str | None = Field(None, description="licence of the weights, as far as known")
    precision: str | None = Field(
        None, description="arithmetic it runs in (fp32, int8, bf16 or fp16; a fused model's "
                          "parts joined by '+'), chosen by runtime.precision for this device")
    engine: str | None = Field(
        None, description="what runs it: CPUExecutionProvider / CUDAExecutionProvider "
                          "(onnxruntime) or OpenVINO-CPU")
    default: bool | None = None
    reason: str | None = Field(None, description="why it is not installed")


class AttributeInfo(BaseModel):
    action: str
    installed: bool
    name: str | None = None
    chip_specs: list[ChipSpecOut] | None = Field(None, description="the chips it reads per face")
    chip_size: int | None = None
    chip_padding: float | None = None
    reason: str | None = None


class ModelsOut(BaseModel):
    detectors: list[DetectorInfo]
    embedders: list[EmbedderInfo]
    attributes: list[AttributeInfo]
    metric: Literal["cosine"] = "cosine"


class StatsOut(BaseModel):
    batch_sizes: dict[str, dict[str, dict[str, int]]] = Field(
        ..., description="deployment -> method -> batch size -> batches",
        examples=[{"Detector": {"detect": {"1": 20, "4": 3}}}])


class ErrorBody(BaseModel):
    code: str = Field(..., examples=["image_decode_error"])
    message: str
    request_id: str
    details: dict | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


def errors(*statuses: int) -> dict[int | str, dict]:
    """The error envelope documented for each of ``statuses``."""
    what = {400: "bad image, unknown or not installed model, or unreachable image URL",
            401: "missing or unknown API key", 403: "the key lacks the scope",
            404: "unknown collection, face, person or route",
            409: "collection bound to another model, or an idempotency key reused",
            413: "request body or image too large", 422: "the request is invalid",
            500: "an unexpected error (logged with its request id)",
            503: "a backend is down, restarting or overloaded (Retry-After)"}
    return {code: {"model": ErrorOut, "description": what[code]} for code in statuses}


#: errors every model route can answer
ERRORS = errors(400, 401, 413, 422, 500, 503)
#: ... and the gallery routes also these
GALLERY_ERRORS = {**ERRORS, **errors(404, 409)}


# --------------------------------------------------------------------------- gallery


class CollectionOut(BaseModel):
    collection: str = Field(..., examples=["staff"])
    model: str = Field(..., examples=["dlib"])
    dim: int = Field(..., examples=[128])
    created_at: float = Field(..., description="Unix time")
    enrol_unknown: bool = Field(False, description="identify enrols each face that matches "
                                "nobody as a new unnamed person")
    thumbnails: bool = Field(True, description="a 112 px JPEG of each enrolled face is kept "
                             "(GET .../faces/{id}/thumbnail)")


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class CollectionStatsOut(CollectionOut):
    faces: int
    persons: int
    shards: int
    shard_sizes: list[int]
    index_type: str | None = None
    sql_view: str | None = Field(
        None, description="pgvector: the collection's recipe-shaped view (face_embeddings_...)",
        examples=["face_embeddings_staff"])


_FACE_ID = "the face's id; `id` and `face_id` are the same value in every answer"


class _FaceIds(BaseModel):
    """A face in an answer carries its id as both ``id`` and ``face_id`` (enrolment
    and listings said ``id``, a person's faces ``face_id``): either name works."""

    id: str = Field(..., description=_FACE_ID, examples=["4f0c2b1e9d3a4c5b8e7f6a5b4c3d2e1f"])
    face_id: str = Field(..., description=_FACE_ID,
                         examples=["4f0c2b1e9d3a4c5b8e7f6a5b4c3d2e1f"])

    @model_validator(mode="before")
    @classmethod
    def _both_names(cls, data: object) -> object:
        if isinstance(data, dict) and ("id" in data) != ("face_id" in data):
            data = {**data, "id": data.get("id", data.get("face_id")),
                    "face_id": data.get("face_id", data.get("id"))}
        return data


class FaceRecordOut(_FaceIds):
    person_id: str = Field(..., examples=["angelina"])
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    collection: str
    created_at: float


class EnrolledFaceOut(FaceRecordOut):
    box: BoxOut | None = Field(None, description="the face enrolled; null when enrolled by "
                               "embedding")
    replayed: bool = Field(False, description="true when this answer is a retry under an "
                           "Idempotency-Key already used with the same body: the face was "
                           "enrolled by the first request and is given back (status 200), "
                           "nothing was enrolled twice")
    collection_created: bool = Field(False, description="this write (or, for a replay, the "
                                     "first one) created the collection: it did not exist "
                                     "(see index.strict_collections)")


class BatchError(BaseModel):
    code: str
    message: str


class BatchCreated(_FaceIds):
    index: int
    status: Literal["created"]
    person_id: str
    box: BoxOut | None = Field(..., description="the face enrolled; null for an item "
                               "enrolled by embedding")


class BatchFailed(BaseModel):
    index: int
    status: Literal["error"]
    error: BatchError


class BatchOut(BaseModel):
    collection: str
    created: int
    failed: int
    results: list[Annotated[BatchCreated | BatchFailed, Field(discriminator="status")]]
    replayed: bool = Field(False, description="true when this answer is a retry under an "
                           "Idempotency-Key already used with the same body: the first "
                           "answer, failures included; nothing was enrolled twice")
    collection_created: bool = Field(False, description="this write (or, for a replay, the "
                                     "first one) created the collection: it did not exist "
                                     "(see index.strict_collections)")


class Match(_FaceIds):
    person_id: str
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    distance: float = Field(..., description="cosine distance, smaller is nearer")
    match: bool = Field(..., description="distance <= the identify threshold")


class EnrolledStranger(BaseModel):
    person_id: str = Field(..., description="the new unnamed person this face became")
    face_id: str


class IdentifiedFace(BaseModel):
    box: BoxOut | None = Field(..., description="the probe face; null for a probe embedding")
    confidence: float | None = Field(..., description="detector score; null for an embedding")
    matches: list[Match]
    enrolled: EnrolledStranger | None = Field(
        None, description="with enrol_unknown: this face matched nobody and was enrolled as "
        "a new person (its next sighting matches that person_id)")


class IdentifyOut(BaseModel):
    faces: list[IdentifiedFace]
    collection: str
    model: str
    threshold: float


class PersonFace(_FaceIds):
    person_id: str
    collection: str
    created_at: float


class PersonOut(BaseModel):
    person_id: str
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    collection: str
    created_at: float
    faces: list[PersonFace]


class MergedPersonOut(PersonOut):
    merged: list[str] = Field(..., description="the persons merged in (now removed)")
    moved_faces: list[str] = Field(..., description="the faces that moved into this person")


class ErasedStoreOut(BaseModel):
    faces: int = Field(..., description="face rows deleted (with secure_delete on SQLite)")
    persons: int
    idempotency_keys: int = Field(
        ..., description="idempotency rows of the registers that created those faces: "
        "deleted, or left naming only faces that remain")
    write_ahead_log: str | None = Field(
        None, description="SQLite: 'truncated' once the WAL is emptied into the zeroed "
        "main file; 'busy' if readers held it past the busy timeout (the next forget "
        "empties it)")


class ErasedShardsOut(BaseModel):
    entries: int = Field(..., description="search index entries removed before this answer")


class ErasedAuditOut(BaseModel):
    entries_pseudonymised: int = Field(
        ..., description="audit entries whose person id is now a keyed hash (this "
        "forget's own entry included)")


class ErasedOut(BaseModel):
    """What a forget removed, where (docs/security.md)."""

    store: ErasedStoreOut
    shards: ErasedShardsOut
    audit: ErasedAuditOut


class ForgottenPersonOut(BaseModel):
    person_id: str
    collection: str
    deleted_faces: list[str]
    erased: ErasedOut | None = None


# --------------------------------------------------------------------------- listings


class PersonSummaryOut(BaseModel):
    person_id: str = Field(..., examples=["angelina"])
    name: str | None = Field(None, examples=["Angelina"])
    labels: dict[str, str] = Field(default_factory=dict, examples=[{"team": "red"}])
    created_at: float = Field(..., description="Unix time")
    faces: int = Field(..., description="faces enrolled for the person", examples=[3])


class PersonsPageOut(BaseModel):
    collection: str = Field(..., examples=["staff"])
    persons: list[PersonSummaryOut] = Field(..., description="in person_id order")
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page; null after the last page",
        examples=["eyJ2IjoxLCJrIjoicGVyc29ucyIsImMiOjEsInMiOm51bGwsImEiOiJhbmdlbGluYSJ9"])


class FacesPageOut(BaseModel):
    collection: str = Field(..., examples=["staff"])
    faces: list[FaceRecordOut] = Field(..., description="in enrolment order")
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page; null after the last page")


class ExportLine(BaseModel):
    """One line of an export (and of an import): one face."""

    model_config = ConfigDict(title="ExportLine")

    id: str = Field(..., description="face id: 32 hex digits (a UUID with dashes is read too)",
                    examples=["4f0c2b1e9d3a4c5b8e7f6a5b4c3d2e1f"])
    person_id: str = Field(..., examples=["angelina"])
    name: str | None = Field(None, examples=["Angelina"])
    labels: dict[str, str] | None = Field(None, examples=[{"team": "red"}])
    model: str = Field(..., description="the embedding model; binds the collection",
                       examples=["dlib"])
    created_at: float | None = Field(None, description="Unix time of enrolment (kept)")
    embedding: list[float] = Field(..., description="the unit vector, collection's dimension",
                                   examples=[[0.0132, -0.0871, 0.1045]])
    thumbnail: str | None = Field(None, description="base64 of the face's 112 px JPEG "
                                  "thumbnail, when it has one")


class ImportLineError(BaseModel):
    line: int = Field(..., description="1-based line number", examples=[12])
    code: str = Field(..., examples=["validation_error"])
    message: str


class ImportOut(BaseModel):
    collection: str = Field(..., examples=["staff"])
    model: str | None = Field(None, examples=["dlib"])
    dim: int | None = Field(None, examples=[128])
    lines: int = Field(..., description="faces read (non-blank lines)", examples=[1200])
    imported: int = Field(..., description="faces added", examples=[1190])
    skipped: int = Field(..., description="ids the collection held already (and, for a key "
                         "limited to collections, ids held outside them)", examples=[8])
    elsewhere: int = Field(..., description="ids another collection holds, left out (0 "
                           "since such faces are copied; always 0 for a key limited to "
                           "collections)", examples=[0])
    copied: dict[str, str] = Field(
        default_factory=dict, description="faces another collection of this service holds, "
        "added under new ids: old id -> new id (a copy of a collection); none for a key "
        "limited to collections")
    failed: int = Field(..., description="lines left out as invalid", examples=[2])
    errors: list[ImportLineError] = Field(..., description="the first 100 invalid lines")


# --------------------------------------------------------------------------- keys and audit

Scope = Literal["read", "write", "admin", "export"]


class ApiKeyOut(BaseModel):
    id: str = Field(..., examples=["f3a6b201bae72b86"], description="the key's public id")
    name: str = Field(..., examples=["front desk"])
    scopes: list[Scope] = Field(..., examples=[["read"]])
    collections: list[str] | None = Field(
        ..., examples=[["staff"]], description="the only collections it sees; null: every one")
    created_at: float = Field(..., description="Unix time")
    last_used_at: float | None = Field(
        None, description="Unix time, up to auth.refresh_s late; absent: never used")
    expires_at: float | None = Field(
        None, description="Unix time after which the key is refused (401); absent: never")


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(..., examples=["ffk_f3a6b201bae72b86_qT-JOWcaWEQ-0NyWh8G5vq59u47RXPU3gmTpYz65IgY"],
                     description="the secret, shown only in this answer")


class ApiKeysOut(BaseModel):
    keys: list[ApiKeyOut]


class AuditEntryOut(BaseModel):
    seq: int = Field(..., examples=[7], description="increasing, never reused")
    at: float = Field(..., description="Unix time")
    # every action the audit trail records: an action added there is answered here too
    action: Literal[tuple(a.value for a in AuditAction)]  # type: ignore[valid-type]
    collection: str | None = Field(None, examples=["staff"])
    face_ids: list[str] | None = Field(None, description="faces enrolled or forgotten")
    person_id: str | None = None
    person_ids: list[str] | None = Field(
        None, description="an enrolment of several persons: the person of each face; a "
        "merge: the persons merged into person_id")
    matches: list[str | None] | None = Field(
        None, description="identify: the nearest enrolled face of each face found")
    target_key_id: str | None = Field(None, description="the key created or revoked")
    rows: int | None = Field(None, description="reads: faces or persons answered")
    client: str | None = Field(None, description="auth.failure: the client's address")
    failures: int | None = Field(
        None, description="auth.failure: failed authentications of that client in the "
        "current minute")
    key_id: str | None = Field(..., examples=["f3a6b201bae72b86"],
                               description='the caller\'s key; "settings" for a key from the '
                               "settings, null with authentication off")
    request_id: str | None = Field(..., examples=["enrol-ricardo"])
    status: str = Field(..., examples=["ok"])


class AuditPageOut(BaseModel):
    entries: list[AuditEntryOut]
    next_cursor: str | None = Field(
        ..., examples=["7"], description="the cursor of the next page; null: the last page")


# --------------------------------------------------------------------------- unknown faces


class SuggestedPersonOut(BaseModel):
    person_id: str = Field(..., examples=["angelina"])
    name: str | None = Field(None, examples=["Angelina"])
    distance: float = Field(..., description="average cosine distance between the cluster's "
                            "faces and the person's", examples=[0.12])


class ClusterOut(BaseModel):
    cluster_id: str = Field(..., description="the id of the cluster's earliest enrolled face: "
                            "faces added later never change it")
    size: int = Field(..., examples=[4])
    face_ids: list[str] = Field(..., description="in enrolment order")
    person_ids: list[str] = Field(..., description="the (unnamed) persons its faces belong to")
    suggested: SuggestedPersonOut | None = Field(
        None, description="the nearest named person within the identify threshold, if any")


class ClustersOut(BaseModel):
    collection: str = Field(..., examples=["photos"])
    model: str = Field(..., examples=["dlib+mfn512"])
    scope: Literal["unnamed", "all"]
    threshold: float = Field(..., description="the cut, as a cosine distance")
    faces: int = Field(..., description="faces in scope")
    clusters: list[ClusterOut] = Field(..., description="largest first")
    unclustered: int = Field(..., description="faces in scope that joined no cluster")
    incremental: bool = Field(..., description="the last run's clusters were extended with "
                              "the faces enrolled since, instead of clustering all again")
    seconds: float


class ClusterJobStartedOut(BaseModel):
    job_id: str
    status: Literal["running"]
    faces: int = Field(..., description="faces in scope")


class ClusterJobOut(BaseModel):
    job_id: str
    status: Literal["running", "done", "failed"]
    progress: float = Field(..., ge=0, le=1)
    result: ClustersOut | None = Field(None, description="when done")
    error: dict[str, Any] | None = Field(None, description="when failed: code and message")
