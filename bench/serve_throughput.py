"""Throughput of /v1/embed through the real Serve app, measured from outside, beside
the in-process ceiling.

    .venv/bin/python -m bench.serve_throughput [--topologies separate,fused]
        [--proxies haproxy,serve] [--concurrency 1,8,32] [--photos lfw:300]
        [--models dlib] [--before REV]

For each front (HAProxy in front of the ingress, Serve's high-throughput
mode and the default of ``make serve``; or Serve's own Python proxy) and
topology (separate Detector / Embedder / Analyzer deployments from
``serve_config.yaml``, or every stage fused into the Ingress replica from
``configs/serve_config.fused.yaml``), it starts the service on a local Ray
instance and drives ``/v1/embed`` with ``bench.http_load``: a plain closed-loop
client in its own process (one JSON request with a base64 photo in flight per
thread, keep-alive). It reports images/s, p50 / p99 latency, the CPU the
service's processes spent per request, and the batch sizes the model
deployments saw. The same photos through the stages in this one process
(detect + embed, batches of 16) give the ceiling, measured in the same run.
``--models`` adds a row per embedder through ``/v1/embed`` (separate
topology, the first front). Writes ``bench/results/serve_throughput.md``.
``--before REV`` instead starts an earlier revision's service (a git worktree,
its own code and ``serve_config``) and this checkout's, one after the other per
topology, drives both with the same client and writes
``bench/results/serve_throughput_before_after.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx

from bench import http_load, sides
from bench.machine import cpu_line, cpu_model
from configs.settings import Runtime
from deployments import local

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "serve_throughput.md"
CONFIGS = {"fused": "configs/serve_config.fused.yaml"}


def in_process(paths: list[Path], model: str | None = None, batch: int = 16) -> float:
    """Images/s of detect+embed in this process, one thread (the ceiling of one core)."""
    from configs.settings import Settings
    from pipelines.models import ModelContext
    from pipelines.runtime import limit_native_threads
    from pipelines.stages import DetectionStage, DetectRequest, EmbeddingStage

    limit_native_threads(1)
    s = Settings()
    model = model or s.default_embedder
    ctx = ModelContext(models_dir=s.models_path, runtime=Runtime(),
                       fusion_weights=s.fusion_weights)
    det = DetectionStage(ctx, s.images)
    emb = EmbeddingStage(ctx, flip_average=s.flip_average)
    specs = emb.model(model).chip_specs
    images = [p.read_bytes() for p in paths]
    reqs = [DetectRequest(d, s.default_detector, chip_specs=specs) for d in images]
    emb.run_detected(det.run(reqs[:batch]), [model] * batch)  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        chunk = reqs[i:i + batch]
        emb.run_detected(det.run(chunk), [model] * len(chunk))
    return len(images) / (time.perf_counter() - t0)


def _role(pid: int) -> str:
    """What a process of the service is, by its command line: a Serve deployment's
    replica by the deployment's name, Serve's proxy and controller, HAProxy, or Ray."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "Ray"
    if "ServeReplica:" in cmd:
        return cmd.split("ServeReplica:", 1)[1].split()[0].rsplit(":", 1)[-1]
    for key, role in (("ProxyActor", "Serve proxy"), ("ServeController", "Serve controller"),
                      ("haproxy", "HAProxy")):
        if key in cmd:
            return role
    return "Ray"


def _service_cpu_by_role() -> dict[str, float]:
    """CPU seconds of every process this one started (the local Ray cluster), by role."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(
                        int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out: dict[str, float] = {}
    stack, tick = list(kids.get(os.getpid(), [])), os.sysconf("SC_CLK_TCK")
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            role = _role(pid)
            out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(kids.get(pid, []))
    return out


def _batches(base: str) -> str:
    try:
        sizes = httpx.get(base + "/v1/stats", timeout=30).json()["batch_sizes"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "-"
    out = []
    for dep, method in (("Detector", "detect"), ("Embedder", "embed")):
        counts = {int(k): v for k, v in sizes.get(dep, {}).get(method, {}).items()}
        n = sum(counts.values())
        out.append(f"{sum(k * v for k, v in counts.items()) / n:.1f}" if n else "-")
    return " / ".join(out)


def measure(base: str, photos: str, conc: int, model: str | None = None) -> dict:
    extra = {"model": model} if model else None
    http_load.run(base, "/v1/embed", photos, min(conc, 8), requests=max(2 * conc, 16),
                  extra=extra)  # warm up: models loaded, queues primed
    cpu0 = _service_cpu_by_role()
    res = http_load.run(base, "/v1/embed", photos, conc, extra=extra)
    cpu1 = _service_cpu_by_role()
    res["cpu_by_role"] = {r: (cpu1[r] - cpu0.get(r, 0.0)) / res["requests"] * 1000
                          for r in cpu1}
    res["cpu_ms"] = sum(res["cpu_by_role"].values())
    res["batches"] = _batches(base)
    return res


def before_after(a: argparse.Namespace) -> None:
    """Each topology, the earlier revision then this checkout, one after the other."""
    rows = []
    with sides.worktree(a.before) as before:
        for topo in a.topologies.split(","):
            config = "serve_config.yaml" if topo == "separate" else CONFIGS[topo]
            for name, repo, rev in (("before", before, sides.short(a.before)),
                                    ("after", REPO, sides.short("HEAD"))):
                with tempfile.TemporaryDirectory(prefix=f"ffst-{name}-") as tmp, \
                        sides.service(repo, config, Path(tmp), app_args={"gallery": False}) \
                        as base:
                    for conc in map(int, a.concurrency.split(",")):
                        res = measure(base, a.photos, conc)
                        rows.append((topo, conc, name, rev, res))
                        print(topo, conc, name, rev, res, flush=True)
    lines = [
        "# /v1/embed through the Serve app: an earlier revision against this one",
        "",
        f"`python -m bench.serve_throughput --before {a.before} --topologies {a.topologies} "
        f"--concurrency {a.concurrency}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores ({platform.machine()}, {cpu_model()}), load average at the "
        f"end {os.getloadavg()[0]:.2f}. Each side's service started from its own code and "
        f"`serve_config` (default front, HAProxy), {len(http_load.photos(a.photos))} LFW "
        "photos as base64 JSON from one closed-loop client process.",
        "", cpu_line(), "",
        "| topology | clients | side | revision | images/s | p50 ms | p99 ms | "
        "CPU ms / image | errors |",
        "|---|---|---|---|---|---|---|---|---|"]
    for topo, conc, name, rev, r in rows:
        lines.append(f"| {topo} | {conc} | {name} | {rev} | {r['req_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['cpu_ms']:.1f} | "
                     f"{r['requests'] - r['ok']} |")
    roles = sorted({k for *_, r in rows for k, v in r["cpu_by_role"].items() if v >= 0.05})
    lines += ["", "CPU ms per image by process (the service's processes, from /proc):", "",
              "| topology | clients | side | " + " | ".join(roles) + " | all |",
              "|---|---|---|" + "---|" * (len(roles) + 1)]
    for topo, conc, name, _, r in rows:
        lines.append(f"| {topo} | {conc} | {name} | " + " | ".join(
            f"{r['cpu_by_role'].get(k, 0.0):.1f}" for k in roles) + f" | {r['cpu_ms']:.1f} |")
    pairs = {}
    for topo, conc, name, _, r in rows:
        pairs.setdefault((topo, conc), {})[name] = r
    lines.append("")
    for (topo, conc), sides_ in pairs.items():
        if len(sides_) == 2:
            b, f = sides_["before"], sides_["after"]
            lines.append(f"- {topo}, {conc} clients: after / before images/s "
                         f"{f['req_s'] / b['req_s']:.2f}x, CPU per image "
                         f"{f['cpu_ms'] / b['cpu_ms']:.2f}x.")
    out = a.out.with_name("serve_throughput_before_after.md") if a.out == OUT else a.out
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topologies", default="separate,fused")
    p.add_argument("--proxies", default="haproxy,serve")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--photos", default="lfw:300")
    p.add_argument("--models", default="dlib,dlib+mobilefacenet,mobilefacenet",
                   help="embedders compared through /v1/embed (separate topology); "
                   "ratios are against the first")
    p.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--before", default=None, metavar="REV",
                   help="an earlier revision: its service and this checkout's, each started "
                   "from its own code, side by side (default front, no --models rows); "
                   "writes bench/results/serve_throughput_before_after.md")
    a = p.parse_args()
    if a.before:
        return before_after(a)
    paths = http_load.photos(a.photos)
    ceiling = in_process(paths)
    rows, model_rows = [], []
    proxies = a.proxies.split(",")
    for proxy in proxies:
        for topo in a.topologies.split(","):
            port = a.port or local.free_port()
            path = REPO / ("serve_config.yaml" if topo == "separate"
                           else "configs/serve_config.fused.yaml")
            cfg = local.load_config(path, {"topology": topo, "gallery": False}, port)
            local.start(cfg, num_cpus=os.cpu_count(), fast_serve=proxy == "haproxy")
            base = f"http://127.0.0.1:{port}"
            try:
                for conc in map(int, a.concurrency.split(",")):
                    res = measure(base, a.photos, conc)
                    rows.append((proxy, topo, conc, res))
                    print(proxy, topo, conc, res, flush=True)
                if topo == "separate" and proxy == proxies[0]:
                    for model in filter(None, a.models.split(",")):
                        for conc in (1, 32):
                            res = measure(base, a.photos, conc, model)
                            model_rows.append((model, conc, res))
                            print(model, conc, res, flush=True)
            finally:
                local.stop()
    ceiling_after = in_process(paths)
    ceil = (ceiling + ceiling_after) / 2
    best = {(px, t): r["req_s"] for px, t, c, r in rows if c == max(x[2] for x in rows)}
    lines = [
        f"{len(paths)} LFW photos ({a.photos}), `/v1/embed` JSON with base64, keep-alive, "
        f"{os.cpu_count()} cores ({platform.machine()}), load average at the end "
        f"{os.getloadavg()[0]:.2f}.",
        "", cpu_line(), "",
        f"In-process ceiling (one process, one thread, detect+embed, batches of 16): "
        f"{ceiling:.1f} images/s before and {ceiling_after:.1f} after the Serve runs.",
        "",
        "| front | topology | clients | images/s | p50 ms | p99 ms | CPU ms / image | "
        "vs in-process | errors | mean batch (detect / embed) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for proxy, topo, conc, r in rows:
        errors = r["requests"] - r["ok"]
        lines.append(f"| {proxy} | {topo} | {conc} | {r['req_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['cpu_ms']:.1f} | {r['req_s'] / ceil:.2f} | "
                     f"{errors} | {r['batches']} |")
    for proxy in proxies:
        sep, fus = best.get((proxy, "separate")), best.get((proxy, "fused"))
        if sep and fus:
            lines.append("")
            lines.append(f"{proxy}: separate / fused at the highest concurrency = "
                         f"{sep / fus:.2f}")
    if model_rows:
        first = {c: r for m, c, r in model_rows if m == model_rows[0][0]}
        lines += ["", "Embedders through `/v1/embed` (separate topology, first front, mirror "
                  "averaging as configured per model; time per image divides by "
                  f"`{model_rows[0][0]}` at the same concurrency):", "",
                  "| model | clients | images/s | p50 ms | p99 ms | CPU ms / image | "
                  "time per image vs first |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {c} | {r['req_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                  f"{r['cpu_ms']:.1f} | {first[c]['req_s'] / r['req_s']:.2f}x |"
                  for m, c, r in model_rows]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
