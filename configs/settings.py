"""The one settings object of facefleet.

Config flows one way: environment (``FACEFLEET_*``, nested with ``__``) or the
``args:`` of ``serve_config.yaml`` -> :class:`Settings` -> constructor
arguments. Nothing below this module reads the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from configs.keyhash import parse

#: 1:1 verify thresholds (cosine distance) per embedding model, the best
#: accuracy on LFW View 1 DevTrain (``bench/recognizer.py``); a pair is "the
#: same person" when the distance is <= the threshold.
DEFAULT_THRESHOLDS: dict[str, float] = {
    # blazeface + dlib ResNet with mirror averaging: DevTrain 99.2%, DevTest 98.9%
    "dlib": 0.0872,
    "dlib-native": 0.0872,  # the same network run by dlib itself
    "deepface:Dlib": 0.0872,  # the same weights through DeepFace's client
    # no mirror averaging: DevTrain 99.45%, DevTest 99.2%
    "mobilefacenet": 0.5828,
    # dlib 1.75 : MobileFaceNet 1, no mirror averaging: DevTrain 99.59%, DevTest 99.3%
    "dlib+mobilefacenet": 0.2182,
    # MobileFaceNet-512, no mirror averaging: DevTrain 99.45%, DevTest 99.2%
    "mfn512": 0.7129,
    # dlib 1.75 : mfn512 1, no mirror averaging: DevTrain 99.59%, DevTest 99.4%
    "dlib+mfn512": 0.2398,
    # dlib 2.5 : MobileFaceNet 0.5 : mfn512 1, no mirror averaging: DevTrain 99.59%, DevTest 99.2%
    "dlib+mobilefacenet+mfn512": 0.1996,
}

#: 1:N identify thresholds (cosine distance): a search hit is flagged ``match``
#: when its distance is <= this. Every enrolled face is another chance of a
#: false accept, so they are stricter than the 1:1 ones: each is set for an
#: open-set false-accept rate of 1% (a probe of someone not enrolled flagged a
#: match against a gallery of ~2,100 people), leaving each LFW View 1 DevTrain
#: person out in turn (``bench/recognizer.py``, ``bench/identification.py``).
DEFAULT_IDENTIFY_THRESHOLDS: dict[str, float] = {
    # true-accept rate at rank 1 on the 1:N test of all dev photos: dlib 56.7%,
    # mobilefacenet 87.2%, dlib+mobilefacenet 89.6%, mfn512 91.7%, dlib+mfn512 91.7%
    # (wrong top-1 flagged: 0.4-0.6%)
    "dlib": 0.0440,
    "dlib-native": 0.0440,
    "deepface:Dlib": 0.0440,
    "mobilefacenet": 0.3860,
    "dlib+mobilefacenet": 0.1482,
    "mfn512": 0.5065,
    "dlib+mfn512": 0.1736,
    "dlib+mobilefacenet+mfn512": 0.1349,
}

#: Mirror averaging per model, chosen on LFW View 1 DevTrain with its cost in
#: mind (it doubles a network's work; ``bench/recognizer.py`` keeps the
#: cheapest setting within one standard error of the best DevTrain accuracy):
#: on for dlib (98.95 -> 99.23%), off for MobileFaceNet (99.45 vs 99.50%), for
#: MobileFaceNet-512 (99.45 vs 99.50%) and for the fused models, whose entry applies
#: to all their parts. Unlisted: on.
DEFAULT_FLIP_AVERAGE: dict[str, bool] = {"dlib": True, "mobilefacenet": False,
                                         "dlib+mobilefacenet": False, "mfn512": False,
                                         "dlib+mfn512": False,
                                         "dlib+mobilefacenet+mfn512": False}

#: Weight of each part of a fused embedder (chosen on LFW View 1 DevTrain).
#: Vectors made with other weights are not comparable: re-enrol after a change.
DEFAULT_FUSION_WEIGHTS: dict[str, dict[str, float]] = {
    "dlib+mobilefacenet": {"dlib": 1.75, "mobilefacenet": 1.0},
    "dlib+mfn512": {"dlib": 1.75, "mfn512": 1.0},
    "dlib+mobilefacenet+mfn512": {"dlib": 2.5, "mobilefacenet": 0.5, "mfn512": 1.0},
}

#: The default embedder of each model pack (``default_embedder`` unset), for requests
#: and new collections that name none; a collection keeps the model it was made with.
#: dlib+mfn512 was chosen on LFW dev (``bench/recognizer.py``): the best rank-1 over
#: DevTrain people within 1.5x the CPU per image of the earlier dlib+mobilefacenet.
PACK_DEFAULT_EMBEDDER: dict[str, str] = {"default": "dlib+mfn512", "permissive": "dlib"}

#: The anti-spoofing model of each pack (``anti_spoofing_model`` unset): fr_liveness's
#: weights carry no stated licence, so the permissive pack ships none and takes the
#: user's MiniFASNet pair.
PACK_ANTI_SPOOFING: dict[str, str] = {"default": "fr_liveness", "permissive": "deepface:Fasnet"}


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
    engine: Literal["onnxruntime", "openvino", "auto"] = Field(
        "auto", description="CPU engine of the embedders: openvino runs the same ONNX files "
        "(mfn512 2.3x faster in float32, and bfloat16 on AMX / "
        "AVX-512 BF16), auto takes it where the openvino package is installed; the CUDA "
        "provider is always onnxruntime's")
    precision: Literal["fp32", "int8", "bf16", "fp16", "auto"] = Field(
        "auto", description="embedders on the CPU: int8 runs the int8 form of each model "
        "that keeps one (pipelines/install/quantize.py), bf16 runs OpenVINO in bfloat16 "
        "for each model that keeps its accuracy in it; auto takes bf16 where the engine is "
        "OpenVINO and the CPU has AMX or AVX-512 BF16, else int8 where it has VNNI or AMX "
        "int8; a model without the form runs float32. On the CUDA provider float32, except "
        "fp16: the float16 copy (pipelines/install/fp16.py) of each model that keeps it "
        "(none yet: bench/gpu_check.py decides); on the CPU fp16 means float32")


class IndexSettings(BaseModel):
    """The gallery: sharded FAISS over a durable store, or pgvector searched in SQL."""

    shards: int = Field(2, ge=1, le=256)
    backend: Literal["sqlite", "postgres", "pgvector"] = Field(
        "sqlite", description="pgvector: faces and their HNSW index live in PostgreSQL "
        "(no FAISS shards)")
    database_url: str | None = Field(
        None, description="postgresql://... when backend is postgres or pgvector; "
        "SQLite file otherwise"
    )
    hnsw_m: int = Field(16, ge=2, le=100, description="pgvector HNSW: links per node")
    hnsw_ef_construction: int = Field(
        64, ge=4, le=1000, description="pgvector HNSW: candidate list size while building")
    hnsw_ef_search: int = Field(
        40, ge=1, le=1000, description="pgvector HNSW: candidate list size per search "
        "(raised to top_k when smaller)")
    hnsw_maintenance_work_mem: str = Field(
        "1GB", pattern=r"^\d+\s*(kB|MB|GB)$",
        description="pgvector: memory for an index (re)build; the graph should fit")
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
    cluster_sync_max_faces: int = Field(
        10_000, ge=0, description="POST .../clusters answers at once up to this many faces in "
        "scope (about 1-2 s on 2 cores); above, it starts a job (202 and a Location to poll)")
    strict_collections: bool = Field(
        False, description="writes (enrol, faces:batch, import) to a collection that does not "
        "exist answer 404 collection_not_found instead of creating it: a typo does not make "
        "a new gallery; create collections with POST /v1/collections")


class AuthSettings(BaseModel):
    """Whether keys are required, how long keys made through ``/v1/keys`` may live,
    and how ingress replicas keep the table of those keys."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true: every request needs a key, and an empty api_key_sha256 "
        "is refused (at start and on reconfigure); false: authentication off, keys "
        "ignored; auto: on exactly when api_key_sha256 names a key (the open local "
        "default), and once on it stays on")
    key_max_lifetime_days: float | None = Field(
        365.0, gt=0, description="keys made through POST /v1/keys expire within this many "
        "days (one asking for no expiry gets this one; longer is refused); null: no bound")

    refresh_s: float = Field(
        0.5, gt=0, le=10, description="how often each ingress replica re-reads the key table")
    max_age_s: float = Field(
        1.5, gt=0, le=60, description="a key from the table is only accepted while the table "
        "was read less than this long ago (a revoked key is refused everywhere within it); "
        "older, the replica reads it again before answering, and answers 503 if it cannot")


class RateLimitSettings(BaseModel):
    """Requests per key and per client, and failed authentications per client, each
    as ``limits`` strings ("20/minute", "50/second;2000/minute"); counted by each
    Ingress replica on its own (N replicas let through up to N times as many).
    Past a limit the answer is 429 ``rate_limited`` with ``Retry-After``."""

    per_key: str | None = Field(
        None, description="requests each API key may make; unset: no limit")
    per_client: str | None = Field(
        None, description="requests each client address may make; unset: no limit")
    failed_auth_per_client: str | None = Field(
        "20/minute", description="failed authentications a client address may make; past "
        "it every request of that address answers 429 until the window moves on")
    client_address_header: str | None = Field(
        None, description="a header the proxy in front sets to the client's address "
        "(e.g. X-Forwarded-For: its last value is taken); unset: the connection's peer, "
        "which behind a proxy is the proxy for every client")

    @model_validator(mode="after")
    def _parse(self) -> RateLimitSettings:
        from limits import parse_many

        for name in ("per_key", "per_client", "failed_auth_per_client"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_many(value)
                except ValueError as e:
                    raise ValueError(f"rate_limits.{name}: {e}") from None
        return self


class AuditSettings(BaseModel):
    """The audit trail: which changes and searches are recorded, and for how long."""

    identify: bool = Field(True, description="record every identify / search (a read)")
    reads: bool = Field(True, description="record every read of stored data: face and "
                        "person reads, listings and exports (key, collection, rows)")
    retention_days: float | None = Field(
        90.0, gt=0, description="delete entries older than this (checked hourly by every "
        "Gallery replica); null: keep every entry")


class EncryptionSettings(BaseModel):
    """Templates sealed at rest (index/sealing.py): where the master key is. Names of a
    file and a variable only, never the key itself, so they can travel to every process."""

    master_key_file: str | None = Field(
        None, description="a file holding the 32-byte master key (raw, or base64): new "
        "collections seal their templates with AES-256-GCM under a data key it wraps")
    master_key_env: str | None = Field(
        "FACEFLEET_MASTER_KEY", description="the environment variable holding the master key "
        "when no file is set (unset or empty: templates of new collections are stored plain)")
    previous_master_key_file: str | None = Field(
        None, description="the master key before a rotation, until `python -m "
        "index.rotate_master_key` has re-wrapped every collection under the current one")


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
    model_pack: Literal["default", "permissive"] = Field(
        "default", description="permissive: only embedders whose weights carry an "
        "unrestricted licence (dlib) are offered, and dlib is the default")
    default_embedder: str | None = Field(
        None, description="embedder of requests and new collections that name none "
        "(unset: the model pack's default)")
    flip_average: bool | dict[str, bool] = Field(
        default_factory=lambda: dict(DEFAULT_FLIP_AVERAGE),
        description="embed each face and its mirror image and average: for every model, or "
        "per model (unlisted models: on)")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS),
        description="1:1 verify thresholds (cosine distance) per model")
    identify_thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTIFY_THRESHOLDS),
        description="1:N identify thresholds (cosine distance) per model")
    fusion_weights: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_FUSION_WEIGHTS.items()},
        description="weight of each part of a fused embedder")
    images: ImageLimits = Field(default_factory=ImageLimits)
    urls: UrlFetch = Field(default_factory=UrlFetch)
    file_root: Path | None = Field(
        None, description="allow file:///... image URIs naming files under this root"
    )
    runtime: Runtime = Field(default_factory=Runtime)
    index: IndexSettings = Field(default_factory=IndexSettings)
    # NoDecode: the environment value is read by _key_list, which also takes a
    # comma-separated list (a bare hex digest is the first thing people try)
    api_key_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="the admin keys, hashed: 'hmac-sha256:<salt>:<hex>' "
        "(python -m configs.keyhash) or a plain hex SHA-256 (older form, accepted); a JSON "
        "list, or comma-separated in the environment; empty: authentication off unless "
        "auth.enabled is true")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    preload_actions: list[str] = Field(
        default_factory=lambda: ["age", "gender", "emotion"],
        description="attribute models loaded at start (race loads on first use)",
    )
    max_faces: int = Field(64, ge=1, description="upper bound on faces returned per image")
    anti_spoofing_model: Literal["fr_liveness", "deepface:Fasnet"] | None = Field(
        None, description="model of the anti_spoofing action: fr_liveness (shipped) or "
        "deepface:Fasnet (the MiniFASNet pair, from your own weights files); unset: the model "
        "pack's (default: fr_liveness; permissive: deepface:Fasnet)")

    @field_validator("api_key_sha256", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("not a JSON list") from None
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("api_key_sha256", mode="after")
    @classmethod
    def _key_hashes(cls, value: list[str]) -> list[str]:
        for k in value:
            try:
                parse(k)
            except ValueError as exc:
                # a key pasted here by mistake is a secret: only its first characters show
                raise ValueError(f"the entry starting {k[:4]!r} ({len(k)} characters) is not a "
                                 f"hashed key: {exc}; give the hash of each key, not the key "
                                 "itself") from None
        return [k.strip().lower() for k in value]

    @property
    def models_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    @model_validator(mode="after")
    def _auth_keys(self) -> Settings:
        if self.auth.enabled is True and not self.api_key_sha256:
            raise ValueError("auth.enabled is true but api_key_sha256 names no key: refusing "
                             "to start without an admin key (set auth.enabled: false to run "
                             "without authentication)")
        return self

    @property
    def auth_on(self) -> bool:
        """Whether requests need a key at start (``auth.enabled`` resolved)."""
        if self.auth.enabled == "auto":
            return bool(self.api_key_sha256)
        return bool(self.auth.enabled)

    @model_validator(mode="after")
    def _pack_default(self) -> Settings:
        # whether default_embedder is offered in the pack is checked where the models
        # are listed (pipelines.registry.check_model_settings), at deploy and start
        if self.anti_spoofing_model is None:
            self.anti_spoofing_model = PACK_ANTI_SPOOFING[self.model_pack]
        if self.model_pack == "permissive" and self.anti_spoofing_model == "fr_liveness":
            raise ValueError("anti_spoofing_model 'fr_liveness' is not offered in the "
                             "'permissive' model pack (its weights state no licence)")
        if self.default_embedder is None:
            self.default_embedder = PACK_DEFAULT_EMBEDDER[self.model_pack]
        return self

    def threshold_for(self, model: str) -> float | None:
        """The 1:1 verify threshold of ``model`` (None: not calibrated)."""
        return self.thresholds.get(model)

    def identify_threshold_for(self, model: str) -> float | None:
        """The 1:N identify threshold of ``model`` (None: not calibrated)."""
        return self.identify_thresholds.get(model)


#: the form each settings value takes where a message has to say it
EXPECTED_FORM: dict[str, str] = {
    "api_key_sha256": "a JSON list of hashed keys ('[\"hmac-sha256:<salt>:<hex>\", ...]', "
                      "made by python -m configs.keyhash new, or plain 64-hex SHA-256 "
                      "digests) or a comma-separated list of them",
}


class SettingsProblem(ValueError):
    """A settings value that cannot be used, said in one line that names the
    variable (``FACEFLEET_...``) and the form it expects."""


def _variable(loc: tuple[Any, ...] | list[Any]) -> str:
    path = [str(p) for p in loc if not isinstance(p, int)]
    return "FACEFLEET_" + "__".join(p.upper() for p in path)


def _expected(field: str) -> str:
    if field in EXPECTED_FORM:
        return EXPECTED_FORM[field]
    info = Settings.model_fields.get(field)
    text = str(info.annotation) if info else ""
    if "dict" in text:
        return "a JSON object"
    if "list" in text:
        return "a JSON list"
    return "a JSON value of the documented form (README, 'Configuration')"


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment and ``overrides`` (a serve config's
    ``args.settings``); a bad value raises :class:`SettingsProblem`, one line."""
    try:
        return Settings(**(overrides or {}))
    except SettingsError as exc:  # the environment's value of a complex field is not JSON
        m = re.search(r'field "([^"]+)"', str(exc))
        field = m.group(1) if m else "?"
        raise SettingsProblem(f"{_variable([field])}: cannot parse its value; expected "
                              f"{_expected(field)}") from None
    except PydanticValidationError as exc:
        e = exc.errors()[0]
        loc = e["loc"]
        field = str(loc[0]) if loc else "?"
        where = _variable(loc) if loc else "settings"
        msg = e["msg"].removeprefix("Value error, ")
        # a nested or plain value: pydantic's message says the expected type itself
        tail = f"; expected {_expected(field)}" if len(loc) == 1 and (
            field in EXPECTED_FORM or e["type"] in ("list_type", "dict_type")) else ""
        path = f" (args.settings.{'.'.join(map(str, loc))})" if loc else ""
        raise SettingsProblem(f"{where}{path}: {msg}{tail}") from None

