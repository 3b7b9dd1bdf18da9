"""Start and stop the local service many times, each way it is stopped in practice.

    .venv/bin/python -m bench.lifecycle --cycles 5 [--ways sigint,term-main,term-group,kill-group]

Each cycle launches ``python -m deployments.local`` (``serve_config.yaml``, data
in a temp dir, the HTTP port given by ``--port``, the same every cycle as
``make serve``'s 8000 is) in a process group of its own, as a shell runs a
command, waits for ``GET /ready`` to answer 200, then stops it one way:

- ``sigint``: SIGINT to the group (Ctrl-C in a terminal);
- ``term-main``: SIGTERM to the main process (``kill PID``);
- ``term-group``: SIGTERM to the group (``kill -- -PGID``; systemd's default
  ``KillMode=control-group``, ``docker stop``);
- ``kill-group``: SIGKILL to the group (a crash, the OOM killer), then a new
  start on the same data directory, which must reach ``/ready`` too, stopped
  with SIGINT.

Every process the launch created carries a marker in its environment (Ray's
daemons, workers and HAProxy inherit it), so what is left is found whatever its
parent or group became. A stop "left something" when, ``--settle-s`` seconds
after the main process exited (after the kill, for ``kill-group``), a marked
process still runs or the HTTP port still accepts connections. A start "failed"
when ``/ready`` did not answer 200 within ``--start-timeout-s``. Leftovers are
killed after being counted, so cycles stay independent; except after
``kill-group``, whose leftovers the new start has to deal with itself.

Prints and writes ``bench/results/lifecycle.md`` (``--out``); exits 1 when any
start failed or any stop left something. ``tests/app/test_lifecycle.py`` runs one
cycle of each way with :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from deployments import local
from deployments.local import ports
from deployments.local.launcher import processes_with_env

REPO = Path(__file__).resolve().parent.parent
MARK = "FACEFLEET_LIFECYCLE_RUN"
WAYS = ("sigint", "term-main", "term-group", "kill-group")


@dataclass
class Cycle:
    way: str
    start_s: float | None = None           # launch to /ready; None: the start failed
    stop_s: float | None = None            # signal to the main process's exit
    gone_s: float | None = None            # signal to no process and no listener left
    restart_s: float | None = None         # kill-group only: the new start, to /ready
    left: list[str] = field(default_factory=list)   # "pid name [ports]" still there
    port_open: bool = False                # the HTTP port still accepted connections
    errors: list[str] = field(default_factory=list)

    @property
    def start_failed(self) -> int:
        return int(self.start_s is None) + int(self.way == "kill-group"
                                               and self.start_s is not None
                                               and self.restart_s is None)

    @property
    def stop_left(self) -> bool:
        return bool(self.left) or self.port_open


def marked(marker: str) -> list[int]:
    """Every process whose environment carries ``MARK=marker``."""
    return processes_with_env(MARK, marker)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _describe(pids: list[int]) -> list[str]:
    held = ports.listeners(pids)
    return [f"{pid} {ports.process_name(pid)}"
            + (f" listening on {','.join(map(str, held[pid]))}" if pid in held else "")
            for pid in sorted(pids)]


def _launch(config_path: Path, port: int, marker: str, log: Path) -> subprocess.Popen:
    # not a calling test's own Serve instance's settings: the service picks its own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "FACEFLEET_"))}
    env[MARK] = marker
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.local", "--config", str(config_path),
         "--port", str(port), "--no-dashboard"],
        cwd=REPO, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            return None
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> float | None:
    t0 = time.monotonic()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - t0


def _leftovers(marker: str, port: int, settle_s: float) -> tuple[list[int], bool]:
    deadline = time.monotonic() + settle_s
    while True:
        pids = marked(marker)
        open_ = _port_open(port)
        if (not pids and not open_) or time.monotonic() > deadline:
            return pids, open_
        time.sleep(0.2)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen, way: str) -> None:
    pgid = proc.pid  # the group leader (start_new_session)
    if way == "sigint":
        os.killpg(pgid, signal.SIGINT)
    elif way == "term-main":
        os.kill(proc.pid, signal.SIGTERM)
    elif way == "term-group":
        os.killpg(pgid, signal.SIGTERM)
    elif way == "kill-group":
        os.killpg(pgid, signal.SIGKILL)
    else:
        raise ValueError(way)


def run_cycle(way: str, config_path: Path, port: int, log: Path, *,
              start_timeout_s: float, stop_timeout_s: float, settle_s: float) -> Cycle:
    c = Cycle(way)
    marker = uuid.uuid4().hex
    proc = _launch(config_path, port, marker, log)
    try:
        c.start_s = _wait_ready(port, proc, start_timeout_s)
        if c.start_s is None:
            c.errors.append("start: /ready not 200" + (
                f" (exited {proc.returncode})" if proc.poll() is not None else ""))
            proc.kill()
        else:
            t_signal = time.monotonic()
            _stop(proc, way)
            c.stop_s = _wait_exit(proc, stop_timeout_s)
            if c.stop_s is None:
                c.errors.append(f"stop: main process still running after {stop_timeout_s}s")
                proc.kill()
                proc.wait()
        pids, c.port_open = _leftovers(marker, port, settle_s)
        c.left = _describe(pids)
        if c.start_s is not None and not pids and not c.port_open:
            c.gone_s = time.monotonic() - t_signal
        if way == "kill-group" and c.start_s is not None:
            # the crash case: the new start meets whatever the kill left
            again = uuid.uuid4().hex
            proc = _launch(config_path, port, again, log)
            c.restart_s = _wait_ready(port, proc, start_timeout_s)
            if c.restart_s is None:
                c.errors.append("start after the kill: /ready not 200" + (
                    f" (exited {proc.returncode})" if proc.poll() is not None else ""))
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGINT)
                if _wait_exit(proc, stop_timeout_s) is None:
                    c.errors.append("stop after the new start: still running")
                    proc.kill()
            proc.wait()
            more, open_again = _leftovers(again, port, settle_s)
            still = [p for p in marked(marker) if p not in pids]
            c.left += [f"(after the new start) {d}" for d in _describe(more + still)]
            c.port_open = c.port_open or open_again
            _kill(more + still)
        _kill(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(marked(marker))
    return c


def service_config(data_dir: Path, out: Path) -> Path:
    """``serve_config.yaml`` with its data in ``data_dir`` (models from the checkout)."""
    config = local.load_config(REPO / "serve_config.yaml", {"settings": {
        "data_dir": str(data_dir), "model_dir": str(REPO / "data" / "models")}})
    out.write_text(yaml.safe_dump(config))
    return out


def run(ways: list[str], cycles: int, port: int, *, start_timeout_s: float = 420,
        stop_timeout_s: float = 120, settle_s: float = 30, workdir: Path | None = None,
        progress=print) -> list[Cycle]:
    """``cycles`` start/stop cycles of each of ``ways``, interleaved, on ``port``."""
    work = Path(workdir or tempfile.mkdtemp(prefix="ff-lifecycle-"))
    config = service_config(work / "data", work / "serve_config.yaml")
    log = work / "service.log"
    results = []
    for i in range(cycles):
        for way in ways:
            c = run_cycle(way, config, port, log, start_timeout_s=start_timeout_s,
                          stop_timeout_s=stop_timeout_s, settle_s=settle_s)
            results.append(c)
            progress(f"cycle {i + 1} {way}: start {_s(c.start_s)} stop {_s(c.stop_s)} "
                     f"gone {_s(c.gone_s)}"
                     + (f" restart {_s(c.restart_s)}" if way == "kill-group" else "")
                     + (f" LEFT {c.left} port_open={c.port_open}" if c.stop_left else "")
                     + (f" {c.errors}" if c.errors else ""))
    return results


def _s(v: float | None) -> str:
    return "FAILED" if v is None else f"{v:.1f}s"


def table(results: list[Cycle]) -> str:
    rows = ["| way | cycles | starts failed | stops that left something | start to /ready s "
            "(median) | main process exit s (median) | signal to nothing left s (median, max) |",
            "|---|---|---|---|---|---|---|"]
    for way in dict.fromkeys(c.way for c in results):
        cs = [c for c in results if c.way == way]
        starts = sorted(x for c in cs for x in (c.start_s, c.restart_s) if x is not None)
        stops = sorted(c.stop_s for c in cs if c.stop_s is not None)
        gone = sorted(c.gone_s for c in cs if c.gone_s is not None)
        rows.append(f"| {way} | {len(cs)} | {sum(c.start_failed for c in cs)} | "
                    f"{sum(c.stop_left for c in cs)} | {_median(starts)} | {_median(stops)} | "
                    f"{_median(gone)}, {gone[-1] if gone else 0:.1f} |")
    return "\n".join(rows)


def _median(xs: list[float]) -> str:
    return f"{xs[len(xs) // 2]:.1f}" if xs else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--port", type=int, default=None,
                   help="HTTP port, the same every cycle (default: one reserved now)")
    p.add_argument("--settle-s", type=float, default=30.0,
                   help="how long after a stop what is left may still be exiting")
    p.add_argument("--start-timeout-s", type=float, default=420.0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "lifecycle.md"))
    a = p.parse_args(argv)
    ways = a.ways.split(",")
    port = a.port or ports.reserve_port()
    t0 = time.time()
    results = run(ways, a.cycles, port, start_timeout_s=a.start_timeout_s,
                  settle_s=a.settle_s, progress=lambda s: print(s, flush=True))
    text = table(results)
    details = [f"- {c.way}: {'; '.join(c.left + c.errors)}" for c in results
               if c.stop_left or c.errors]
    doc = (f"# Start / stop cycles of `python -m deployments.local`\n\n"
           f"`.venv/bin/python -m bench.lifecycle --cycles {a.cycles} --ways {a.ways}`, "
           f"{time.strftime('%Y-%m-%d', time.gmtime(t0))}, {platform.node()}, "
           f"{os.cpu_count()} cores, {(time.time() - t0) / 60:.0f} min.\n\n{text}\n"
           + ("\nWhat was left or failed:\n" + "\n".join(details) + "\n" if details else ""))
    print(doc)
    Path(a.out).write_text(doc)
    bad = sum(c.start_failed for c in results) + sum(c.stop_left for c in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
