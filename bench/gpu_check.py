"""GPU check: the detector and embedders on CUDA, against their CPU outputs.

    python3 -m bench.gpu_check [--embedders dlib,mobilefacenet] [--batches 1,64,256]
                               [--venv .venv-gpu] [--pip-args "..."] [--no-venv]

1. ``nvidia-smi`` must list a GPU; if not, the check says so and exits 2
   before installing anything.
2. It builds a fresh virtual environment (``--venv``, recreated each time),
   installs the project with the ``gpu`` extra, swaps the CPU wheels that the
   GPU ones replace (onnxruntime, faiss-cpu), and runs itself again inside
   with ``--no-venv``. ``--no-venv`` alone runs in the current environment
   (the GPU image, say); ``--pip-args "--no-index --find-links /wheels"``
   installs from a local wheel folder on a node without a registry.
3. onnxruntime must offer ``CUDAExecutionProvider`` and every session must
   really run on it (onnxruntime otherwise falls back to the CPU quietly):
   exit 3 if not.
4. The detector (``--detector``, default ``blazeface``) and each embedder
   named in ``--embedders`` are built from the registry twice, on CUDA and on
   the CPU. At each batch size of LFW photos (and chips cut from them) it
   times the CUDA run (images/s, faces/s), times the CPU run beside it, and
   compares the outputs: the same faces, boxes within 1 px, scores within
   1e-3, embeddings at cosine >= 0.9999. It reads the process's GPU memory
   from nvidia-smi after each model, and checks faiss-gpu against faiss-cpu's
   exact search on random vectors.
   Beside each embedder's float32 row goes a float16 row: the model's float16
   copy (``pipelines/install/fp16.py``, made if missing) on the CUDA provider,
   as ``runtime.precision: fp16`` runs it, timed the same way and compared with
   the CPU float32 vectors. "fp16 keeps parity" needs cosine >= 0.999 on every
   face at every batch; it is reported (the evidence for setting a model's
   ``EmbedderModel.has_fp16``) but never changes the exit code, float32's.
5. It writes bench/results/gpu_check.md and exits 0 only when every check
   passed (1 when a parity check failed, 4 when the install failed).

``--cpu-rehearsal`` runs steps 3-4 with the CPU on both sides to try the
script itself on a machine without a GPU; it measures nothing about GPUs,
says so, and writes no results file. Its float16 rows run the same float16
file on OpenVINO's CPU engine (in float16 where the CPU has AVX-512 FP16 /
AMX-FP16, else in float32 from the float16 weights; the table says which),
since onnxruntime's CPU provider computes float16 files in float32. Only the
standard library is imported
before the environment is known to be right.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "gpu_check.md"
#: GPU wheel -> the CPU wheel of the same Python module, which it replaces
REPLACES = {"onnxruntime-gpu": "onnxruntime", "faiss-gpu": "faiss-cpu"}
BOX_PX, SCORE, COSINE = 1.0, 1e-3, 0.9999

EXIT_PARITY, EXIT_NO_GPU, EXIT_NO_CUDA, EXIT_INSTALL = 1, 2, 3, 4


def say(msg: str) -> None:
    print(msg, flush=True)


def nvidia_smi(*query: str) -> str | None:
    """nvidia-smi's output for the arguments, or None when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, *query], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def gpu_present() -> tuple[bool, str]:
    """(True, GPU description) when nvidia-smi lists a GPU, else (False, why not)."""
    if shutil.which("nvidia-smi") is None:
        return False, "nvidia-smi is not installed (no NVIDIA driver on this machine)"
    out = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if not out:
        return False, "nvidia-smi found no usable GPU (it failed or listed none)"
    return True, out


def gpu_memory_mib() -> str:
    """GPU memory this process holds (nvidia-smi per process; the device total as fallback)."""
    apps = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    for line in (apps or "").splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return f"{int(used.strip()):,} MiB"
    total = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits")
    return f"{total.splitlines()[0].strip()} MiB on the device" if total else "n/a"


def gpu_extra() -> list[str]:
    """The ``gpu`` extra's requirements, as pinned in pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import re

        text = (REPO / "pyproject.toml").read_text()
        m = re.search(r'^gpu\s*=\s*\[(.*?)\]', text, re.M | re.S)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["gpu"]


def build_venv(venv: Path, pip_args: list[str]) -> Path:
    """A fresh venv with the project and its gpu extra; returns its python."""
    py = venv / "bin" / "python"
    extra = gpu_extra()
    gpu_names = [r.split("[")[0].split("=")[0].strip() for r in extra]
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(py), "-m", "pip", "install", "--quiet", *pip_args, "--upgrade", "pip"],
        [str(py), "-m", "pip", "install", "--quiet", *pip_args, "-e", f"{REPO}[gpu]"],
        # the GPU wheels install the same modules as the CPU ones: remove the
        # CPU wheels, then lay the GPU ones down again over what that removed
        [str(py), "-m", "pip", "uninstall", "--yes",
         *[REPLACES[n] for n in gpu_names if n in REPLACES]],
        [str(py), "-m", "pip", "install", "--quiet", *pip_args, "--no-deps",
         "--force-reinstall", *extra],
    ]
    for cmd in steps:
        say("$ " + " ".join(shlex.quote(c) for c in cmd))
        if subprocess.call(cmd, cwd=REPO) != 0:
            raise RuntimeError(f"failed: {' '.join(cmd)}")
    return py


# ---------------------------------------------------------------- measurement


def _timed(fn, seconds: float) -> tuple[float, object]:
    """Seconds per call of ``fn`` (after one warm-up call) and its last result."""
    out = fn()
    n, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return dt / n, out


def _photos(n: int) -> list[bytes]:
    from bench.evaluate import LFW

    paths = sorted((LFW / "images").glob("*/*.jpg"))
    step = max(len(paths) // n, 1)
    return [p.read_bytes() for p in paths[::step][:n]]


def _compare_faces(got: list, want: list) -> tuple[bool, float, float, int]:
    """(same faces, max box/landmark diff px, max score diff, faces) of two detections."""
    import numpy as np

    same, box, score, n = True, 0.0, 0.0, 0
    for a, b in zip(got, want, strict=True):
        if len(a) != len(b):
            same = False
            continue
        for fa, fb in zip(a, b, strict=True):
            n += 1
            box = max(box, abs(fa.box.x - fb.box.x), abs(fa.box.y - fb.box.y),
                      abs(fa.box.w - fb.box.w), abs(fa.box.h - fb.box.h),
                      float(np.nanmax(np.abs(fa.landmarks - fb.landmarks))))
            score = max(score, abs(fa.confidence - fb.confidence))
    return same, box, score, n


def measure(detector: str, embedders: list[str], batches: list[int], seconds: float,
            device: str) -> tuple[list[str], bool]:
    """Markdown lines of the results and whether every parity check passed."""
    import numpy as np

    from configs.settings import Settings
    from pipelines.decode import decode_image
    from pipelines.errors import FacefleetError
    from pipelines.models import ModelContext, ModelTask
    from pipelines.registry import build
    from configs.settings import Runtime
    from pipelines.model_check import FP16_MIN_COSINE
    from pipelines.stages import DetectionStage, DetectRequest

    s = Settings()
    limits = s.images
    # the CPU side is the float32 reference on onnxruntime, whatever runtime.precision's
    # auto would pick on this host (bf16 on OpenVINO on an AMX CPU)
    ctx_of = lambda dev, precision="fp32": ModelContext(  # noqa: E731
        models_dir=s.models_path, deepface_home=s.deepface_home,
        runtime=Runtime(device=dev, intra_op_threads=1, precision=precision,
                        engine="onnxruntime"))
    on, cpu = ctx_of(device), ctx_of("cpu")
    data = _photos(max(batches))
    images = [decode_image(d, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                           work_max_side=limits.work_max_side).pixels for d in data]
    ok = True
    lines = [f"Detector `{detector}` on {len(images)} LFW photos (250 px): letterbox, network "
             "and decoding, images already decoded. CPU: one intra-op thread.", "",
             "| batch | images/s | faces/s | CPU images/s | speed-up | same faces | max box diff px "
             "| max score diff | GPU memory |", "|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    dev_det = build(ModelTask.DETECT, detector, on)
    cpu_det = build(ModelTask.DETECT, detector, cpu)
    dev_det.load()  # a 'cuda' session that fell back to the CPU raises Unavailable here
    cpu_det.load()
    for b in batches:
        batch = [images[i % len(images)] for i in range(b)]
        t_dev, got = _timed(lambda: dev_det.detect(batch), seconds)
        t_cpu, want = _timed(lambda: cpu_det.detect(batch), seconds)
        same, box, score, n = _compare_faces(got, want)
        passed = same and box <= BOX_PX and score <= SCORE
        ok &= passed
        lines.append(f"| {b} | {b / t_dev:.1f} | {n / t_dev:.1f} | {b / t_cpu:.1f} | "
                     f"{t_cpu / t_dev:.1f}x | {'yes' if same else '**NO**'} | {box:.4f} | "
                     f"{score:.2e} | {gpu_memory_mib()} |")
        say(lines[-1])
    # camera photos (large, several faces) too, once, for parity only
    from bench.evaluate import FACES

    camera = [decode_image(p.read_bytes(), max_bytes=limits.max_bytes,
                           max_pixels=limits.max_pixels,
                           work_max_side=limits.work_max_side).pixels
              for p in sorted((FACES / "deepface").glob("*.jpg"))]
    same, box, score, n = _compare_faces(dev_det.detect(camera), cpu_det.detect(camera))
    ok &= same and box <= BOX_PX and score <= SCORE
    lines += ["", f"Parity on the {len(camera)} camera photos of `deepface/` ({n} faces): same "
              f"faces {'yes' if same else '**NO**'}, max box diff {box:.4f} px, max score diff "
              f"{score:.2e}.", ""]
    say(lines[-2])

    stage = DetectionStage(cpu, limits)
    for name in embedders:
        try:
            dev_emb = build(ModelTask.EMBED, name, on)
            cpu_emb = build(ModelTask.EMBED, name, cpu)
            dev_emb.load()
            cpu_emb.load()
        except FacefleetError as exc:
            ok = False
            lines += [f"Embedder `{name}`: **not available**: {exc}", ""]
            say(lines[-2])
            continue
        res = stage.run([DetectRequest(d, detector, chip_specs=(cpu_emb.chip,)) for d in data])
        chips = np.concatenate([r.chips[cpu_emb.chip.key] for r in res
                                if not isinstance(r, Exception)])
        half, how = fp16_embedder(cpu_emb, ctx_of(device, "fp16"), device)
        lines += [f"Embedder `{name}` ({cpu_emb.dim}-d, {cpu_emb.chip.size} px chips of the "
                  "photos above); fp16: " + how + ":", "",
                  "| batch | precision | faces/s | CPU float32 faces/s | speed-up | min cosine "
                  "to CPU float32 | GPU memory |", "|---:|---|---:|---:|---:|---:|---:|"]
        cos16s: list[float] = []
        for b in batches:
            x = chips[np.arange(b) % len(chips)]
            t_dev, e_dev = _timed(lambda: dev_emb.embed(x), seconds)
            t_cpu, e_cpu = _timed(lambda: cpu_emb.embed(x), seconds)
            cos = float(np.min(np.sum(np.asarray(e_dev) * np.asarray(e_cpu), axis=1)))
            ok &= cos >= COSINE
            lines.append(f"| {b} | fp32 | {b / t_dev:.1f} | {b / t_cpu:.1f} | "
                         f"{t_cpu / t_dev:.1f}x | {cos:.6f}{'' if cos >= COSINE else ' **FAIL**'}"
                         f" | {gpu_memory_mib()} |")
            say(lines[-1])
            if half is None:
                continue
            t16, e16 = _timed(lambda: half.embed(x), seconds)
            cos16 = float(np.min(np.sum(np.asarray(e16) * np.asarray(e_cpu), axis=1)))
            cos16s.append(cos16)
            lines.append(f"| {b} | fp16 | {b / t16:.1f} | {b / t_cpu:.1f} | {t_cpu / t16:.1f}x "
                         f"| {cos16:.6f} | {gpu_memory_mib()} |")
            say(lines[-1])
        if half is not None:
            keeps = all(c >= FP16_MIN_COSINE for c in cos16s)  # a NaN fails too
            lines += ["", f"`{name}`: " + (
                "fp16 keeps parity" if keeps else "fp16 **does not keep parity**") +
                f" (worst face {min(cos16s):.6f}; bar: cosine >= {FP16_MIN_COSINE} to the CPU "
                "float32 vector on every face at every batch; informative, the exit code "
                "is float32's)."]
            say(lines[-1])
        lines.append("")
    if device == "cuda":
        lines += faiss_check()
        ok &= "**" not in lines[-1]
    return lines, ok


def fp16_embedder(emb, ctx, device: str) -> tuple[object | None, str]:
    """The network of ``emb`` running its float16 copy, and how it runs; or None and why
    not. On CUDA it is loaded as ``runtime.precision: fp16`` loads a model that keeps
    the copy (made first where missing); rehearsing on the CPU, the same file is
    made and checked, then run by OpenVINO."""
    import pipelines.install  # noqa: F401 - lets the load make a missing float16 copy
    from pipelines.model_check import fp16_path, open_fp16
    from pipelines import openvino_session

    if not hasattr(emb, "onnx_path"):  # dlib-native, DeepFace's, a fused one
        return None, ("not measured: no float16 copy of this model (the ONNX networks have "
                      "one: name a fused model's networks in --embedders to measure each)")
    cls = type(emb)
    half = type(f"{cls.__name__}Fp16", (cls,), {"has_fp16": True})(ctx)
    half.load()
    if device == "cuda":
        if half.precision != "fp16":
            return None, "not measured: the float16 copy could not be had (see the log)"
        return half, f"`{fp16_path(half.onnx_path).name}` on {half.engine}"
    if open_fp16(half.onnx_path, half.name, ctx.runtime) is None:
        return None, "not measured: the float16 copy could not be had (see the log)"
    if not openvino_session.available():
        return None, ("not measured: rehearsal without openvino (onnxruntime's CPU provider "
                      "computes a float16 file in float32)")
    ov = openvino_session.OpenVinoSession(fp16_path(half.onnx_path), f16=True)
    half.session, half.precision, half.engine = ov, "fp16", ov.get_providers()[0]
    return half, (f"`{fp16_path(half.onnx_path).name}` on {ov.get_providers()[0]}, computing "
                  f"in {ov.inference_precision} (rehearsal: not the CUDA provider)")


def faiss_check() -> list[str]:
    """faiss-gpu's exact inner-product search against faiss-cpu's, 100k x 128-d."""
    import faiss
    import numpy as np

    n = faiss.get_num_gpus()
    if n < 1:
        return ["FAISS: **faiss sees no GPU** (faiss-gpu not installed, or CUDA 12 libraries "
                "missing)."]
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((100_000, 128)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(len(xb), 256, replace=False)] + 0.05 * rng.standard_normal(
        (256, 128)).astype(np.float32)
    flat = faiss.IndexFlatIP(128)
    flat.add(xb)
    t0 = time.perf_counter()
    d_cpu, i_cpu = flat.search(xq, 10)
    t_cpu = time.perf_counter() - t0
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, flat)
    gpu.search(xq, 10)
    t0 = time.perf_counter()
    d_gpu, i_gpu = gpu.search(xq, 10)
    t_gpu = time.perf_counter() - t0
    agree = float(np.mean(i_cpu[:, 0] == i_gpu[:, 0]))
    diff = float(np.max(np.abs(d_cpu - d_gpu)))
    flag = "" if agree == 1.0 and diff < 1e-4 else " **FAIL**"
    return [f"FAISS ({n} GPU): 256 queries, k=10 over 100,000 x 128-d: top-1 agreement with "
            f"faiss-cpu {agree:.3f}, max score diff {diff:.2e}, {t_gpu * 1000:.1f} ms vs "
            f"{t_cpu * 1000:.1f} ms on the CPU{flag}."]


def inner(a: argparse.Namespace) -> int:
    """Steps 3-5, in an environment that has (or, rehearsing, need not have) CUDA."""
    device = "cpu" if a.cpu_rehearsal else "cuda"
    embedders = [e for e in a.embedders.split(",") if e]
    batches = [int(b) for b in a.batches.split(",")]
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in providers:
        say(f"GPU CHECK FAILED: onnxruntime {ort.__version__} offers no CUDAExecutionProvider "
            f"(only {', '.join(providers)}): this environment has the CPU wheel; install the "
            "project's gpu extra, or run without --no-venv to build one")
        return EXIT_NO_CUDA
    from pipelines.errors import Unavailable

    try:
        lines, ok = measure(a.detector, embedders, batches, a.seconds, device)
    except Unavailable as exc:
        say(f"GPU CHECK FAILED: {exc}")
        return EXIT_NO_CUDA
    gpu = "rehearsal on the CPU" if a.cpu_rehearsal else gpu_present()[1]
    head = [f"GPU check (`python -m bench.gpu_check`): {gpu}; onnxruntime {ort.__version__} "
            f"({', '.join(providers)}); CUDA side vs CPU side in the same run.", ""]
    say("\n".join(["", *head, *lines]))
    if a.cpu_rehearsal:
        say("REHEARSAL: the CPU ran both sides; nothing here measures a GPU. "
            "No results file written.")
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("\n".join(head + lines) + "\n")
        say(f"wrote {OUT}")
    say("GPU CHECK PASSED" if ok else "GPU CHECK FAILED: a parity check failed (see above)")
    return 0 if ok else EXIT_PARITY


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", default="blazeface")
    p.add_argument("--embedders", default="dlib", help="comma-separated registry names")
    p.add_argument("--batches", default="1,64,256")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per model and batch")
    p.add_argument("--venv", type=Path, default=REPO / ".venv-gpu")
    p.add_argument("--pip-args", default="", help="extra pip arguments, e.g. --find-links")
    p.add_argument("--no-venv", action="store_true", help="run in the current environment")
    p.add_argument("--cpu-rehearsal", action="store_true",
                   help="try the script with the CPU on both sides (measures no GPU)")
    a = p.parse_args(argv)
    if not a.cpu_rehearsal:
        present, what = gpu_present()
        if not present:
            say(f"NO GPU: {what}. This check needs an NVIDIA GPU and its driver; "
                "nothing was installed or measured.")
            return EXIT_NO_GPU
        say(f"GPU: {what}")
    if a.no_venv or a.cpu_rehearsal:
        return inner(a)
    try:
        py = build_venv(a.venv, shlex.split(a.pip_args))
    except RuntimeError as exc:
        say(f"GPU CHECK FAILED: could not build the GPU environment: {exc}")
        return EXIT_INSTALL
    args = list(argv if argv is not None else sys.argv[1:])
    return subprocess.call([str(py), "-m", "bench.gpu_check", *args, "--no-venv"], cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
