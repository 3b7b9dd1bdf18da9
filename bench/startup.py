"""What the service answers while it starts, through each front, from launch to ready.

    .venv/bin/python -m bench.startup [--proxies haproxy,serve]

For each front (HAProxy in front of the ingress, the local default; or
Serve's own Python proxy) it launches ``python -m deployments.local`` on a
fresh local Ray (``serve_config.yaml``, data in a temp dir, a free loopback
port) as a separate process and, from that moment, polls ``GET /health``,
``GET /ready`` and a real route (``POST /v1/detect`` with an LFW photo):
one thread per endpoint, one request in flight each, a long read timeout so
that a request the proxy holds still gets its answer. Every answer is kept
(when it was sent and answered, status, content type, error code,
Retry-After). It stops once ``/ready`` and the real route answer 200.
Writes ``bench/results/startup.md``: per front, the phases each endpoint went
through. ``watch`` is also what ``tests/app/test_startup.py`` asserts on.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from deployments import local

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"
OUT = Path(__file__).parent / "results" / "startup.md"
PHOTO = FACES / "lfw-dev/images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
ENDPOINTS = ("health", "ready", "detect")


@dataclass
class Answer:
    endpoint: str
    sent: float  # seconds after launch
    done: float
    outcome: str  # "refused", "timeout", "error" or "http"
    status: int | None = None
    content_type: str = ""
    code: str | None = None  # the error envelope's code
    retry_after: str | None = None
    body: str = ""

    @property
    def is_json(self) -> bool:
        return self.content_type.split(";")[0].strip() == "application/json"

    def describe(self) -> str:
        if self.outcome != "http":
            return {"refused": "connection refused", "timeout": "no answer (client timeout)"}.get(
                self.outcome, self.outcome)
        kind = "JSON" if self.is_json else (self.content_type.split(";")[0] or "no type")
        what = f"{self.status} {kind}"
        if self.code:
            what += f" `{self.code}`"
        elif self.is_json and self.endpoint == "ready":
            what += " ready" if self.status == 200 else " not ready"
        elif not self.is_json:
            what += f" \"{self.body[:40]}\""
        if self.retry_after:
            what += f", Retry-After {self.retry_after}"
        return what


def _request(client: httpx.Client, endpoint: str, img: str) -> httpx.Response:
    if endpoint == "detect":
        return client.post("/v1/detect", json={"img": img})
    return client.get(f"/{endpoint}")


def _poll(base: str, endpoint: str, t0: float, img: str, out: list[Answer],
          stop: threading.Event, read_timeout_s: float) -> None:
    timeout = httpx.Timeout(read_timeout_s, connect=2.0)
    with httpx.Client(base_url=base, timeout=timeout) as client:
        while not stop.is_set():
            sent = time.monotonic() - t0
            try:
                r = _request(client, endpoint, img)
                a = Answer(endpoint, sent, time.monotonic() - t0, "http", r.status_code,
                           r.headers.get("content-type", ""), None,
                           r.headers.get("retry-after"), r.text[:200])
                if a.is_json:
                    try:
                        err = r.json().get("error")
                        a.code = err.get("code") if isinstance(err, dict) else None
                    except (ValueError, AttributeError):
                        a.code = "<invalid JSON>"
            except httpx.ConnectError:
                a = Answer(endpoint, sent, time.monotonic() - t0, "refused")
            except httpx.TimeoutException:
                a = Answer(endpoint, sent, time.monotonic() - t0, "timeout")
            except httpx.HTTPError as e:
                a = Answer(endpoint, sent, time.monotonic() - t0, f"error {type(e).__name__}")
            out.append(a)
            time.sleep(0.25 if a.outcome == "http" else 0.5)


def watch(proxy: str = "haproxy", *, settle_s: float = 3.0, timeout_s: float = 600.0,
          read_timeout_s: float = 100.0) -> list[Answer]:
    """Launch the service with ``proxy`` in front and record every answer until
    ``/ready`` and the real route both answered 200 (then ``settle_s`` more)."""
    tmp = Path(tempfile.mkdtemp(prefix="ff-startup-"))
    port = local.free_port()
    config = local.load_config(REPO / "serve_config.yaml", {"settings": {
        "data_dir": str(tmp / "data"), "model_dir": str(REPO / "data" / "models")}}, port)
    (tmp / "serve_config.yaml").write_text(yaml.safe_dump(config))
    # a fresh Ray of its own: none of this process's Ray or HAProxy settings
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "FACEFLEET_HAPROXY_"))}
    env.update(local.LOOPBACK_ENV)  # loopback only, from Ray's import on
    log = open(tmp / "service.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.local", "--config", str(tmp / "serve_config.yaml"),
         "--no-dashboard", "--proxy", proxy],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    img = base64.b64encode(PHOTO.read_bytes()).decode()
    answers: list[Answer] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_poll, args=(f"http://127.0.0.1:{port}", e, t0, img,
                                                    answers, stop, read_timeout_s), daemon=True)
               for e in ENDPOINTS]
    for t in threads:
        t.start()
    try:
        up_at = None
        while time.monotonic() - t0 < timeout_s and proc.poll() is None:
            ok = {a.endpoint for a in list(answers) if a.status == 200}
            if up_at is None and {"ready", "detect"} <= ok:
                up_at = time.monotonic()
            if up_at is not None and time.monotonic() - up_at > settle_s:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the service did not come up through {proxy} "
                               f"(see {tmp / 'service.log'})")
    finally:
        stop.set()
        for t in threads:
            t.join(read_timeout_s + 5)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the service's own process group
            proc.wait(30)
        log.close()
    return sorted(answers, key=lambda a: a.sent)


def phases(answers: list[Answer],
           endpoint: str) -> list[tuple[float, float, str, int, float]]:
    """Consecutive answers of one endpoint that read the same:
    ``(first sent, last answered, what, how many, longest wait for one)``."""
    out: list[list] = []
    for a in answers:
        if a.endpoint != endpoint:
            continue
        what = a.describe()
        if out and out[-1][2] == what:
            out[-1][1] = a.done
            out[-1][3] += 1
            out[-1][4] = max(out[-1][4], a.done - a.sent)
        else:
            out.append([a.sent, a.done, what, 1, a.done - a.sent])
    return [tuple(p) for p in out]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--proxies", default="haproxy,serve")
    a = p.parse_args()
    lines = ["# What the service answers while it starts", "",
             f"`.venv/bin/python -m bench.startup --proxies {a.proxies}`; "
             f"{platform.machine()}, {os.cpu_count()} cores; load average before: "
             f"{os.getloadavg()[0]:.1f}.", "",
             "Each endpoint is polled from the moment `python -m deployments.local` is "
             "launched (fresh local Ray, `serve_config.yaml`), one request in flight per "
             "endpoint, read timeout 100 s. Times are seconds after launch; a phase runs "
             "from the first request sent to the last answered; the longest wait is the "
             "longest any one request of the phase waited for its answer (a request the "
             "proxy held).", ""]
    for proxy in a.proxies.split(","):
        answers = watch(proxy)
        lines += [f"## `--proxy {proxy}`", "",
                  "| endpoint | from s | to s | answers | longest wait s | answer |",
                  "|---|---|---|---|---|---|"]
        for endpoint in ENDPOINTS:
            for first, last, what, n, wait in phases(answers, endpoint):
                lines.append(f"| {endpoint} | {first:.1f} | {last:.1f} | {n} | {wait:.1f} "
                             f"| {what} |")
        lines.append("")
        print(json.dumps({"proxy": proxy, "answers": len(answers)}), flush=True)
    lines.append(f"Load average after: {os.getloadavg()[0]:.1f}.")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
