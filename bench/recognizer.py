"""Recognizer accuracy, identify thresholds and the choices behind the defaults.

    .venv/bin/python -m bench.recognizer [--target-far 0.01] [--cache /tmp/recognizer.npz]

Embeds the 4,992 LFW dev photos once (default detector, the face nearest the
centre) with dlib's ResNet, MobileFaceNet and MobileFaceNet-512 (``mfn512``),
each with and without mirror averaging, and derives every model from those
vectors: each fused model is the weighted concatenation that
``pipelines.embed_fused`` computes. Then, for each model:

- choices made on LFW View 1 DevTrain only: mirror averaging per network, the
  fusion weights, the 1:1 verify threshold (best DevTrain accuracy) and the 1:N
  identify threshold (open-set false-accept rate ``--target-far`` over DevTrain
  people, leaving each identity out in turn: ``bench.identification``);
- the default embedder for new collections: the best rank-1 over DevTrain
  people among the candidates (mfn512, each fused model, each with and
  without mirror averaging) whose CPU cost per image is at most ``BUDGET``
  times that of the earlier default (``TODAY``);
- reported on data those choices never saw: DevTest accuracy at the DevTrain
  threshold; 1:N over DevTest people (rank-1, true-accept rate and wrong top-1
  flagged ``match`` at the identify threshold, open-set false accepts);
- the 1:N test of all dev photos through the real gallery (one enrolled photo
  per person with two or more, single-photo people as distractors, the rest as
  probes): rank-1/5, true accepts and wrong top-1 flagged at the identify
  threshold and, for contrast, at the 1:1 threshold.

Writes ``bench/results/recognizer.md``, rewrites the three result tables in the
README (``--readme ''`` leaves it alone) and prints the settings to put in
``configs/settings.py``. Embedding takes about ten minutes on two shared cores:
keep ``--cache`` between runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import identification as ident
from bench.evaluate import (Embedding, accuracy, best_threshold, lfw_pairs, pair_distances,
                            roc_auc)
from configs.settings import Settings
from pipelines.models import ModelContext, l2_normalise
from pipelines.registry import FUSED as REGISTRY_FUSED

OUT = Path(__file__).parent / "results" / "recognizer.md"
README = Path(__file__).parents[1] / "README.md"
README_BLOCKS = ("recognizer-devtest", "recognizer-gallery", "recognizer-candidates")
NETS = ("dlib", "mobilefacenet", "mfn512")
FUSED = dict(REGISTRY_FUSED)
WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)  # dlib's weight, the other's = 1
#: weights tried per part of each fused model (the last part's is 1)
FUSIONS: dict[str, dict[str, tuple[float, ...]]] = {
    "dlib+mobilefacenet": {"dlib": WEIGHTS, "mobilefacenet": (1.0,)},
    "dlib+mfn512": {"dlib": WEIGHTS, "mfn512": (1.0,)},
    "dlib+mobilefacenet+mfn512": {"dlib": (1.0, 1.5, 1.75, 2.0, 2.5),
                                  "mobilefacenet": (0.5, 0.75, 1.0), "mfn512": (1.0,)},
}
#: ms per face of one forward pass, batch 1, one thread, and ms per image of detection
#: and alignment (bench/embedder_throughput.py, bench/results/embedder_throughput.md)
COST_MS = {"dlib": 4.7, "mobilefacenet": 8.4, "mfn512": 9.6}
DETECT_MS = 11.5  # 26.4 ms an image for dlib+mobilefacenet, less its 14.9 ms of networks
#: the default may cost at most this many times the CPU per image of TODAY, the
#: default before dlib+mfn512 (issue 24's baseline)
BUDGET = 1.5
TODAY = "dlib+mobilefacenet"
log = logging.getLogger("bench.recognizer")

Vectors = dict[str, "np.ndarray | None"]


def embed_all(paths: list[str], detector: str, ctx: ModelContext, cache: Path | None
              ) -> dict[str, Vectors]:
    """Unit vectors per variant (``net`` and ``net~flip``) for every photo."""
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # each z[k] reads the whole array again
        if list(arrays.pop("paths")) == paths:
            log.info("vectors from %s", cache)
            found = arrays.pop("found")
            return {v: {p: (a[i].copy() if found[i] else None) for i, p in enumerate(paths)}
                    for v, a in arrays.items()}
    e = Embedding(detector, "dlib", ctx)
    nets = {n: e.emb.model(n) for n in NETS}
    specs = tuple(dict.fromkeys(m.chip for m in nets.values()))
    out: dict[str, Vectors] = {f"{n}{s}": {} for n in NETS for s in ("", "~flip")}
    t0 = time.perf_counter()
    for i in range(0, len(paths), 32):
        found = e.chips(paths[i:i + 32], specs)
        keep = [p for p, c in found.items() if c is not None]
        for p in found:
            if found[p] is None:
                for v in out.values():
                    v[p] = None
        if not keep:
            continue
        for n, model in nets.items():
            chips = np.stack([found[p][model.chip.key] for p in keep])
            plain = model.embed(chips)
            mirror = model.embed(np.ascontiguousarray(chips[:, :, ::-1]))
            flip = l2_normalise(plain + mirror)
            out[n].update(zip(keep, plain, strict=True))
            out[f"{n}~flip"].update(zip(keep, flip, strict=True))
        if i % 640 == 0:
            log.info("embedded %d / %d photos (%.0f s)", i + len(found), len(paths),
                     time.perf_counter() - t0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        found_mask = np.array([out["dlib"][p] is not None for p in paths])
        arrays = {v: np.stack([vs[p] if vs[p] is not None else
                               np.zeros(nets[v.split("~")[0]].dim, np.float32) for p in paths])
                  for v, vs in out.items()}
        np.savez(cache, paths=np.array(paths), found=found_mask, **arrays)
    return out


def fuse(parts: list[Vectors], weights: list[float]) -> Vectors:
    """What FusedEmbedder.combine computes: each part's unit vectors times w_i / |w|."""
    scale = [w / float(np.linalg.norm(weights)) for w in weights]
    return {p: (None if parts[0][p] is None else
                np.concatenate([v[p] * s for v, s in zip(parts, scale, strict=True)]
                               ).astype(np.float32))
            for p in parts[0]}


@dataclass
class Row:
    name: str
    train_thr: float
    train_acc: float
    train_auc: float
    test_acc: float
    id_thr: float
    cal_far: float
    cal: ident.RankStats
    rep: ident.RankStats | None = None
    rep_far: float = 0.0
    full: ident.RankStats | None = None
    full_at_verify: ident.RankStats | None = None
    full_far: float = 0.0


class Data:
    def __init__(self) -> None:
        self.train, self.test = lfw_pairs("pairsDevTrain.txt"), lfw_pairs("pairsDevTest.txt")
        self.people = ident.dev_people()
        self.cal = ident.split(self.people, "pairsDevTrain.txt")
        self.rep = ident.split(self.people, "pairsDevTest.txt")


def brute_hits(vecs: Vectors, gallery, probes, k: int = 5):
    """Exact top-k by inner product (the same ranking as the gallery's flat index)."""
    gal = [(p, who) for p, who in gallery if vecs.get(p) is not None]
    m = np.stack([vecs[p] for p, _ in gal])
    found = [i for i, (p, _) in enumerate(probes) if vecs.get(p) is not None]
    out: list = [None] * len(probes)
    for s in range(0, len(found), 1024):
        chunk = found[s:s + 1024]
        sims = np.stack([vecs[probes[i][0]] for i in chunk]) @ m.T
        top = np.argsort(-sims, axis=1)[:, :k]
        for row, i in enumerate(chunk):
            out[i] = [(gal[j][1], float(1.0 - sims[row, j])) for j in top[row]]
    return out


def choose(vecs: Vectors, name: str, d: Data, far: float) -> Row:
    """Every figure that is allowed to steer a choice: DevTrain pairs, DevTrain people."""
    dtr, ytr = pair_distances(d.train, vecs)
    thr, acc_tr = best_threshold(dtr, ytr)
    dte, yte = pair_distances(d.test, vecs)
    imp = ident.impostor_distances(vecs, d.cal)
    t_id = ident.threshold_at_far(imp, far)
    gal, probes = ident.protocol(d.cal)
    cal = ident.rank_stats(brute_hits(vecs, gal, probes), [w for _, w in probes], t_id)
    return Row(name, thr, acc_tr, roc_auc(dtr, ytr), accuracy(dte, yte, thr), t_id,
               ident.far_at(imp, t_id), cal)


def report(row: Row, vecs: Vectors, d: Data, tmp: Path) -> Row:
    """Figures on data the choices never saw, and the full 1:N through the gallery."""
    gal, probes = ident.protocol(d.rep)
    row.rep = ident.rank_stats(brute_hits(vecs, gal, probes), [w for _, w in probes], row.id_thr)
    row.rep_far = ident.far_at(ident.impostor_distances(vecs, d.rep), row.id_thr)
    gal, probes = ident.protocol(d.people)
    hits = ident.search_gallery(vecs, gal, probes, tmp / row.name.replace("+", "_"), row.name)
    truth = [w for _, w in probes]
    row.full = ident.rank_stats(hits, truth, row.id_thr)
    row.full_at_verify = ident.rank_stats(hits, truth, row.train_thr)
    row.full_far = ident.far_at(ident.impostor_distances(vecs, d.people), row.id_thr)
    return row


def pick(candidates: list[tuple[Row, float]], n_pairs: int) -> str:
    """The cheapest candidate within one standard error of the best DevTrain accuracy.

    Differences of a pair or two out of 2,200 are noise; mirror averaging
    doubles a network's cost, so a setting must beat the cheaper one by more
    than that to be worth it (the one-standard-error rule of model selection).
    Equal accuracies are separated by the ROC AUC, which reads every pair's
    distance rather than which side of one threshold it falls.
    """
    best = max(r.train_acc for r, _ in candidates)
    floor = best - math.sqrt(best * (1 - best) / n_pairs)
    ok = [(c, -r.train_acc, -r.train_auc, r.name) for r, c in candidates
          if r.train_acc >= floor - 1e-12]
    return min(ok)[3]


def pick_default(cands: dict[str, tuple[Row, float]], budget: float) -> str:
    """The best rank-1 over DevTrain people among candidates costing at most ``budget``.

    Rank-1 differences within one standard error of the best (sqrt(r (1 - r) / probes):
    about 0.4 points, five of 1,311 probes) are ties, as in ``pick``; a tie goes to the
    best DevTrain verify accuracy (the default serves 1:1 too), then ROC AUC, then cost.
    """
    ok = {k: rc for k, rc in cands.items() if rc[1] <= budget + 1e-9}
    top = max(r.cal.rank1 for r, _ in ok.values())
    n = next(iter(ok.values()))[0].cal.probes
    floor = top - math.sqrt(top * (1 - top) / n)
    tied = [k for k, (r, _) in ok.items() if r.cal.rank1 >= floor - 1e-12]
    return min(tied, key=lambda k: (-ok[k][0].train_acc, -ok[k][0].train_auc, ok[k][1]))


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def grid(name: str) -> list[tuple[float, ...]]:
    """Every weight combination tried for fused model ``name`` (its parts' order)."""
    import itertools

    return list(itertools.product(*(FUSIONS[name][part] for part in FUSED[name])))


def fused_label(name: str, weights: tuple[float, ...], mirror: bool) -> str:
    return f"{name} {' : '.join(f'{w:g}' for w in weights)}, mirror: {'all' if mirror else 'none'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target-far", type=float, default=0.01,
                   help="open-set false-accept rate the identify thresholds are set for")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the vectors in this .npz and reuse them on a rerun")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--readme", default=str(README),
                   help="README whose result tables are rewritten ('' to leave it alone)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = Settings()
    ctx = ModelContext(models_dir=s.models_path)
    d = Data()
    paths = sorted(x for imgs in d.people.values() for x in imgs)
    t0 = time.perf_counter()
    var = embed_all(paths, s.default_detector, ctx, a.cache)
    embed_s = time.perf_counter() - t0
    missed = sum(v is None for v in var["dlib"].values())

    # 1. mirror averaging per network: the cheapest candidate within one standard error
    # of the best DevTrain accuracy (``pick``)
    rows: dict[str, Row] = {}
    for v in var:
        rows[v] = choose(var[v], v, d, a.target_far)
        log.info("%s", rows[v])
    cost = {v: COST_MS[v.split("~")[0]] * (2 if v.endswith("~flip") else 1) for v in var}
    chosen = {n: pick([(rows[v], cost[v]) for v in (n, f"{n}~flip")], len(d.train))
              for n in NETS}
    # 2. each fused model: weights and mirror averaging (of all its parts or none), the
    # same rule; both mirror settings are kept as candidates for the default
    fused_rows: list[tuple[Row, float]] = []
    vecs: dict[str, Vectors] = {}
    spec: dict[str, tuple[str, tuple[float, ...], bool]] = {}
    for name in FUSED:
        for mirror in (False, True):
            for ws in grid(name):
                label = fused_label(name, ws, mirror)
                vecs[label] = fuse([var[f"{n}~flip" if mirror else n] for n in FUSED[name]],
                                   list(ws))
                c = sum(COST_MS[n] for n in FUSED[name]) * (2 if mirror else 1)
                fused_rows.append((choose(vecs[label], label, d, a.target_far), c))
                spec[label] = (name, ws, mirror)
                log.info("%s", fused_rows[-1][0])
    by_label = {r.name: (r, c) for r, c in fused_rows}
    fused_pick = {name: pick([rc for rc in fused_rows if spec[rc[0].name][0] == name],
                             len(d.train)) for name in FUSED}
    mirror_pick = {(name, m): pick([rc for rc in fused_rows if spec[rc[0].name][0] == name
                                    and spec[rc[0].name][2] == m], len(d.train))
                   for name in FUSED for m in (False, True)}

    # 3. candidates for the default: today's, mfn512 with and without mirror averaging,
    # each fused model with and without; among those whose cost per image is within
    # BUDGET times today's, the best DevTrain-people rank-1 (``pick_default``)
    cands: dict[str, tuple[Row, float, Vectors]] = {}
    for v in ("mfn512", "mfn512~flip"):
        cands[v.replace("~flip", " + mirror")] = (rows[v], DETECT_MS + cost[v], var[v])
    for name in FUSED:
        for m in (False, True):
            r, c = by_label[mirror_pick[(name, m)]]
            cands[f"{name}{' + mirror' if m else ''}"] = (r, DETECT_MS + c, vecs[r.name])
    from pipelines.stages import flips

    today_label = TODAY if not flips(s.flip_average, TODAY) else f"{TODAY} + mirror"
    budget = BUDGET * cands[today_label][1]
    best = pick_default({k: (r, c) for k, (r, c, _) in cands.items()}, budget)
    default = best.replace(" + mirror", "")
    if default in NETS:  # its mirror setting is the candidate's
        chosen[default] = default + ("~flip" if best.endswith(" + mirror") else "")
    log.info("default: %s (DevTrain rank-1 %.4f, %.1f ms per image)", best,
             cands[best][0].cal.rank1, cands[best][1])

    final: dict[str, Row] = {n: replace(rows[chosen[n]], name=n) for n in NETS}
    models: dict[str, Vectors] = {n: var[chosen[n]] for n in NETS}
    fused_final = {name: fused_pick[name] for name in FUSED}
    if default in FUSED:
        fused_final[default] = cands[best][0].name
    for name, label in fused_final.items():
        final[name] = replace(by_label[label][0], name=name)
        models[name] = vecs[label]
    with tempfile.TemporaryDirectory() as tmp:
        for name, row in final.items():
            report(row, models[name], d, Path(tmp))
            log.info("%s", row)
        for k, (row, c, v) in cands.items():
            # a gallery collection needs a plain model name
            cands[k] = (replace(row, name=k.replace(" + mirror", "-mirror")), c, v)
            report(cands[k][0], v, d, Path(tmp))
            log.info("%s", cands[k][0])

    flip = {n: chosen[n].endswith("~flip") for n in NETS}
    flip.update({name: spec[label][2] for name, label in fused_final.items()})
    weights = {name: dict(zip(FUSED[name], spec[label][1], strict=True))
               for name, label in fused_final.items()}
    lines = [
        "# Recognizer: verification, 1:N identification and thresholds per model",
        "",
        f"`.venv/bin/python -m bench.recognizer` (target open-set false-accept rate "
        f"{a.target_far:g}). {len(paths)} LFW dev photos, detector `{s.default_detector}`, "
        f"{missed} without a face; embedding every variant took {embed_s:.0f} s.",
        "",
        "## Choices made on DevTrain (pairs and people of LFW View 1 DevTrain only)",
        "",
        "DevTrain people: the 1:N protocol over the 2,132 people of DevTrain (804 enrolled, "
        "1,328 distractors, 1,311 probes); open-set FAR: leaving each of them out in turn. "
        "The DevTest column is shown for information only: no choice reads it.",
        "",
        "| variant | ms per face | DevTrain acc | DevTrain AUC | verify threshold | identify threshold | open-set FAR | rank-1 | TAR at the identify threshold | (DevTest acc) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, c in [(rows[v], cost[v]) for v in rows] + fused_rows:
        lines.append(f"| {r.name.replace('~flip', ' + mirror')} | {c:g} | {pct(r.train_acc)} "
                     f"| {r.train_auc:.5f} "
                     f"| {r.train_thr:.4f} | {r.id_thr:.4f} "
                     f"| {pct(r.cal_far)} | {pct(r.cal.rank1)} | {pct(r.cal.tar)} "
                     f"| ({pct(r.test_acc)}) |")
    lines += [
        "",
        "ms per face: one forward pass, batch 1, one thread (bench/embedder_throughput.py); "
        "mirror averaging doubles it. Rule: among the candidates whose DevTrain accuracy is "
        "within one standard error (sqrt(acc (1 - acc) / 2200)) of the best, the cheapest; "
        "ties by DevTrain accuracy, then DevTrain ROC AUC (threshold-free).",
        "",
        "Chosen: " + "; ".join(f"{n} mirror averaging {'on' if flip[n] else 'off'}"
                               for n in NETS)
        + "; " + "; ".join(f"`{label}`" for label in fused_final.values()) + ".",
        "",
        "## The default for new collections",
        "",
        f"Candidates, each fused one at its DevTrain-chosen weights. Cost per image: detection "
        f"and alignment ({DETECT_MS:g} ms) plus the networks. Rule: the best rank-1 over "
        f"DevTrain people among the candidates costing at most {BUDGET:g}x the earlier default "
        f"(`{today_label}`, {cands[today_label][1]:.1f} ms: budget {budget:.1f} ms); rank-1 "
        "values within one standard error of the best are ties, decided by DevTrain verify "
        "accuracy, then DevTrain ROC AUC, then cost. "
        "Other columns: DevTest pairs and people (as below) and the 1:N test of all dev "
        "photos through the gallery; no choice reads them.",
        "",
        *candidate_table(cands),
        "",
        f"Chosen: **`{best}`**.",
        "",
        "## Results on data the choices never saw",
        "",
        "DevTest: LFW View 1 DevTest pairs (1,000) at the DevTrain verify threshold; "
        f"1:N over DevTest people ({sum(len(v) >= 2 for v in d.rep.values())} enrolled, "
        f"{sum(len(v) == 1 for v in d.rep.values())} distractors, "
        f"{sum(len(v) - 1 for v in d.rep.values())} probes) at the identify threshold; "
        "TAR = right person at rank 1 and flagged `match`; wrong flagged = wrong person at "
        "rank 1 flagged `match` (share of all probes); open-set FAR = share of photos of "
        "people left out of the gallery flagged `match`.",
        "",
        "| model | dim | DevTest acc | verify thr | identify thr | rank-1 | TAR | wrong flagged | open-set FAR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in final.items():
        dim = next(v for v in models[name].values() if v is not None).shape[0]
        lines.append(f"| {name} | {dim} | {pct(r.test_acc)} | {r.train_thr:.4f} | {r.id_thr:.4f} "
                     f"| {pct(r.rep.rank1)} | {pct(r.rep.tar)} | {pct(r.rep.wrong_flagged)} "
                     f"| {pct(r.rep_far)} |")
    n_enr = sum(len(v) >= 2 for v in d.people.values())
    n_dis = sum(len(v) == 1 for v in d.people.values())
    lines += [
        "",
        f"## 1:N on all dev photos, through the gallery ({n_enr} enrolled, {n_dis} "
        f"distractors, {sum(len(v) - 1 for v in d.people.values())} probes)",
        "",
        "| model | rank-1 | rank-5 | identify thr | TAR | wrong flagged | open-set FAR | wrong flagged at the 1:1 threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in final.items():
        f = r.full
        lines.append(f"| {name} | {pct(f.rank1)} | {pct(f.rank5)} | {r.id_thr:.4f} | "
                     f"{pct(f.tar)} | {pct(f.wrong_flagged)} | {pct(r.full_far)} | "
                     f"{pct(r.full_at_verify.wrong_flagged)} ({r.train_thr:.4f}) |")
    lines += [
        "",
        "Settings (`configs/settings.py`):",
        "",
        "```",
        f"thresholds: {{{', '.join(f'{n!r}: {r.train_thr:.4f}' for n, r in final.items())}}}",
        f"identify_thresholds: {{{', '.join(f'{n!r}: {r.id_thr:.4f}' for n, r in final.items())}}}",
        f"flip_average: {flip}",
        f"fusion_weights: {weights}",
        f"PACK_DEFAULT_EMBEDDER['default']: {default!r}",
        "```",
        "",
        f"numpy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"1-min load average at the end {os.getloadavg()[0]:.1f}.",
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    if a.readme:
        tables = readme_tables(final, models)
        tables["recognizer-candidates"] = candidate_table(cands)
        write_readme_tables(Path(a.readme), tables)
        print(f"tables {', '.join(tables)} rewritten in {a.readme}")
    return 0


def candidate_table(cands: dict[str, tuple[Row, float, Vectors]]) -> list[str]:
    out = ["| candidate | ms per image | DevTrain rank-1 | DevTest acc | DevTest rank-1 | "
           "TAR at the identify thr | wrong top-1 flagged | open-set FAR | gallery rank-1 | "
           "gallery wrong top-1 flagged |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k, (r, c, _) in cands.items():
        out.append(f"| `{k}` | {c:.1f} | {pct(r.cal.rank1)} | {pct(r.test_acc)} | "
                   f"{pct(r.rep.rank1)} | {pct(r.rep.tar)} | {pct(r.rep.wrong_flagged)} | "
                   f"{pct(r.rep_far)} | {pct(r.full.rank1)} | {pct(r.full.wrong_flagged)} |")
    return out


def readme_tables(final: dict[str, Row], models: dict[str, Vectors]) -> dict[str, list[str]]:
    """The README's two result tables: DevTest and 1:N through the gallery."""
    devtest = ["| model | dim | DevTest acc | verify thr | identify thr | rank-1 | "
               "TAR at the identify thr | wrong top-1 flagged | open-set FAR |",
               "|---|---|---|---|---|---|---|---|---|"]
    gallery = ["| model | rank-1 | rank-5 | TAR at the identify thr | wrong top-1 flagged "
               "`match` | open-set FAR | wrong top-1 flagged at the 1:1 thr (before) |",
               "|---|---|---|---|---|---|---|"]
    for name, r in final.items():
        dim = next(v for v in models[name].values() if v is not None).shape[0]
        devtest.append(f"| `{name}` | {dim} | {pct(r.test_acc)} | {r.train_thr:.4f} | "
                       f"{r.id_thr:.4f} | {pct(r.rep.rank1)} | {pct(r.rep.tar)} | "
                       f"{pct(r.rep.wrong_flagged)} | {pct(r.rep_far)} |")
        f = r.full
        gallery.append(f"| `{name}` | {pct(f.rank1)} | {pct(f.rank5)} | {pct(f.tar)} | "
                       f"{pct(f.wrong_flagged)} | {pct(r.full_far)} | "
                       f"{pct(r.full_at_verify.wrong_flagged)} |")
    return {"recognizer-devtest": devtest, "recognizer-gallery": gallery}


def write_readme_tables(readme: Path, tables: dict[str, list[str]],
                        writer: str = "bench.recognizer") -> None:
    """Replace each ``<!-- name (written by WRITER) -->`` ... ``<!-- /name -->`` block
    of ``readme`` (``writer``: the bench that owns the blocks).

    Every block must already be there exactly once: a README edited by hand
    into another shape fails loudly instead of growing a second copy.
    """
    text = readme.read_text()
    for name, rows in tables.items():
        begin, end = f"<!-- {name} (written by {writer}) -->", f"<!-- /{name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"{readme} must hold exactly one {begin} ... {end} block")
        block = "\n".join([begin, *rows, end])
        text = pattern.sub(lambda _: block, text)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)


if __name__ == "__main__":
    raise SystemExit(main())
