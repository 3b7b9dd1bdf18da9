"""Request and response models of the HTTP API (pydantic, shown in /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ImageField = Field(..., description="base64, data URI or http(s) URL (or a multipart file field)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectBody(_Body):
    img: str = ImageField
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    return_crops: bool = False
    enforce_detection: bool = True


class EmbedBody(_Body):
    img: str = ImageField
    detector: str | None = None
    model: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    enforce_detection: bool = True


class VerifyBody(_Body):
    img1: str = ImageField
    img2: str = ImageField
    model: str | None = None
    detector: str | None = None
    threshold: float | None = Field(None, gt=0.0, le=2.0)
    enforce_detection: bool = True


Action = Literal["age", "gender", "emotion", "race"]


class AnalyzeBody(_Body):
    img: str = ImageField
    actions: list[Action] = Field(default_factory=lambda: ["age", "gender", "emotion"])
    detector: str | None = None
    max_faces: int | None = Field(None, ge=1, le=1024)
    enforce_detection: bool = True


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
    distance: float
    threshold: float
    metric: Literal["cosine"] = "cosine"
    model: str
    detector: str
    faces: dict[str, BoxOut]
    time_ms: float


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    details: dict | None = None


class ErrorOut(BaseModel):
    error: ErrorBody
