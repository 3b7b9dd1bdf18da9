"""The model interface: one base (``InferenceModel``) for every detector,
embedder and attribute model, and the context models are built with.

Each model is a plain class with a name, a task (``ModelTask``), the chips it
needs from detection, a ``load()`` that may raise ``ModelNotInstalled``
(naming the missing file and where it goes), a batched ``predict_batch`` and
an ``info()``. The one registry of names, keyed by task, is
``pipelines/registry.py``; ``pipelines.stages.ModelCache`` builds and loads
each model once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipelines.errors import ModelNotInstalled, ValidationError
from configs.settings import Runtime
from pipelines.types import ChipSpec, Face

DLIB_CHIP = ChipSpec(150, 0.25)


@dataclass(frozen=True)
class ModelContext:
    """What a model needs to find its weights and pick its runtime.

    ``model_pack`` limits which models the registry builds (``permissive``:
    only weights under an unrestricted licence); ``fusion_weights`` gives each
    fused embedder the weight of each part (``configs.settings``);
    ``anti_spoofing_model`` picks the liveness model.
    """

    models_dir: Path = Path("data/models")
    deepface_home: Path | None = None
    runtime: Runtime = field(default_factory=Runtime)
    model_pack: str = "default"
    fusion_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: which model answers the ``anti_spoofing`` action (``pipelines.registry.ANTI_SPOOFING_MODELS``)
    anti_spoofing_model: str = "fr_liveness"


def require_file(path: Path, model: str, hint: str) -> Path:
    """Return ``path`` if it exists, else raise a ModelNotInstalled naming it."""
    if not path.is_file():
        raise ModelNotInstalled(
            f"model '{model}' is not installed: weights file {path} is missing ({hint})",
            {"model": model, "missing_file": str(path)},
        )
    return path


class ModelTask(str, Enum):
    """What a model does; the registry (``pipelines.registry``) is keyed by it."""

    DETECT = "detect"  # images -> faces
    EMBED = "embed"  # chips -> unit vectors
    ATTRIBUTE = "attribute"  # chips -> age, gender, emotion, race or liveness


class InferenceModel(ABC):
    """The one interface of every model: a name, a task, what it needs from
    detection, ``load`` and ``predict_batch``, and ``info`` for callers that
    prepare its input (the ingress asks which chips to cut).

    ``load`` may raise ``ModelNotInstalled`` (naming the missing file and where
    it goes) and is safe to call again; ``predict_batch`` loads on first use.
    """

    name: str = ""
    task: ClassVar[ModelTask]
    #: the one chip a single-network model reads (``chip_specs`` lists them all)
    chip: ChipSpec = DLIB_CHIP

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        """The aligned chips this model needs of each detected face."""
        return (self.chip,)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights; raise ModelNotInstalled when they are missing."""

    @abstractmethod
    def predict_batch(self, inputs: Any) -> Any:
        """One forward pass over a batch: images for a detector, chips keyed by
        ``ChipSpec.key`` for the others; one result per image or face."""

    def info(self) -> dict[str, Any]:
        """What a caller needs to feed this model; ``chip_size`` / ``chip_padding``
        repeat the first spec for callers that predate ``chip_specs``."""
        specs = self.chip_specs
        out: dict[str, Any] = {"name": self.name, "chip_specs": [c.as_dict() for c in specs]}
        if specs:
            out.update(chip_size=specs[0].size, chip_padding=specs[0].padding)
        return out


class DetectorModel(InferenceModel):
    """Finds faces in decoded RGB images (uint8, HxWx3)."""

    task = ModelTask.DETECT
    #: (dx, dy, sw, sh): maps this detector's box onto the box dlib's 5-point
    #: shape predictor was trained with (dlib HOG): centre shift in box widths /
    #: heights and size ratios, medians over 600 LFW View 1 DevTrain images
    #: (bench/box_calibration.py). Used for alignment only (``Face.align_box``);
    #: reported boxes stay the detector's own.
    box_to_dlib: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def chip_specs(self) -> tuple[ChipSpec, ...]:
        return ()  # a detector reads whole images; it cuts the chips others need

    def calibrate(self, faces: list[Face]) -> list[Face]:
        for f in faces:
            if f.align_box is None:
                f.align_box = f.box.mapped(*self.box_to_dlib)
        return faces

    @abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, in any order; landmarks may be NaN when unknown."""

    def predict_batch(self, inputs: list[np.ndarray]) -> list[list[Face]]:
        return self.detect(inputs)


class EmbedderModel(InferenceModel):
    """Turns aligned chips into L2-normalised embeddings.

    ``chip_specs`` lists the chips the model needs of each face (one for a
    single network; a fused embedder needs one per part); ``predict_batch``
    takes them keyed by ``ChipSpec.key``, as ``DetectedImage.chips`` holds them.
    """

    task = ModelTask.EMBED
    dim: int = 0
    #: whether the model keeps an int8 form: only where it held accuracy on DevTest and
    #: the 1:N protocol and a cosine >= 0.99 to float32 on every LFW dev face
    #: (bench/quantized.py); ``runtime.precision`` decides whether it is used
    has_int8: ClassVar[bool] = False
    #: whether the model keeps its bfloat16 form (OpenVINO on AMX / AVX-512 BF16), by
    #: the same bars as int8 (bench/quantized.py)
    has_bf16: ClassVar[bool] = False
    #: whether the model keeps its float16 copy on the CUDA provider (``runtime.precision:
    #: fp16``): only once a GPU run of bench/gpu_check.py shows cosine >= 0.999 to the CPU
    #: float32 vectors on every face; none is kept until one has
    has_fp16: ClassVar[bool] = False
    #: what ``load`` chose: "fp32", "int8", "bf16" or "fp16"
    precision: str = "fp32"
    #: the engine ``load`` chose: onnxruntime's provider, or OpenVINO's
    engine: str = ""

    @abstractmethod
    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB chips -> (N, dim) float32 unit vectors."""

    def predict_batch(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Chips keyed by ``ChipSpec.key`` -> (N, dim) float32 unit vectors."""
        return self.embed(chips_for(inputs, self.chip, self.name))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "dim": self.dim, "precision": self.precision,
                "engine": self.engine}


class AttributeModel(InferenceModel):
    """Predicts one face attribute (age, gender, emotion, race, liveness) from chips;
    anti-spoofing reads two crops (``chip_specs``)."""

    task = ModelTask.ATTRIBUTE
    #: the action of the analyze API this model answers
    action: str = ""

    @abstractmethod
    def predict(self, chips: np.ndarray) -> list[dict]:
        """One result dict per chip, in the API's shape for this action."""

    def predict_batch(self, inputs: Mapping[str, np.ndarray]) -> list[dict]:
        """Chips keyed by ``ChipSpec.key`` -> one result dict per face."""
        return self.predict(chips_for(inputs, self.chip, self.name))

    def info(self) -> dict[str, Any]:
        return {"action": self.action, **super().info()}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def chips_for(chips: Mapping[str, np.ndarray], spec: ChipSpec, model: str) -> np.ndarray:
    """The chips of ``spec`` from a key -> chips mapping, or a ValidationError."""
    try:
        return chips[spec.key]
    except KeyError:
        raise ValidationError(
            f"model '{model}' needs chips '{spec.key}'; the request carries "
            f"{', '.join(sorted(chips)) or 'none'}",
            {"model": model, "needed": spec.key, "given": sorted(chips)}) from None
