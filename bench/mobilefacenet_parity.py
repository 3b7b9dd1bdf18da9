"""Parity of the converted MobileFaceNet ONNX model with the shipped TFLite file.

Every LFW dev image goes through the service's own detection stage (BlazeFace,
dlib's 5-point shape, the 112 px ``warp5`` chip); the largest face's chip is
embedded by the ONNX model facefleet serves (dynamic batch) and by the
``.tflite`` file from the npm package (LiteRT, two faces per call: its batch
is fixed at 2). Reports the min / mean cosine of the raw 192-d outputs, how
many fall below 0.9999, the largest absolute difference and the worst images,
and writes ``bench/results/mobilefacenet_parity.md``.

    .venv/bin/python -m bench.mobilefacenet_parity [--limit N]

About 3 minutes on 2 cores for all 4,992 images.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import numpy as np

from configs.settings import ImageLimits
from bench.dlib_onnx_parity import RESULTS, cosine_rows, lfw_paths

CHUNK = 64

log = logging.getLogger("bench.mobilefacenet_parity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="evenly spaced subset of images")
    parser.add_argument("--out", type=Path, default=RESULTS / "mobilefacenet_parity.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import onnxruntime

    from pipelines.install import tflite_onnx
    from pipelines.embed_mobilefacenet import CHIP, MobileFaceNetEmbedder, preprocess
    from pipelines.models import ModelContext
    from pipelines.stages import DetectionStage, DetectRequest

    ctx = ModelContext(models_dir=Path("data/models"))
    mfn = MobileFaceNetEmbedder(ctx)
    mfn.load()
    detection = DetectionStage(ctx, ImageLimits())
    paths = lfw_paths(args.limit)

    names: list[str] = []
    cos_all, diff_all = [], []
    no_face = 0
    t_onnx = t_tflite = 0.0
    t_start = time.perf_counter()
    for start in range(0, len(paths), CHUNK):
        part = paths[start:start + CHUNK]
        dets = detection.run([DetectRequest(p.read_bytes(), "blazeface", max_faces=1,
                                            chip_specs=(CHIP,)) for p in part])
        chips, chip_names = [], []
        for p, d in zip(part, dets, strict=True):
            if isinstance(d, Exception) or not d.faces:
                no_face += 1
                continue
            chips.append(d.chips[CHIP.key][0])
            chip_names.append(p.name)
        if not chips:
            continue
        x = np.stack(chips)
        t0 = time.perf_counter()
        got = mfn.embed_raw(x).astype(np.float64)
        t1 = time.perf_counter()
        pre = preprocess(x)
        if len(pre) % 2:  # the .tflite takes exactly two faces: pad with a copy
            pre = np.concatenate([pre, pre[-1:]])
        ref = np.concatenate([tflite_onnx.tflite_outputs(mfn.tflite_path, pre[i:i + 2])
                              ["embeddings"] for i in range(0, len(pre), 2)])[:len(x)]
        ref = ref.astype(np.float64)
        t_tflite += time.perf_counter() - t1
        t_onnx += t1 - t0
        cos_all.append(np.sum(got * ref, axis=1)
                       / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))
        diff_all.append(np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1))
        names.extend(chip_names)
        if (start // CHUNK) % 10 == 9:
            log.info("%d / %d images", start + len(part), len(paths))
    wall = time.perf_counter() - t_start

    cos, diff = np.concatenate(cos_all), np.concatenate(diff_all)
    n = len(cos)
    worst = np.argsort(cos)[:5]
    lines = [
        "# MobileFaceNet: ONNX (served) vs the shipped TFLite file on LFW dev",
        "",
        f"Images: {len(paths)} from `../shared/faces/lfw-dev/images`; chips: {n} (largest "
        f"BlazeFace face, dlib 5-point shape, `warp5` 112 px, the service's own detection "
        f"stage); no face found: {no_face}. Raw 192-d outputs, before L2 normalisation.",
        "",
        *cosine_rows(cos),
        f"| max abs diff / max abs output, per chip: worst | {diff.max():.2e} |",
        f"| ONNX ms / face (batch {CHUNK}) | {1000 * t_onnx / n:.1f} |",
        f"| TFLite ms / face (batch 2) | {1000 * t_tflite / n:.1f} |",
        f"| wall time | {wall:.0f} s |",
        "",
        "Worst chips (1 - cosine): " + ", ".join(
            f"`{names[i]}` {1 - cos[i]:.1e}" for i in worst),
        "",
        f"Versions: onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; shared machine, timings indicative.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
