"""int8 against float32 for every embedder: accuracy held or not, and ms per face.

    .venv/bin/python -m bench.quantized [--cache /tmp/quantized-chips.npz] [--rounds 5]

Cuts the chips of all 4,992 LFW dev photos once (default detector, the face
nearest the centre; ``--cache`` keeps them between runs), then embeds every
face as served (``EmbeddingStage``, the configured mirror averaging and fusion
weights) twice: ``runtime.precision`` fp32 and int8. Every network is tried in
int8 here, whether it keeps that form or not (``EmbedderModel.has_int8``): the
int8 files are made by ``pipelines.install.quantize`` (calibrated on DevTrain
faces only). Per model:

- cosine of each face's int8 vector to its float32 vector (minimum over all
  faces; the bar is 0.99 on every face);
- LFW View 1 DevTest accuracy at the configured 1:1 threshold;
- 1:N through the real gallery (``bench.identification``: one enrolled photo
  per person, the rest probe): rank-1 and true accepts at the identify threshold;
- the mixed case: a float32 gallery (and first photo of each pair) searched
  with int8 probes, as a collection enrolled before the switch is;
- kept: accuracy within 0.1 pp, rank-1 within 0.2 pp and the cosine bar.

Then in-process ms per face of each network's forward pass (``embed``, no
mirror averaging, one intra-op thread) at batch 1, 16 and 64, float32 against
int8, the best of ``--rounds`` interleaved rounds (other processes' load
penalises neither column). Writes ``bench/results/quantized.md`` with the CPU
model and flags in its header.
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import identification as ident
from bench.evaluate import Embedding, accuracy, lfw_pairs
from configs.settings import Runtime, Settings
from pipelines.models import ModelContext
from pipelines.registry import EMBEDDERS
from pipelines.runtime import INT8_FLAGS, cpu_flags
from pipelines.stages import EmbeddingStage, EmbedRequest

OUT = Path(__file__).parent / "results" / "quantized.md"
NETS = ("dlib", "mobilefacenet", "mfn512")
MODELS = (*NETS, "dlib+mfn512")
BATCHES = (1, 16, 64)
#: the bars an int8 form must hold to be kept
MAX_ACC_PP, MAX_RANK1_PP, MIN_COSINE = 0.1, 0.2, 0.99
#: network -> whether it keeps an int8 form (``has_int8`` as shipped), set by main
SHIPPED: dict[str, bool] = {}
log = logging.getLogger("bench.quantized")


def lfw_chips(cache: Path, s: Settings) -> tuple[list[str], dict[str, np.ndarray]]:
    """Paths with a face and their chips of every spec the models read."""
    if cache.is_file():
        with np.load(cache) as z:
            return [str(p) for p in z["paths"]], {k: z[k] for k in z.files if k != "paths"}
    e = Embedding(s.default_detector, "dlib+mfn512", _ctx(s, "fp32"))
    paths = sorted(p for imgs in ident.dev_people().values() for p in imgs)
    found, chips = [], {spec.key: [] for spec in e.specs}
    for i in range(0, len(paths), 64):
        for p, c in e.chips(paths[i:i + 64]).items():
            if c is not None:
                found.append(p)
                for k in chips:
                    chips[k].append(c[k])
    out = {k: np.stack(v) for k, v in chips.items()}
    np.savez(cache, paths=np.array(found), **out)
    return found, out


def _ctx(s: Settings, precision: str) -> ModelContext:
    return ModelContext(models_dir=s.models_path, fusion_weights=s.fusion_weights,
                        runtime=Runtime(device="cpu", precision=precision))


def embed_all(stage: EmbeddingStage, model: str, chips: dict[str, np.ndarray]) -> np.ndarray:
    keys = [c.key for c in stage.model(model).chip_specs]
    n = len(next(iter(chips.values())))
    return np.concatenate([stage.run([EmbedRequest(model, {k: chips[k][i:i + 64]
                                                           for k in keys})])[0]
                           for i in range(0, n, 64)])


def scores(s: Settings, model: str, gallery_vecs: dict, probe_vecs: dict, people, tmp: Path
           ) -> tuple[float, float, float]:
    """DevTest accuracy (first photo of a pair from the gallery side), rank-1, TAR."""
    pairs = lfw_pairs("pairsDevTest.txt")
    d, y = [], []
    for a, b, same in pairs:
        va, vb = gallery_vecs.get(a), probe_vecs.get(b)
        d.append(2.0 if va is None or vb is None else float(1.0 - np.dot(va, vb)))
        y.append(same)
    acc = accuracy(np.array(d), np.array(y), s.threshold_for(model))
    gallery, probes = ident.protocol(people)
    vecs = {**{p: probe_vecs.get(p) for p, _ in probes},
            **{p: gallery_vecs.get(p) for p, _ in gallery}}
    hits = ident.search_gallery(vecs, gallery, probes, tmp, model)
    st = ident.rank_stats(hits, [w for _, w in probes], s.identify_threshold_for(model))
    return acc, st.rank1, st.tar


def accuracy_rows(s: Settings, paths: list[str], chips: dict[str, np.ndarray]) -> list[str]:
    stages = {p: EmbeddingStage(_ctx(s, p), flip_average=s.flip_average) for p in ("fp32", "int8")}
    people = ident.dev_people()
    rows = ["| model | int8 used | min cosine (p1) | DevTest acc fp32 / int8 / mixed | "
            "rank-1 fp32 / int8 / mixed | TAR fp32 / int8 / mixed | kept |",
            "|---|---|---|---|---|---|---|"]
    for model in MODELS:
        t0 = time.perf_counter()
        if model not in NETS:  # a fused model as served: int8 parts only where kept
            for n in NETS:
                type(EMBEDDERS[n](ModelContext())).has_int8 = SHIPPED[n]
        v = {p: embed_all(st, model, chips) for p, st in stages.items()}
        used = [m.name for m in _parts(stages["int8"].model(model)) if m.precision == "int8"]
        cos = (v["fp32"] * v["int8"]).sum(1)
        d = {p: dict(zip(paths, v[p], strict=True)) for p in v}
        with tempfile.TemporaryDirectory() as tmp:
            f = scores(s, model, d["fp32"], d["fp32"], people, Path(tmp) / "f")
            q = scores(s, model, d["int8"], d["int8"], people, Path(tmp) / "q")
            mixed = scores(s, model, d["fp32"], d["int8"], people, Path(tmp) / "m")
        # held: no more than the bar lost (a gain is no reason to refuse int8)
        kept = ((q[0] - f[0]) * 100 >= -MAX_ACC_PP - 1e-9
                and (q[1] - f[1]) * 100 >= -MAX_RANK1_PP - 1e-9 and cos.min() >= MIN_COSINE)
        rows.append(
            f"| {model} | {', '.join(used) or 'none'} | {cos.min():.4f} "
            f"({np.percentile(cos, 1):.4f}) | "
            + " | ".join(" / ".join(f"{x[i]:.2%}" for x in (f, q, mixed))
                         + f" ({(q[i] - f[i]) * 100:+.2f} pp)" for i in range(3))
            + f" | {'yes' if kept else 'no'} |")
        log.info("%s in %.0f s: %s", model, time.perf_counter() - t0, rows[-1])
    return rows


def _parts(model):
    return getattr(model, "parts", [model])


def speed_rows(s: Settings, chips: dict[str, np.ndarray], rounds: int) -> list[str]:
    models = {p: {n: EMBEDDERS[n](_ctx(s, p)) for n in NETS} for p in ("fp32", "int8")}
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for n in NETS:
            for b in BATCHES:
                for p in ("fp32", "int8"):
                    m = models[p][n]
                    x = chips[m.chip.key][:b]
                    m.embed(x)  # loaded and warm
                    reps = max(1, 64 // b)
                    t = time.perf_counter()
                    for _ in range(reps):
                        m.embed(x)
                    ms = (time.perf_counter() - t) * 1000 / (reps * b)
                    best[n, p, b] = min(best.get((n, p, b), ms), ms)
    rows = ["| network | precision | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
            "|---|---|" + "---|" * len(BATCHES)]
    for n in NETS:
        for p in ("fp32", "int8"):
            rows.append(f"| {n} | {models[p][n].precision} | "
                        + " | ".join(f"{best[n, p, b]:.2f}" for b in BATCHES) + " |")
        rows.append(f"| {n} | speed-up | " + " | ".join(
            f"{best[n, 'fp32', b] / best[n, 'int8', b]:.2f}x" for b in BATCHES) + " |")
    return rows


def cpu_header() -> list[str]:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), platform.processor())
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4")))
    import onnxruntime

    present = ", ".join(sorted(set(INT8_FLAGS) & cpu_flags())) or "none"
    return [f"CPU: {model}; onnxruntime {onnxruntime.__version__}; one intra-op thread.",
            f"Flags: {' '.join(flags)}.",
            f"int8 instructions present: {present}"
            " (runtime.precision=auto picks int8 only with one of "
            f"{', '.join(INT8_FLAGS)})."]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/quantized-chips.npz"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-accuracy", action="store_true", help="speed table only")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import pipelines.install  # noqa: F401 - lets loads make the int8 files they miss

    # every network is tried in int8 here, kept or not: the bars are the table's to
    # apply, so the checks that refuse a straying int8 file are lifted for this process
    from pipelines import model_check
    from pipelines.install import quantize

    model_check.INT8_MIN_COSINE = quantize.INT8_MIN_COSINE = -1.0
    global SHIPPED
    SHIPPED = {n: type(EMBEDDERS[n](ModelContext())).has_int8 for n in NETS}
    for n in NETS:
        type(EMBEDDERS[n](ModelContext())).has_int8 = True
    s = Settings()
    paths, chips = lfw_chips(a.cache, s)
    lines = ["# int8 against float32 embedders", "", "    .venv/bin/python -m bench.quantized",
             "", *cpu_header(), "",
             f"{len(paths)} LFW dev faces. int8: static QDQ, int8 weights per channel, uint8 "
             "activations (MinMax), calibrated on 512 DevTrain faces "
             "(`pipelines/install/quantize.py`). Mixed: float32 gallery and first photo of "
             f"each pair, int8 probes. Kept: accuracy within {MAX_ACC_PP} pp, rank-1 within "
             f"{MAX_RANK1_PP} pp, cosine >= {MIN_COSINE} on every face (int8 may lose no more "
             "than the bar; the change int8 - fp32 is in brackets). Each network alone is "
             "tried in int8; a fused model is shown as served, int8 parts only where the "
             "network keeps its int8 form.", ""]
    if not a.skip_accuracy:
        lines += ["## Accuracy (as served: configured mirror averaging and fusion weights)", "",
                  *accuracy_rows(s, paths, chips), ""]
    for n in NETS:  # the speed table times every network's int8 form
        type(EMBEDDERS[n](ModelContext())).has_int8 = True
    lines += ["## ms per face, one forward pass (no mirror averaging), best of "
              f"{a.rounds} rounds", "", *speed_rows(s, chips, a.rounds), ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
