"""Prepare the offline model pack once, at install or before first start.

Converts dlib's ResNet weights (and makes its int8 form, calibrated on LFW
DevTrain faces: ``pipelines.install.quantize``) and both BlazeFace TFLite
models into verified ONNX models under the models directory, makes the
float16 copy of each embedder for the CUDA provider
(``pipelines.install.fp16``), and (outside the permissive pack)
fetches MobileFaceNet from its pinned npm package and converts it into ONNX
with a dynamic batch, and likewise MobileFaceNet-512 (``mfn512``) and the
``fr_liveness`` anti-spoofing model from ``faceplugin-face-recognition-js``.
``make install`` runs this (``python -m pipelines.install.prepare``), so Serve
replicas start by loading files rather than converting (or fetching)
concurrently, and never need TensorFlow to detect.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from configs.settings import Runtime, Settings
from pipelines.install import npm_assets
from pipelines.models import ModelContext

log = logging.getLogger("facefleet.prepare")


def make_fp16(emb: Any, ctx: ModelContext) -> None:
    """Make (and check) the float16 copy of a loaded embedder's float32 file, so that a
    GPU replica with ``runtime.precision: fp16`` finds it; a failure only logs."""
    from pipelines.model_check import fp16_path, open_fp16

    ok = open_fp16(emb.onnx_path, emb.name, ctx.runtime) is not None
    log.info("%s float16 form %s", emb.name,
             f"ready at {fp16_path(emb.onnx_path)}" if ok else "not made: see the warning above")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = Settings()
    ctx = ModelContext(models_dir=s.models_path, deepface_home=s.deepface_home,
                       runtime=Runtime(device="cpu", precision="int8"))
    ctx.models_dir.mkdir(parents=True, exist_ok=True)
    from pipelines.embed_dlib import DlibOnnxEmbedder

    emb = DlibOnnxEmbedder(ctx)
    emb.load()
    log.info("dlib ResNet ONNX model ready at %s (int8 form %s)", emb.onnx_path,
             "ready" if emb.precision == "int8" else "not made: see the warning above")
    make_fp16(emb, ctx)
    from pipelines.blazeface import FULL, SHORT, BlazeFaceOnnxDetector

    for spec in (SHORT, FULL):
        det = BlazeFaceOnnxDetector(ctx, spec)
        det.load()
        log.info("%s ONNX model ready at %s", spec.name, det.onnx_path)
    if s.model_pack == "permissive":
        log.info("model_pack is permissive: MobileFaceNet is not fetched")
        return 0
    from pipelines import embed_mobilefacenet

    npm_assets.fetch(embed_mobilefacenet.ASSET, ctx.models_dir)
    mfn = embed_mobilefacenet.MobileFaceNetEmbedder(ctx)
    mfn.load()
    log.info("MobileFaceNet ONNX model ready at %s", mfn.onnx_path)
    make_fp16(mfn, ctx)
    from pipelines import antispoof_fr, embed_mfn512

    npm_assets.fetch(embed_mfn512.ASSET, ctx.models_dir)
    mfn512 = embed_mfn512.Mfn512Embedder(ctx)
    mfn512.load()
    log.info("MobileFaceNet-512 ONNX model ready at %s", mfn512.onnx_path)
    make_fp16(mfn512, ctx)
    npm_assets.fetch(antispoof_fr.ASSET, ctx.models_dir)
    live = antispoof_fr.FrLivenessModel(ctx)
    live.load()
    log.info("fr_liveness ONNX model ready at %s", live.onnx_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
