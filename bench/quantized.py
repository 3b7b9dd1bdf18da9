"""int8 and bfloat16 against float32, on both CPU engines, for every embedder:
accuracy held or not, and ms per face.

    .venv/bin/python -m bench.quantized [--cache /tmp/quantized-chips.npz] [--rounds 5]

Cuts the chips of all 4,992 LFW dev photos once (default detector, the face
nearest the centre; ``--cache`` keeps them between runs), then embeds every
face as served (``EmbeddingStage``, the configured mirror averaging and fusion
weights) in float32 on onnxruntime (the reference) and in each variant: int8
on onnxruntime, and float32 and bfloat16 on OpenVINO (``runtime.engine``,
``runtime.precision``). Every network is tried in each variant here, whether
it keeps that form or not (``EmbedderModel.has_int8`` / ``has_bf16``): the
int8 files are made by ``pipelines.install.quantize`` (calibrated on DevTrain
faces only). Per model and variant:

- cosine of each face's vector to its float32 vector (minimum over all
  faces; the bar is 0.99 on every face);
- LFW View 1 DevTest accuracy at the configured 1:1 threshold;
- 1:N through the real gallery (``bench.identification``: one enrolled photo
  per person, the rest probe): rank-1 and true accepts at the identify threshold;
- the mixed case: a float32 gallery (and first photo of each pair) searched
  with the variant's probes, as a collection enrolled before the switch is;
- kept: accuracy within 0.1 pp, rank-1 within 0.2 pp and the cosine bar.

Then in-process ms per face of each network's forward pass (``embed``, no
mirror averaging, one intra-op thread) at batch 1, 16 and 64 in each variant,
the best of ``--rounds`` interleaved rounds (other processes' load penalises
no column). Writes ``bench/results/quantized.md`` with the CPU
model and flags in its header.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from bench import identification as ident
from bench.evaluate import Embedding, accuracy, lfw_pairs
from bench.machine import cpu_line
from configs.settings import Runtime, Settings
from pipelines.models import ModelContext
from pipelines.registry import EMBEDDERS
from pipelines.runtime import BF16_FLAGS, INT8_FLAGS, cpu_flags
from pipelines.stages import EmbeddingStage, EmbedRequest

OUT = Path(__file__).parent / "results" / "quantized.md"
NETS = ("dlib", "mobilefacenet", "mfn512")
MODELS = (*NETS, "dlib+mfn512")
BATCHES = (1, 16, 64)
#: the bars an int8 form must hold to be kept
MAX_ACC_PP, MAX_RANK1_PP, MIN_COSINE = 0.1, 0.2, 0.99
#: variant -> (runtime.engine, runtime.precision); the first is the reference
VARIANTS: dict[str, tuple[str, str]] = {"fp32": ("onnxruntime", "fp32"),
                                        "int8": ("onnxruntime", "int8"),
                                        "ov-fp32": ("openvino", "fp32"),
                                        "bf16": ("openvino", "bf16")}
#: the model attribute that says whether a network keeps a precision's form
FORM = {"int8": "has_int8", "bf16": "has_bf16"}
#: (network, attribute) -> its value as shipped, set by main
SHIPPED: dict[tuple[str, str], bool] = {}
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


def _ctx(s: Settings, variant: str) -> ModelContext:
    engine, precision = VARIANTS[variant]
    return ModelContext(models_dir=s.models_path, fusion_weights=s.fusion_weights,
                        runtime=Runtime(device="cpu", engine=engine, precision=precision))


def _set_forms(shipped: bool) -> None:
    """Every network tries every form (False), or each keeps what it ships with."""
    for n in NETS:
        for attr in FORM.values():
            setattr(type(EMBEDDERS[n](ModelContext())), attr,
                    SHIPPED[n, attr] if shipped else True)


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
    stages = {v: EmbeddingStage(_ctx(s, v), flip_average=s.flip_average) for v in VARIANTS}
    people = ident.dev_people()
    rows = ["| model | variant | as run | min cosine (p1) | DevTest acc fp32 / variant / mixed | "
            "rank-1 fp32 / variant / mixed | TAR fp32 / variant / mixed | kept |",
            "|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        # a fused model as served: each part in a form only where the part keeps it
        _set_forms(shipped=model not in NETS)
        v = {p: embed_all(st, model, chips) for p, st in stages.items()}
        d = {p: dict(zip(paths, v[p], strict=True)) for p in v}
        with tempfile.TemporaryDirectory() as tmp:
            f = scores(s, model, d["fp32"], d["fp32"], people, Path(tmp) / "f")
            for var in list(VARIANTS)[1:]:
                t0 = time.perf_counter()
                m = stages[var].model(model)
                run = f"{m.precision} on {m.engine}"
                cos = (v["fp32"] * v[var]).sum(1)
                q = scores(s, model, d[var], d[var], people, Path(tmp) / var)
                mixed = scores(s, model, d["fp32"], d[var], people, Path(tmp) / f"m{var}")
                # held: no more than the bar lost (a gain is no reason to refuse a form)
                kept = ((q[0] - f[0]) * 100 >= -MAX_ACC_PP - 1e-9
                        and (q[1] - f[1]) * 100 >= -MAX_RANK1_PP - 1e-9
                        and cos.min() >= MIN_COSINE)
                rows.append(
                    f"| {model} | {var} | {run} | {cos.min():.4f} "
                    f"({np.percentile(cos, 1):.4f}) | "
                    + " | ".join(" / ".join(f"{x[i]:.2%}" for x in (f, q, mixed))
                                 + f" ({(q[i] - f[i]) * 100:+.2f} pp)" for i in range(3))
                    + f" | {'yes' if kept else 'no'} |")
                log.info("%s in %.0f s: %s", model, time.perf_counter() - t0, rows[-1])
    return rows


def _parts(model):
    return getattr(model, "parts", [model])


def speed_rows(s: Settings, chips: dict[str, np.ndarray], rounds: int) -> list[str]:
    models = {v: {n: EMBEDDERS[n](_ctx(s, v)) for n in NETS} for v in VARIANTS}
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for n in NETS:
            for b in BATCHES:
                for v in VARIANTS:
                    m = models[v][n]
                    x = chips[m.chip.key][:b]
                    m.embed(x)  # loaded and warm
                    reps = max(1, 64 // b)
                    t = time.perf_counter()
                    for _ in range(reps):
                        m.embed(x)
                    ms = (time.perf_counter() - t) * 1000 / (reps * b)
                    best[n, v, b] = min(best.get((n, v, b), ms), ms)
    rows = ["| network | variant | as run | " + " | ".join(f"batch {b}" for b in BATCHES)
            + " | " + " | ".join(f"speed-up at {b}" for b in BATCHES) + " |",
            "|---|---|---|" + "---|" * 2 * len(BATCHES)]
    for n in NETS:
        for v in VARIANTS:
            m = models[v][n]
            rows.append(f"| {n} | {v} | {m.precision} on {m.engine} | "
                        + " | ".join(f"{best[n, v, b]:.2f}" for b in BATCHES) + " | "
                        + " | ".join(f"{best[n, 'fp32', b] / best[n, v, b]:.2f}x"
                                     for b in BATCHES) + " |")
    return rows


def cpu_header() -> list[str]:
    from pipelines import openvino_session

    present = ", ".join(sorted(set(INT8_FLAGS) & cpu_flags())) or "none"
    bf16 = ", ".join(sorted(set(BF16_FLAGS) & cpu_flags())) or "none"
    return [cpu_line(),
            f"onnxruntime {onnxruntime.__version__}, openvino {openvino_session.version()}; "
            "one intra-op thread.",
            f"bf16 instructions present: {bf16}; int8 instructions present: {present}"
            " (runtime.precision=auto picks bf16 on OpenVINO only with one of "
            f"{', '.join(BF16_FLAGS)}, else int8 only with one of {', '.join(INT8_FLAGS)})."]


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
    SHIPPED.update({(n, attr): getattr(type(EMBEDDERS[n](ModelContext())), attr)
                    for n in NETS for attr in FORM.values()})
    s = Settings()
    paths, chips = lfw_chips(a.cache, s)
    lines = ["# int8 and bfloat16 against float32 embedders, on onnxruntime and OpenVINO", "",
             "    .venv/bin/python -m bench.quantized",
             "", *cpu_header(), "",
             f"{len(paths)} LFW dev faces. Reference: float32 on onnxruntime. int8: static "
             "QDQ, int8 weights per channel, uint8 activations (MinMax), calibrated on 512 "
             "DevTrain faces (`pipelines/install/quantize.py`), on onnxruntime. ov-fp32 and "
             "bf16: the float32 file on OpenVINO, with its inference precision float32 or "
             "bfloat16. Mixed: float32 gallery and first photo of each pair, the variant's "
             f"probes. Kept: accuracy within {MAX_ACC_PP} pp, rank-1 within "
             f"{MAX_RANK1_PP} pp, cosine >= {MIN_COSINE} on every face (a variant may lose no "
             "more than the bar; its change - fp32 is in brackets). Each network alone is "
             "tried in each variant; a fused model is shown as served, each part in a form "
             "only where the part keeps it.", ""]
    if not a.skip_accuracy:
        lines += ["## Accuracy (as served: configured mirror averaging and fusion weights)", "",
                  *accuracy_rows(s, paths, chips), ""]
    _set_forms(shipped=False)  # the speed table times every network in every variant
    lines += ["## ms per face, one forward pass (no mirror averaging), best of "
              f"{a.rounds} rounds", "", *speed_rows(s, chips, a.rounds), ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
