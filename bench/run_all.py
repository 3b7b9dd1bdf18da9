"""Runs every benchmark in turn (``make bench``); each writes its table under bench/results/.

    .venv/bin/python -m bench.run_all [--skip head_to_head,index_scale]

The head-to-head run installs DeepFace's server in its own virtual environment
(about 2.6 GB, once) and takes about 10 minutes; the 1M-face index run about 5;
the pgvector run (100k and 1M faces, both backends, HNSW builds) about 25.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHES = ["box_calibration", "accuracy", "detector_recall", "recognizer", "stage_throughput", "embedder_throughput", "quantized",
           "attribute_throughput", "serve_throughput", "event_loop", "startup", "index_scale",
           "identify_before_after",
           "pgvector_scale", "dlib_onnx_parity", "mobilefacenet_parity", "head_to_head", "vs_deepface", "fuzz", "soak"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--skip", default="", help="comma-separated names to skip")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    failed = []
    for name in BENCHES:
        if name in skip:
            continue
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        if rc:
            failed.append(name)
    if failed:
        sys.stderr.write(f"benchmarks that failed: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
