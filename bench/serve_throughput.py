"""Throughput of /v1/embed through the real Serve app, beside the in-process ceiling.

    .venv/bin/python -m bench.serve_throughput [--topologies separate,fused]
                                               [--concurrency 1,8,32] [--requests 96]

For each topology (separate Detector/Embedder/Analyzer deployments from
serve_config.yaml, or all stages fused into the Ingress replica from
configs/serve_config.fused.yaml) it starts the service on a local Ray instance,
drives /v1/embed with N concurrent clients over two photo sets (LFW 250 px
portraits, and the large camera photos of deepface/), and reports images/s,
faces/s, p50/p99 latency and the batch sizes the deployments saw. The same
images run through the stages in one process give the ceiling. Writes
bench/results/serve_throughput.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
from pathlib import Path

import httpx
import numpy as np

from bench.evaluate import FACES
from deployments import local

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "serve_throughput.md"


def photo_sets() -> dict[str, list[bytes]]:
    lfw = sorted((FACES / "lfw-dev" / "images").glob("*/*.jpg"))[::40][:96]
    cams = sorted(p for p in (FACES / "deepface").glob("*.jpg"))[:48]
    return {"lfw": [p.read_bytes() for p in lfw], "camera": [p.read_bytes() for p in cams]}


def in_process(images: list[bytes], batch: int = 16) -> tuple[float, float]:
    """Images/s and faces/s of detect+embed in this process (the ceiling on one core)."""
    from configs.settings import Settings
    from pipelines.models import ModelContext
    from pipelines.runtime import RuntimeConfig, limit_native_threads
    from pipelines.stages import (DetectionStage, DetectRequest, EmbeddingStage, EmbedRequest,
                                  ImageLimitsCfg)

    limit_native_threads(1)
    s = Settings()
    ctx = ModelContext(models_dir=s.models_path, runtime=RuntimeConfig(),
                       fusion_weights=s.fusion_weights)
    det = DetectionStage(ctx, ImageLimitsCfg(s.images.max_bytes, s.images.max_pixels,
                                             s.images.work_max_side))
    emb = EmbeddingStage(ctx, flip_average=s.flip_average)
    specs = emb.model(s.default_embedder).chip_specs
    det.run([DetectRequest(images[0], s.default_detector, chip_specs=specs)])  # warm up
    t0 = time.perf_counter()
    faces = 0
    for i in range(0, len(images), batch):
        res = det.run([DetectRequest(d, s.default_detector, chip_specs=specs)
                       for d in images[i:i + batch]])
        reqs = [EmbedRequest(s.default_embedder, {c.key: r.chips[c.key] for c in specs})
                for r in res if not isinstance(r, Exception)]
        faces += sum(len(v) for v in emb.run(reqs))
    el = time.perf_counter() - t0
    return len(images) / el, faces / el


async def drive(base: str, images: list[str], conc: int, total: int,
                model: str | None = None) -> dict:
    lat: list[float] = []
    faces = 0
    errors = 0
    queue = list(range(total))

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def worker() -> None:
            nonlocal faces, errors
            while queue:
                i = queue.pop()
                t = time.perf_counter()
                body = {"img": images[i % len(images)], "enforce_detection": False}
                if model:
                    body["model"] = model
                r = await client.post("/v1/embed", json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code == 200:
                    faces += len(r.json()["faces"])
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        el = time.perf_counter() - t0
    return {"img_s": total / el, "faces_s": faces / el, "p50": statistics.median(lat) * 1000,
            "p99": float(np.percentile(lat, 99)) * 1000, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topologies", default="separate,fused")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--models", default="dlib,dlib+mobilefacenet,mobilefacenet,dlib-native",
                   help="embedders compared through /v1/embed (separate topology, LFW); "
                   "ratios are against the first")
    a = p.parse_args()
    sets = photo_sets()
    ceiling = {name: in_process(imgs) for name, imgs in sets.items()}
    rows = []
    model_rows = []
    for topo in a.topologies.split(","):
        port = local.free_port()
        path = REPO / ("serve_config.yaml" if topo == "separate"
                       else "configs/serve_config.fused.yaml")
        cfg = local.load_config(path, {"topology": topo, "gallery": False}, port)
        local.start(cfg, num_cpus=2)
        base = f"http://127.0.0.1:{port}"
        try:
            for name, imgs in sets.items():
                b64 = [base64.b64encode(d).decode() for d in imgs]
                asyncio.run(drive(base, b64, 2, 8))  # warm up
                for conc in map(int, a.concurrency.split(",")):
                    before = httpx.get(base + "/v1/stats", timeout=30).json()["batch_sizes"]
                    total = a.requests if name == "lfw" else max(a.requests // 2, conc)
                    res = asyncio.run(drive(base, b64, conc, total))
                    after = httpx.get(base + "/v1/stats", timeout=30).json()["batch_sizes"]
                    res["batches"] = _batch_delta(before, after)
                    res["ceiling"] = ceiling[name][0]
                    rows.append((topo, name, conc, res))
                    print(topo, name, conc, res, flush=True)
            if topo == "separate":
                b64 = [base64.b64encode(d).decode() for d in sets["lfw"]]
                for model in filter(None, a.models.split(",")):
                    asyncio.run(drive(base, b64, 2, 4, model))  # loads the model
                    for conc in (1, 8):
                        res = asyncio.run(drive(base, b64, conc, 48 if conc > 1 else 24, model))
                        model_rows.append((model, conc, res))
                        print(model, conc, res, flush=True)
        finally:
            local.stop()
    lines = ["In-process ceiling (one process, detect+embed, batches of 16): " + ", ".join(
        f"{k}: {v[0]:.1f} images/s ({v[1]:.1f} faces/s)" for k, v in ceiling.items()), "",
        "| topology | photos | clients | images/s | faces/s | p50 ms | p99 ms | vs in-process "
        "| errors | mean batch (detect / embed) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for topo, name, conc, r in rows:
        lines.append(f"| {topo} | {name} | {conc} | {r['img_s']:.1f} | {r['faces_s']:.1f} "
                     f"| {r['p50']:.0f} | {r['p99']:.0f} | {r['img_s'] / r['ceiling']:.2f} "
                     f"| {r['errors']} | {r['batches']} |")
    if model_rows:
        base = {c: r for m, c, r in model_rows if m == model_rows[0][0]}
        lines += ["", "Embedders through `/v1/embed` (separate topology, LFW photos, mirror "
                  "averaging as configured per model; measured side by side in one run; the "
                  f"ratios divide by `{model_rows[0][0]}` at the same concurrency):", "",
                  "| model | clients | images/s | p50 ms | p99 ms | time per image vs "
                  f"{model_rows[0][0]} (1 / images/s) | p50 vs {model_rows[0][0]} |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {c} | {r['img_s']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} "
                  f"| {base[c]['img_s'] / r['img_s']:.2f}x | {r['p50'] / base[c]['p50']:.2f}x |"
                  for m, c, r in model_rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _batch_delta(before: dict, after: dict) -> str:
    out = []
    for method in ("detect", "embed"):
        for dep, methods in after.items():
            if method not in methods:
                continue
            b = {int(k): v for k, v in before.get(dep, {}).get(method, {}).items()}
            a = {int(k): v for k, v in methods[method].items()}
            d = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0}
            n = sum(d.values())
            out.append(f"{sum(k * v for k, v in d.items()) / n:.1f}" if n else "-")
            break
    return " / ".join(out)


if __name__ == "__main__":
    main()
