"""Request bodies of the ``/v1`` HTTP API (pydantic, shown in /docs), each defined once.

The routes read their bodies themselves (``deployments/http/request_body.py``)
and declare them with ``deployments.http.common.body_schema``. The
DeepFace-compatible bodies are in ``deployments/http/compat_schemas.py`` (named
``Df...``); the answers in ``deployments/http/schemas.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from index.gallery import COLLECTION_PATTERN, MAX_DIM

ImageField = Field(..., min_length=1, description="base64, data URI or http(s) URL (or a multipart file field)")


class Body(BaseModel):
    """A request body: a field the API does not know is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class DetectBody(Body):
    img: str = ImageField
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    return_crops: bool = False
    enforce_detection: bool = True


class EmbedBody(Body):
    img: str = ImageField
    detector: str | None = None
    model: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    enforce_detection: bool = True


class VerifyBody(Body):
    img1: str = ImageField
    img2: str = ImageField
    model: str | None = None
    detector: str | None = None
    threshold: float | None = Field(None, gt=0.0, le=2.0)
    enforce_detection: bool = Field(
        True, description="false: an image without a face answers 200 with verified: false, "
        "distance: null and no_face_in naming it, instead of 422 no_face_detected")


Action = Literal["age", "gender", "emotion", "race", "anti_spoofing"]


class AnalyzeBody(Body):
    img: str = ImageField
    actions: list[Action] = Field(default_factory=lambda: ["age", "gender", "emotion"])
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    enforce_detection: bool = True


# --------------------------------------------------------------------------- gallery

#: a collection name in a path, checked (and documented) before the route runs
Collection = Annotated[str, Path(pattern=COLLECTION_PATTERN, max_length=64)]


_IMG = "base64, data URI or http(s) URL (or a multipart file); or give 'embedding'"
_EMBEDDING = ("an embedding of the collection's model instead of an image (normalised as "
              "every vector is; its dimension must be the collection's)")


class _ImageOrEmbedding(Body):
    img: str | None = Field(None, min_length=1, description=_IMG)
    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM,
                                          description=_EMBEDDING)

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.img is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'img' and 'embedding'")
        return self


class RegisterBody(_ImageOrEmbedding):
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None
    model: str | None = None
    detector: str | None = None


class BatchItem(_ImageOrEmbedding):
    person_id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None


class RegisterBatchBody(Body):
    items: list[BatchItem] = Field(..., min_length=1, max_length=256)
    model: str | None = None
    detector: str | None = None


class IdentifyBody(_ImageOrEmbedding):
    top_k: int = Field(5, ge=1, le=100)
    per_person: bool = Field(False, description="at most one match (the nearest face) per person")
    threshold: float | None = Field(None, gt=0.0, le=2.0)
    model: str | None = None
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=256)
    enforce_detection: bool = True
    enrol_unknown: bool | None = Field(
        None, description="enrol each detected face that matches nobody (at the identify "
        "threshold) as a new unnamed person; null: the collection's setting. Needs the "
        "write scope. It stores a template of everyone who passes the camera")


_ENROL_UNKNOWN = ("identify enrols each face that matches nobody as a new unnamed person "
                  "(a template of everyone who passes a camera is stored)")


_THUMBNAILS = "a 112 px JPEG of each face enrolled from an image is kept, for review"


class CreateCollectionBody(Body):
    name: str = Field(..., pattern=COLLECTION_PATTERN, max_length=64)
    model: str | None = None
    enrol_unknown: bool = Field(False, description=_ENROL_UNKNOWN)
    thumbnails: bool = Field(True, description=_THUMBNAILS)


class CollectionPatchBody(Body):
    """The settings to change; a field left out stays as it is."""

    enrol_unknown: bool | None = Field(None, description=_ENROL_UNKNOWN)
    thumbnails: bool | None = Field(None, description=_THUMBNAILS + "; false deletes the "
                                    "thumbnails kept")


class PersonPatchBody(Body):
    """The fields to change; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"name": "Angelina Jolie"}, {"labels": {"team": "blue"}}]})

    name: str | None = Field(None, max_length=256, description="null clears the name")
    labels: dict[str, str] | None = Field(None, description="replaces the labels; {} or null "
                                          "clears them")


class MergeBody(Body):
    """The persons whose faces move into the person of the path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "examples": [{"from": ["3f2a9c0d5e7b41c8a6d2e9f0b1c4d7e8"]}]})

    sources: list[str] = Field(..., alias="from", min_length=1, max_length=1000,
                               description="person ids; each is removed once its faces moved")


class ClusterBody(Body):
    scope: Literal["unnamed", "all"] = Field(
        "unnamed", description="unnamed: the faces of persons without a name (every face "
        "enrolled without a person_id); all: every face of the collection")
    threshold: float | None = Field(
        None, gt=0, lt=2, description="cosine distance the groups are cut at and suggestions "
        "must be within (default: the identify threshold of the collection's model)")
    job: bool = Field(False, description="run as a job (202 and a Location to poll) even "
                      "when the collection is small enough to answer at once")
