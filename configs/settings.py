"""The one settings object of facefleet.

Config flows one way: environment (``FACEFLEET_*``, nested with ``__``) or the
``args:`` of ``serve_config.yaml`` -> :class:`Settings` -> constructor
arguments. Nothing below this module reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Cosine-distance thresholds per embedding model, calibrated on LFW View 1
#: DevTrain (see ``bench/accuracy.py``); a pair is "the same person" when the
#: distance is <= the threshold.
DEFAULT_THRESHOLDS: dict[str, float] = {
    # blazeface + dlib ResNet with mirror averaging: DevTrain 99.2%, DevTest 98.9%
    "dlib": 0.0872,
    "dlib-native": 0.0872,  # the same network run by dlib itself
    "deepface:Dlib": 0.0872,  # the same weights through DeepFace's client
}


class ImageLimits(BaseModel):
    """Limits applied to every incoming image before and during decoding."""

    max_bytes: int = Field(20 * 1024 * 1024, gt=0, description="largest encoded image accepted")
    max_pixels: int = Field(40_000_000, gt=0, description="largest decoded width*height accepted")
    max_request_bytes: int = Field(
        96 * 1024 * 1024, gt=0, description="largest request body (all images of a batch)"
    )
    work_max_side: int = Field(
        1600, ge=256, description="big photos are decoded/shrunk to about this longest side"
    )


class UrlFetch(BaseModel):
    """How images given as http(s) URLs are fetched."""

    enabled: bool = True
    timeout_s: float = Field(10.0, gt=0, description="for the whole fetch, redirects included")
    allow_private: bool = Field(
        False, description="allow loopback / private / link-local targets (tests only)"
    )
    allowed_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [80, 443], min_length=1,
        description="ports an image URL (and every redirect) may name",
    )
    max_redirects: int = Field(3, ge=0, le=10, description="redirects followed per image URL")


class Runtime(BaseModel):
    """Where and how models run; read in exactly one place (pipelines.runtime)."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    intra_op_threads: int = Field(1, ge=0, description="0 lets the runtime choose")
    inter_op_threads: int = Field(1, ge=0)
    cuda_device_id: int = 0


class IndexSettings(BaseModel):
    """The gallery: sharded FAISS over a durable store."""

    shards: int = Field(2, ge=1, le=256)
    backend: Literal["sqlite", "postgres"] = "sqlite"
    database_url: str | None = Field(
        None, description="postgresql://... when backend is postgres; SQLite file otherwise"
    )
    index_type: Literal["flat", "ivf"] = "flat"
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    shard_replicas: int = Field(
        1, ge=1, le=16, description="copies of each shard; searches spread over them")
    shard_num_cpus: float = Field(0.0, ge=0, description="CPUs each shard actor reserves")
    faiss_threads: int = Field(1, ge=1, description="FAISS threads per shard actor")
    search_batch_size: int = Field(
        32, ge=1, description="concurrent searches merged into one call per shard")
    search_batch_wait_s: float = Field(0.002, ge=0)
    sync_interval_s: float = Field(
        2.0, gt=0, description="how often shards catch up on changes they missed, and how "
        "long a Gallery replica trusts its cached view of a collection")
    store_threads: int = Field(8, ge=1, le=64, description="store connections per Gallery replica")


class AuthSettings(BaseModel):
    """How ingress replicas keep the table of API keys made through ``/v1/keys``."""

    refresh_s: float = Field(
        0.5, gt=0, le=10, description="how often each ingress replica re-reads the key table")
    max_age_s: float = Field(
        1.5, gt=0, le=60, description="a key from the table is only accepted while the table "
        "was read less than this long ago (a revoked key is refused everywhere within it); "
        "older, the replica reads it again before answering, and answers 503 if it cannot")


class AuditSettings(BaseModel):
    """The audit trail: which changes and searches are recorded, and for how long."""

    identify: bool = Field(True, description="record every identify / search (a read)")
    retention_days: float | None = Field(
        None, gt=0, description="delete entries older than this (checked hourly by every "
        "Gallery replica); unset: keep every entry")


class Settings(BaseSettings):
    """Everything facefleet can be told, with the local embedded defaults."""

    model_config = SettingsConfigDict(
        env_prefix="FACEFLEET_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("data")
    model_dir: Path | None = Field(
        None, description="extra model weights and converted models (default: DATA_DIR/models)"
    )
    deepface_home: Path | None = Field(
        None, description="DEEPFACE_HOME for DeepFace's model zoo (weights in .deepface/weights)"
    )
    default_detector: str = "blazeface"
    default_embedder: str = "dlib"
    flip_average: bool = Field(
        True, description="embed each face and its mirror image and average (+0.4% on LFW)"
    )
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    images: ImageLimits = Field(default_factory=ImageLimits)
    urls: UrlFetch = Field(default_factory=UrlFetch)
    file_root: Path | None = Field(
        None, description="allow file:///... image URIs naming files under this root"
    )
    runtime: Runtime = Field(default_factory=Runtime)
    index: IndexSettings = Field(default_factory=IndexSettings)
    api_key_sha256: list[str] = Field(
        default_factory=list, description="hex SHA-256 of the admin keys; empty: auth off"
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    preload_actions: list[str] = Field(
        default_factory=lambda: ["age", "gender", "emotion"],
        description="attribute models loaded at start (race loads on first use)",
    )
    max_faces: int = Field(64, ge=1, description="upper bound on faces returned per image")

    @property
    def models_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    def threshold_for(self, model: str) -> float | None:
        return self.thresholds.get(model)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment; the entry points call this, nothing deeper."""
    return Settings()
