"""Small-request latency while ~90 MiB JSON bodies are in flight, before and after.

    .venv/bin/python -m bench.event_loop [--clients 2] [--seconds 8] [--rounds 3]
                                         [--body-mib 90]

One uvicorn process on 127.0.0.1 (one event loop, as in one ingress replica)
serves ``/small`` (an 8 KB LFW photo as base64 JSON) and ``/big`` (a
``faces:batch`` body of real deepface/ photos in base64, ~90 MiB); both parse
the body and turn every image into bytes, no model runs. A probe sends a small
request every 10 ms (open loop: each request scheduled during a stall waits it
out) while N clients post big bodies back to back from another process; the
server also records how long its own event loop is stalled (a 5 ms timer's
lateness). Each mode gets a fresh server, side by side in one run, the modes
interleaved over the rounds:

- ``idle``: no big requests (the floor);
- ``before``: the code as it was: ``json.loads`` and base64 decoding on the loop;
- ``after, inline``: ``request_body.parse_body`` and ``ImageResolver`` with
  their worker-thread thresholds off (the parser alone);
- ``after``: ``request_body.parse_body`` and ``ImageResolver`` as shipped.

Writes bench/results/event_loop.md. About 3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import http.client
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

REPO = Path(__file__).resolve().parent.parent
FACES = REPO.parent / "shared" / "faces"
OUT = Path(__file__).parent / "results" / "event_loop.md"
SMALL_PHOTO = FACES / "lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg"
MODES = {"idle": "after", "before": "before", "after, inline": "after-inline", "after": "after"}
NEVER = 1 << 40  # a worker-thread threshold no body reaches


# ---------------------------------------------------------------------- the server
def make_app(mode: str):
    """The two routes over the real parsing code (``before``: the code it replaced)."""
    import pydantic

    from configs.settings import Settings
    from deployments.http.errors import install_error_handlers
    from deployments.http.bodies import RegisterBatchBody
    from deployments.http.app import IngressApp
    from deployments.http.images import ImageResolver
    from deployments.http.request_body import BodyLimits, parse_body, read_capped
    from deployments.http.bodies import DetectBody
    from pipelines.errors import ImageDecodeError, ValidationError

    s = Settings()
    app = IngressApp()
    install_error_handlers(app)
    inline = mode == "after-inline"
    limits = BodyLimits.of(s.images)
    if inline:
        limits = BodyLimits(limits.max_request_bytes, limits.max_file_bytes,
                            limits.max_field_bytes, inline_json_bytes=NEVER)
    resolver = ImageResolver(s, inline_base64_chars=NEVER if inline else 256 * 1024)

    async def old_parse(request: Request, model):
        # FacesApi._parse for JSON bodies before request_body existed
        raw = bytes(await read_capped(request, s.images.max_request_bytes))
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValidationError("request body is not valid JSON") from None
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError("request is invalid") from exc

    def old_b64(text: str) -> bytes:
        # ImageResolver._b64 before: one decode call on the event loop
        try:
            cleaned = "".join(text.split())
            cleaned += "=" * (-len(cleaned) % 4)
            return base64.b64decode(cleaned, altchars=b"-_" if "-" in cleaned or "_" in cleaned
                                    else None, validate=True)
        except (binascii.Error, ValueError):
            raise ImageDecodeError("not base64") from None

    async def images(request: Request, model, field):
        if mode == "before":
            body = await old_parse(request, model)
            return [old_b64(v) for v in field(body)]
        body, _ = await parse_body(request, model, limits)
        return [await resolver.resolve(v) for v in field(body)]

    @app.post("/small")
    async def small(request: Request) -> dict:
        got = await images(request, DetectBody, lambda b: [b.img])
        return {"bytes": len(got[0])}

    @app.post("/big")
    async def big(request: Request) -> dict:
        got = await images(request, RegisterBatchBody, lambda b: [i.img for i in b.items])
        return {"images": len(got), "bytes": sum(map(len, got))}

    lags: list[float] = []

    async def tick() -> None:
        # how late a 5 ms sleep wakes up: the time the loop could not run anything
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - t0 - 0.005) * 1000)

    ticker: list[asyncio.Task] = []

    @app.get("/health")
    async def health() -> dict:
        if not ticker:
            ticker.append(asyncio.create_task(tick()))
        return {"ok": True}

    since = [time.perf_counter()]

    @app.get("/lag")
    async def lag() -> dict:
        got = list(lags)
        lags.clear()
        window = (time.perf_counter() - since[0]) * 1000
        since[0] = time.perf_counter()
        # the summed overshoot is the time the loop was stalled (one late tick
        # covers a whole stall, so a percentile of ticks would understate it)
        return {"stalled": sum(got) / window, "max": max(got)}

    return app


def serve(mode: str, port: int) -> None:
    import uvicorn

    # keep-alive longer than any stall, so the probe never reuses a connection the
    # server is closing
    uvicorn.run(make_app(mode), host="127.0.0.1", port=port, log_level="warning",
                timeout_keep_alive=120)


# ---------------------------------------------------------------------- big clients
def big_body(mib: float) -> bytes:
    photos = [base64.b64encode(p.read_bytes()).decode()
              for p in sorted((FACES / "deepface").glob("*.jpg"))]
    items, size, i = [], 0, 0
    while size < mib * (1 << 20) and len(items) < 256:
        items.append({"img": photos[i % len(photos)], "person_id": f"p{i}"})
        size += len(photos[i % len(photos)]) + 40
        i += 1
    return json.dumps({"items": items}).encode()


def post_big(port: int, clients: int, seconds: float, mib: float) -> None:
    """Posts big bodies back to back from ``clients`` threads; prints JSON stats."""
    body = big_body(mib)
    print(json.dumps({"ready": True, "mib": len(body) / (1 << 20)}), flush=True)
    deadline = time.monotonic() + seconds
    times: list[float] = []
    errors: list[int] = []

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            conn.request("POST", "/big", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            (times if resp.status == 200 else errors).append(
                time.perf_counter() - t0 if resp.status == 200 else resp.status)
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"done": len(times), "errors": errors,
                      "mean_s": float(np.mean(times)) if times else None}), flush=True)


# ---------------------------------------------------------------------- the probe
async def probe(port: int, seconds: float, interval: float) -> list[float]:
    payload = json.dumps({"img": base64.b64encode(SMALL_PHOTO.read_bytes()).decode()})
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                 limits=httpx.Limits(max_connections=200)) as client:
        for _ in range(20):  # warm up connections
            await client.post("/small", content=payload)

        async def one() -> None:
            t0 = time.perf_counter()
            r = await client.post("/small", content=payload,
                                  headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            lat.append((time.perf_counter() - t0) * 1000)

        tasks = []
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(one()))
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
    return lat


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the bench server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the bench server did not start")


def run_mode(label: str, a) -> dict:
    from deployments.local import free_port

    port = free_port()
    me = [sys.executable, "-m", "bench.event_loop"]
    server = subprocess.Popen(me + ["--serve", MODES[label], "--port", str(port)], cwd=REPO)
    posters = None
    try:
        wait_ready(port, server)
        if label != "idle":
            posters = subprocess.Popen(
                me + ["--post", "--port", str(port), "--clients", str(a.clients),
                      "--seconds", str(a.seconds + 2), "--body-mib", str(a.body_mib)],
                cwd=REPO, stdout=subprocess.PIPE, text=True)
            ready = json.loads(posters.stdout.readline())
            time.sleep(2)  # let the first big bodies get in flight
        httpx.get(f"http://127.0.0.1:{port}/lag")  # from here on
        lat = asyncio.run(probe(port, a.seconds, a.interval_ms / 1000))
        lag = httpx.get(f"http://127.0.0.1:{port}/lag", timeout=60).json()
        stats: dict = {}
        if posters is not None:
            stats = json.loads(posters.stdout.read().strip().splitlines()[-1])
            stats["mib"] = ready["mib"]
            posters.wait(60)
    finally:
        for p in (posters, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)
    return {"lat": lat, "stalled": lag["stalled"], "lag_max": lag["max"], **stats}


def pooled(label: str, runs: list[dict]) -> dict:
    """One mode over its rounds: percentiles of every sample, the worst stall."""
    lat = [x for r in runs for x in r["lat"]]
    q = np.percentile(lat, [50, 99])
    done = sum(r.get("done", 0) for r in runs)
    busy = sum(r["mean_s"] * r["done"] for r in runs if r.get("done"))
    return {"mode": label, "n": len(lat), "p50": q[0], "p99": q[1], "max": max(lat),
            "round_p99": [float(np.percentile(r["lat"], 99)) for r in runs],
            "stalled": float(np.mean([r["stalled"] for r in runs])),
            "lag_max": max(r["lag_max"] for r in runs), "done": done,
            "errors": sum(len(r.get("errors", [])) for r in runs),
            "mean_s": busy / done if done else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=2, help="concurrent big-body clients")
    p.add_argument("--seconds", type=float, default=8.0, help="probe time per mode and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--body-mib", type=float, default=90.0)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--post", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        return serve(a.serve, a.port)
    if a.post:
        return post_big(a.port, a.clients, a.seconds, a.body_mib)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {label: [] for label in MODES}
    for _ in range(a.rounds):  # modes interleaved, so a burst of outside load hits all
        for label in MODES:
            runs[label].append(run_mode(label, a))
    rows = [pooled(label, got) for label, got in runs.items()]
    load_after = os.getloadavg()
    before = next(r for r in rows if r["mode"] == "before")
    lines = [
        f"Small requests (one 8 KB LFW photo as base64 JSON, one every {a.interval_ms:g} ms, "
        f"open loop, {a.rounds} rounds of {a.seconds:g} s per mode, modes interleaved) to "
        "one uvicorn process on 127.0.0.1 while "
        f"{a.clients} clients post ~{a.body_mib:g} MiB `faces:batch` JSON bodies of real "
        "photos back to back. Both routes parse the body and decode every image, no model. "
        f"{platform.machine()}, {os.cpu_count()} cores; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (shared machine).",
        "",
        "| mode | small requests | p50 ms | p99 ms | p99 per round ms | max ms | "
        "p99 vs before | loop stalled % / longest stall ms | big bodies done | "
        "s per big body |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        big = (f"{r['done']} (errors {r['errors']}) | {r['mean_s']:.2f}"
               if r["mean_s"] else "- | -")
        per_round = ", ".join(f"{x:.0f}" for x in r["round_p99"])
        lines.append(f"| {r['mode']} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                     f"{per_round} | {r['max']:.0f} | {r['p99'] / before['p99']:.2f}x | "
                     f"{r['stalled'] * 100:.0f}% / {r['lag_max']:.0f} | {big} |")
    lines += ["", "Loop stalled: the server's 5 ms timer, summed lateness over the probe "
              "window (the share of time its event loop could run nothing), and the longest "
              "single stall.", "",
              "`before`: `json.loads` and base64 decoding on the event loop (the code "
              "replaced); `after, inline`: the new parser (pydantic-core JSON, sliced base64) "
              "without worker threads; `after`: as shipped (bodies > 256 KiB and base64 "
              "> 256 KiB in worker threads).", "",
              "Command: `.venv/bin/python -m bench.event_loop "
              f"--clients {a.clients} --seconds {a.seconds:g} --rounds {a.rounds} "
              f"--body-mib {a.body_mib:g}`", ""]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
