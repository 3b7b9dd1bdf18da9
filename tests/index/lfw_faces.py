"""Real faces for the clustering tests: five LFW people with 7-8 photos each and five
people with one photo, embedded in process with the default model exactly as the
service embeds an enrolment (default detector, the largest face of each photo), with
that model's identify threshold. Embedded once per test session."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from bench.evaluate import LFW
from configs.settings import ImageLimits, Settings
from pipelines.models import ModelContext
from pipelines.stages import DetectionStage, DetectRequest, EmbeddingStage

PEOPLE = ["Hans_Blix", "Jennifer_Lopez", "John_Bolton", "Paul_Wolfowitz", "Ricardo_Lagos"]
ALONE = ["AJ_Cook", "Alberto_Acosta", "Amy_Smart", "Anthony_Scott_Miller", "Basdeo_Panday"]


class Faces:
    def __init__(self, vectors: np.ndarray, people: list[str], threshold: float) -> None:
        self.x, self.people, self.t = vectors, np.asarray(people), threshold

    def of(self, person: str) -> np.ndarray:
        return np.flatnonzero(self.people == person)


@functools.cache
def embedded_faces() -> Faces:
    s = Settings()
    model = s.default_embedder
    ctx = ModelContext(models_dir=Path("data/models"), fusion_weights=s.fusion_weights)
    embed = EmbeddingStage(ctx, flip_average=s.flip_average)
    detect = DetectionStage(ctx, ImageLimits())
    photos = [p for name in PEOPLE + ALONE for p in sorted((LFW / "images" / name).glob("*.jpg"))]
    detected = detect.run([DetectRequest(p.read_bytes(), s.default_detector,
                                         chip_specs=embed.model(model).chip_specs)
                           for p in photos])
    embedded = embed.run_detected(detected, [model] * len(photos))
    vectors = np.stack([e.vectors[0] for e in embedded])  # the largest face, as enrolment
    assert len(vectors) >= 40
    return Faces(vectors, [p.parent.name for p in photos], s.identify_threshold_for(model))
