"""facefleet's ``/v1/embed`` against DeepFace's own ``/represent``, from a plain client.

    nice .venv/bin/python -m bench.vs_deepface [--photos lfw:300] [--concurrency 16]

What a user who benchmarks both services with their own client sees: one
closed-loop HTTP client process (``bench.http_load``: N threads, one JSON
request with a base64 photo in flight each, keep-alive), the same photos, the
same machine, one server after the other in one run. DeepFace 0.0.103 is built
as ``bench.head_to_head`` builds it (its own virtual environment, its Flask app
under gunicorn with one worker per core, model ``Dlib``), once with its
``opencv`` detector and once with ``mediapipe`` (BlazeFace, the family of
facefleet's default detector), so detector choice and architecture show
apart. facefleet runs ``serve_config.yaml`` (separate deployments) and the
fused topology, each with its default embedder and with ``dlib`` (the network
DeepFace's ``Dlib`` wraps). Writes bench/results/vs_deepface.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from bench import http_load
from bench.machine import cpu_line
from bench.head_to_head import (DEEPFACE_MEDIAPIPE_REQUIREMENTS, DEEPFACE_REQUIREMENTS,
                                DEFAULT_VENV,
                                ensure_deepface, start_deepface, start_facefleet, stop_tree,
                                wait_ready)
from deployments.local import free_port

OUT = Path(__file__).parent / "results" / "vs_deepface.md"


def _measure(base: str, path: str, photos: str, conc: int, extra: dict) -> dict:
    # data: URIs for both (DeepFace reads bare base64 as a file path; facefleet takes both)
    http_load.run(base, path, photos, min(conc, 4), requests=2 * conc, extra=extra,
                  data_uri=True)  # warm up
    res = http_load.run(base, path, photos, conc, extra=extra, data_uri=True)
    if res["ok"] < res["requests"]:
        print(f"warning: {res['requests'] - res['ok']} answers were not 200: {res['status']}",
              flush=True)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", default="lfw:300")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--deepface-detectors", default="opencv,mediapipe")
    p.add_argument("--topologies", default="separate,fused")
    p.add_argument("--embedders", default="default,dlib",
                   help="facefleet's embedders per topology ('default': the pack's)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--start-timeout", type=float, default=900)
    a = p.parse_args()
    rows: list[tuple[str, str, dict]] = []
    for det in a.deepface_detectors.split(","):
        # mediapipe pins an older TensorFlow: its own venv beside the default one
        venv = a.venv if det != "mediapipe" else a.venv.with_name(a.venv.name + "-mediapipe")
        home = ensure_deepface(venv, DEEPFACE_MEDIAPIPE_REQUIREMENTS if det == "mediapipe"
                               else DEEPFACE_REQUIREMENTS)
        port = free_port()
        proc = start_deepface(venv, home, port, os.cpu_count() or 1, [det])
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/", proc, a.start_timeout)
            res = _measure(base, "/represent", a.photos, a.concurrency,
                           {"model_name": "Dlib", "detector_backend": det,
                            "enforce_detection": False})
            rows.append(("DeepFace", f"Dlib, {det}", res))
            print(rows[-1], flush=True)
        finally:
            stop_tree(proc)
    for topo in a.topologies.split(","):
        port = free_port()
        with tempfile.TemporaryDirectory() as data:
            proc = start_facefleet(port, Path(data), topo)
            base = f"http://127.0.0.1:{port}"
            try:
                wait_ready(base + "/ready", proc, a.start_timeout)
                for name in a.embedders.split(","):
                    model = None if name == "default" else name
                    extra = {"enforce_detection": False, **({"model": model} if model else {})}
                    res = _measure(base, "/v1/embed", a.photos, a.concurrency, extra)
                    rows.append(("facefleet", f"{topo}, {model or 'default embedder'}, "
                                 "blazeface", res))
                    print(rows[-1], flush=True)
            finally:
                stop_tree(proc)
    write(a, rows)
    return 0 if all(r["ok"] == r["requests"] for _, _, r in rows) else 1


def write(a, rows: list[tuple[str, str, dict]]) -> None:
    df = {cfg: r["req_s"] for sys_, cfg, r in rows if sys_ == "DeepFace"}
    lines = [f"`python -m bench.vs_deepface --photos {a.photos} --concurrency "
             f"{a.concurrency}`: one closed-loop client process, one JSON request with a "
             f"base64 photo in flight per thread, keep-alive; {os.cpu_count()} cores "
             f"({platform.machine()}), load average at the end {os.getloadavg()[0]:.2f}; "
             "one server after the other in one run.", "", cpu_line(), "",
             "| system | configuration | images/s | p50 ms | p99 ms | non-200 | "
             + " | ".join(f"vs DeepFace {c}" for c in df) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(df)]
    for sys_, cfg, r in rows:
        bad = r["requests"] - r["ok"]
        ratios = " | ".join(f"{r['req_s'] / v:.2f}x" for v in df.values())
        lines.append(f"| {sys_} | {cfg} | {r['req_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {bad} | {ratios} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
