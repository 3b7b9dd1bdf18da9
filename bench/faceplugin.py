"""The faceplugin models: parity of the converted copies, and liveness on genuine faces.

    .venv/bin/python -m bench.faceplugin [--limit N] [--cache /tmp/faceplugin.npz]

On every LFW dev photo (4,992; the default detector, the face nearest the
centre):

- parity: ``mfn512`` as served (the dynamic-batch copy with its tiny weights
  zeroed, one face per call) against the shipped ``fr_feature.onnx`` at batch
  1, and the ``fr_liveness`` copy, in batches of 32, against the shipped
  ``fr_liveness.onnx`` at batch 1, both under the service's session options:
  worst cosine and worst absolute difference of the raw outputs;
- liveness on genuine faces: the share that ``fr_liveness`` calls a spoof at
  each threshold on p(live), fed BGR (what the service does) and RGB (what the
  package's JavaScript does), on LFW dev and on the deepface photos (largest
  face of each), and the threshold that rejects at most 5% of genuine LFW dev
  faces;
- the three smoke-test frames of ``spoof/`` (turned upright first): p(live)
  and the verdict at the configured threshold.

Attack detection is measured on nothing else: no attack data set is available.
Writes ``bench/results/faceplugin.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.evaluate import FACES, LFW, Embedding
from configs.settings import Runtime, Settings
from pipelines import antispoof_fr, embed_mfn512
from pipelines.install import npm_assets
from pipelines.models import ModelContext

OUT = Path(__file__).parent / "results" / "faceplugin.md"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
MAX_GENUINE_REJECTS = 0.05
log = logging.getLogger("bench.faceplugin")


def shipped_session(path: Path):
    """The shipped file under the service's own session options (one thread, CPU), so
    that a difference can only come from the conversion."""
    from pipelines.runtime import onnx_session

    return onnx_session(str(path), Runtime())


def upright_spoof_frames() -> dict[str, bytes]:
    """The smoke-test frames as PNG, upright: their pixels lie on their side (an EXIF
    orientation tag says so), so they are read as stored and turned 90 degrees clockwise."""
    import cv2

    out = {}
    for p in sorted((FACES / "spoof").glob("*.jpg")):
        raw = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        img = cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE)
        out[p.stem] = cv2.imencode(".png", img)[1].tobytes()
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)  # float32 rounding would show 1 - 1e-7
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=0, help="first N LFW dev photos only (0: all)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the outputs in this .npz and reuse them on a rerun")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = Settings()
    ctx = ModelContext(models_dir=s.models_path)
    paths = sorted(str(x) for x in (LFW / "images").glob("*/*.jpg"))
    if a.limit:
        paths = paths[:a.limit]
    emb = embed_mfn512.Mfn512Embedder(ctx)
    live = antispoof_fr.FrLivenessModel(ctx)
    specs = (embed_mfn512.CHIP, antispoof_fr.CHIP)
    e = Embedding(s.default_detector, "mfn512", ctx)
    t0 = time.perf_counter()
    if a.cache is not None and a.cache.is_file():
        z = dict(np.load(a.cache))
    else:
        ship_feat = shipped_session(emb.source_path if emb.source_path.is_file()
                                    else npm_assets.fetch(embed_mfn512.ASSET, ctx.models_dir))
        ship_live = shipped_session(live.source_path)
        live.load()
        served_live = live.session
        keys = ("feat", "feat_ship", "live", "live_ship", "live_rgb")
        acc: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for i in range(0, len(paths), 32):
            found = e.chips(paths[i:i + 32], specs)
            keep = [c for c in found.values() if c is not None]
            if not keep:
                continue
            warp = np.stack([c[embed_mfn512.CHIP.key] for c in keep])
            box = np.stack([c[antispoof_fr.CHIP.key] for c in keep])
            acc["feat"].append(emb.embed_raw(warp))
            x = embed_mfn512.preprocess(warp)
            acc["feat_ship"].append(np.concatenate(
                [ship_feat.run(None, {"input": x[j:j + 1]})[0] for j in range(len(x))]))
            xb = antispoof_fr.preprocess(box)
            acc["live"].append(served_live.run(None, {"input": xb})[0])
            acc["live_ship"].append(np.concatenate(
                [ship_live.run(None, {"input": xb[j:j + 1]})[0] for j in range(len(xb))]))
            xr = np.ascontiguousarray(box.transpose(0, 3, 1, 2), dtype=np.float32)  # RGB
            acc["live_rgb"].append(served_live.run(None, {"input": xr})[0])
            if i % 640 == 0:
                log.info("%d / %d photos (%.0f s)", i + 32, len(paths), time.perf_counter() - t0)
        z = {k: np.concatenate(v) for k, v in acc.items()}
        if a.cache is not None:
            np.savez(a.cache, **z)
    took = time.perf_counter() - t0
    n = len(z["feat"])
    cos = cosine(z["feat"], z["feat_ship"])
    feat_diff = float(np.abs(z["feat"] - z["feat_ship"]).max())
    identical = {"mfn512": np.array_equal(z["feat"], z["feat_ship"]),
                 "fr_liveness": np.array_equal(z["live"], z["live_ship"])}
    live_diff = float(np.abs(z["live"] - z["live_ship"]).max())
    p_bgr = antispoof_fr.softmax(z["live"])[:, 0]
    p_rgb = antispoof_fr.softmax(z["live_rgb"])[:, 0]

    # deepface photos: the largest face of each
    df = sorted(x for x in (FACES / "deepface").iterdir() if x.suffix.lower() in (".jpg", ".png"))
    from pipelines.stages import DetectRequest

    dets = e.det.run([DetectRequest(x.read_bytes(), s.default_detector, max_faces=1,
                                    chip_specs=(antispoof_fr.CHIP,)) for x in df])
    live.load()
    df_box = np.stack([r.chips[antispoof_fr.CHIP.key][0] for r in dets
                       if not isinstance(r, Exception) and r.faces])
    df_bgr = live.live_probability(df_box)
    df_rgb = antispoof_fr.softmax(live.session.run(None, {"input": np.ascontiguousarray(
        df_box.transpose(0, 3, 1, 2), dtype=np.float32)})[0])[:, 0]

    # the threshold: the largest on a 0.01 grid that rejects at most 5% of genuine LFW faces
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    ok = [t for t in grid if np.mean(p_bgr < t) <= MAX_GENUINE_REJECTS]
    chosen = float(max(ok)) if ok else float("nan")

    frames = upright_spoof_frames()
    fr = e.det.run([DetectRequest(b, s.default_detector, max_faces=1,
                                  chip_specs=(antispoof_fr.CHIP,)) for b in frames.values()])
    smoke = {}
    for name, r in zip(frames, fr, strict=True):
        smoke[name] = (float(live.live_probability(r.chips[antispoof_fr.CHIP.key][:1])[0])
                       if not isinstance(r, Exception) and r.faces else None)

    lines = [
        "# faceplugin models: parity of the converted copies, liveness on genuine faces",
        "",
        f"`.venv/bin/python -m bench.faceplugin`: {len(paths)} LFW dev photos, detector "
        f"`{s.default_detector}`, {n} faces ({time.strftime('%Y-%m-%d')}, {took:.0f} s).",
        "",
        "## Parity with the shipped files",
        "",
        "| model | compared | faces | worst cosine | worst absolute difference | "
        "bit-identical |",
        "|---|---|---|---|---|---|",
        f"| `mfn512` (fr_feature.onnx) | raw 512-d output as served (copy, tiny weights "
        f"zeroed) vs shipped, batch 1 | {n} | {cos.min():.9f} | {feat_diff:.3g} | "
        f"{'yes' if identical['mfn512'] else 'no'} |",
        f"| `fr_liveness` | logits, copy in batches of 32 vs shipped at batch 1 | {n} | "
        f"{cosine(z['live'], z['live_ship']).min():.9f} | {live_diff:.3g} | "
        f"{'yes' if identical['fr_liveness'] else 'no'} |",
        "",
        "## Liveness: genuine faces called a spoof (p(live) below the threshold)",
        "",
        "| genuine faces | input | " + " | ".join(f"< {t:g}" for t in THRESHOLDS)
        + f" | < {chosen:g} (chosen) |",
        "|---|---|" + "---|" * (len(THRESHOLDS) + 1),
    ]
    for label, arr in ((f"LFW dev ({n})", {"BGR": p_bgr, "RGB (the package's JS)": p_rgb}),
                       (f"deepface ({len(df_box)})", {"BGR": df_bgr, "RGB (the package's JS)":
                                                      df_rgb})):
        for how, q in arr.items():
            lines.append(f"| {label} | {how} | "
                         + " | ".join(f"{np.mean(q < t):.1%}" for t in THRESHOLDS)
                         + f" | {np.mean(q < chosen):.1%} |")
    lines += [
        "",
        f"Chosen threshold: the largest on a 0.01 grid rejecting at most "
        f"{MAX_GENUINE_REJECTS:.0%} of genuine LFW dev faces (BGR): **{chosen:g}** "
        f"(configured: `LIVE_THRESHOLD = {antispoof_fr.LIVE_THRESHOLD:g}`). Median p(live) on "
        f"LFW dev {np.median(p_bgr):.3f}, deepface {np.median(df_bgr):.3f}.",
        "",
        "## Smoke-test frames (`spoof/`, turned upright; F = attack, T = live)",
        "",
        "| frame | p(live) | verdict at the configured threshold |",
        "|---|---|---|",
    ]
    for name, q in smoke.items():
        verdict = "no face" if q is None else (
            "real" if q >= antispoof_fr.LIVE_THRESHOLD else "spoof")
        lines.append(f"| {name} | {'-' if q is None else f'{q:.4f}'} | {verdict} |")
    lines += [
        "",
        "Three frames measure nothing beyond a smoke test: attack detection is unmeasured.",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; 1-min load average at "
        f"the end {os.getloadavg()[0]:.1f}.",
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
