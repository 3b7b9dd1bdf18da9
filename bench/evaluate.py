"""Evaluation on the shared photo sets: LFW View 1 verification, leave-one-out
identification, and detection recall/precision against dlib's hand-drawn boxes.

Plain functions over the in-process stages, used by ``bench/accuracy.py`` (full
tables for the README) and by the accuracy tests.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.settings import ImageLimits
from pipelines.errors import FacefleetError
from pipelines.models import ModelContext
from pipelines.stages import (DetectionStage, DetectRequest, EmbeddingStage, EmbedRequest)
from pipelines.types import Box, ChipSpec

FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "faces"
if not FACES.is_dir():  # CI clones main beside shared/
    FACES = Path.cwd().parent / "shared" / "faces"
LFW = FACES / "lfw-dev"


def lfw_pairs(name: str) -> list[tuple[str, str, bool]]:
    """(path1, path2, same) for pairsDevTrain.txt / pairsDevTest.txt."""
    lines = (LFW / name).read_text().splitlines()[1:]
    out = []
    for line in lines:
        p = line.split("\t")
        if len(p) == 3:
            out.append((_lfw(p[0], p[1]), _lfw(p[0], p[2]), True))
        elif len(p) == 4:
            out.append((_lfw(p[0], p[1]), _lfw(p[2], p[3]), False))
    return out


def _lfw(name: str, i: str) -> str:
    return str(LFW / "images" / name / f"{name}_{int(i):04d}.jpg")


class Embedding:
    """Embeds the central face of each image with one detector + one embedder.

    ``flip_average`` is passed to the embedding stage (a bool, or per model
    as in ``Settings.flip_average``).
    """

    def __init__(self, detector: str, model: str = "dlib",
                 ctx: ModelContext | None = None,
                 flip_average: bool | Mapping[str, bool] = True) -> None:
        self.ctx = ctx or ModelContext()
        self.detector = detector
        self.model = model
        self.det = DetectionStage(self.ctx, ImageLimits())
        self.emb = EmbeddingStage(self.ctx, flip_average=flip_average)
        self.specs = self.emb.model(model).chip_specs
        self.missed = 0

    def chips(self, paths: list[str], specs: tuple[ChipSpec, ...] | None = None
              ) -> dict[str, dict[str, np.ndarray] | None]:
        """Chips (key -> (size, size, 3)) of the face nearest each image's centre."""
        specs = specs or self.specs
        reqs = [DetectRequest(Path(p).read_bytes(), self.detector, max_faces=8,
                              chip_specs=tuple(specs)) for p in paths]
        out: dict[str, dict[str, np.ndarray] | None] = {}
        for p, r in zip(paths, self.det.run(reqs), strict=True):
            if isinstance(r, FacefleetError) or not r.faces:
                out[p] = None
                self.missed += 1
                continue
            # LFW centres the labelled person: take the face nearest the centre.
            cx, cy = r.width / 2, r.height / 2
            j = min(range(len(r.faces)), key=lambda k: _dist(r.faces[k].box, cx, cy))
            out[p] = {k: v[j] for k, v in r.chips.items()}
        return out

    def embed_paths(self, paths: list[str], batch: int = 32) -> dict[str, np.ndarray | None]:
        out: dict[str, np.ndarray | None] = {}
        for i in range(0, len(paths), batch):
            found = self.chips(paths[i:i + batch])
            keep = [p for p, c in found.items() if c is not None]
            out.update({p: None for p, c in found.items() if c is None})
            if keep:
                chips = {s.key: np.stack([found[p][s.key] for p in keep]) for s in self.specs}
                vecs = self.emb.run([EmbedRequest(self.model, chips)])[0]
                if isinstance(vecs, FacefleetError):
                    raise vecs
                out.update(zip(keep, vecs, strict=True))
        return out


def _dist(b: Box, cx: float, cy: float) -> float:
    return (b.x + b.w / 2 - cx) ** 2 + (b.y + b.h / 2 - cy) ** 2


def pair_distances(pairs, vecs) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances (2.0 where a face was missed) and same-person labels."""
    d, y = [], []
    for a, b, same in pairs:
        va, vb = vecs.get(a), vecs.get(b)
        d.append(2.0 if va is None or vb is None else float(1.0 - np.dot(va, vb)))
        y.append(same)
    return np.array(d), np.array(y)


def best_threshold(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy (midpoint between neighbouring distances)."""
    order = np.sort(np.unique(d))
    cands = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    accs = [float(((d <= t) == y).mean()) for t in cands]
    i = int(np.argmax(accs))
    return float(cands[i]), accs[i]


def accuracy(d: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(((d <= t) == y).mean())


def roc_auc(d: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of ``-d`` for same-person pairs (threshold-free)."""
    s = -np.asarray(d, np.float64)
    ranks = s.argsort().argsort() + 1.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def deepface_identities() -> list[tuple[str, str]]:
    rows = list(csv.DictReader(open(FACES / "deepface" / "identities.csv")))
    return [(str(FACES / "deepface" / r["image"]), r["identity"]) for r in rows]


def leave_one_out(vecs: dict[str, np.ndarray | None], labels: list[tuple[str, str]]) -> float:
    """Share of images whose nearest other image is the same person."""
    items = [(p, who) for p, who in labels if vecs.get(p) is not None]
    m = np.stack([vecs[p] for p, _ in items])
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(axis=1)
    hits = sum(items[i][1] == items[j][1] for i, j in enumerate(nn))
    return hits / len(labels)  # images with no face count as misses


@dataclass
class DetectionScore:
    truth: int
    found: int
    matched: int

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 0.0

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 0.0


def dlib_boxes(xml_name: str) -> list[tuple[str, list[Box]]]:
    root = ET.parse(FACES / "dlib-boxes" / xml_name).getroot()
    out = []
    for img in root.iter("image"):
        boxes = [Box(float(b.get("left")), float(b.get("top")), float(b.get("width")),
                     float(b.get("height"))) for b in img.iter("box")
                 if b.get("ignore") not in ("1", "true")]
        out.append((str(FACES / "dlib-boxes" / img.get("file")), boxes))
    return out


def detection_score(stage: DetectionStage, detector: str, xml_name: str,
                    iou: float = 0.5) -> DetectionScore:
    truth = found = matched = 0
    for path, boxes in dlib_boxes(xml_name):
        r = stage.run([DetectRequest(Path(path).read_bytes(), detector, max_faces=256)])[0]
        faces = [] if isinstance(r, FacefleetError) else r.faces
        truth += len(boxes)
        found += len(faces)
        used: set[int] = set()
        for gt in boxes:  # greedy one-to-one matching by IoU
            best, bi = 0.0, -1
            for k, f in enumerate(faces):
                if k not in used and (v := gt.iou(f.box)) > best:
                    best, bi = v, k
            if best >= iou:
                used.add(bi)
                matched += 1
    return DetectionScore(truth, found, matched)


def count_faces(stage: DetectionStage, detector: str, path: Path) -> int:
    r = stage.run([DetectRequest(path.read_bytes(), detector, max_faces=256)])[0]
    return 0 if isinstance(r, FacefleetError) else len(r.faces)
