"""Schema-driven fuzzing of the real service from its own ``/openapi.json``.

    .venv/bin/python -m bench.fuzz [--requests 10000] [--seconds 1800] [--auth off]

Starts the app from ``serve_config.yaml`` on 127.0.0.1 (data in a temp
directory), reads the document it serves, and has schemathesis generate
requests for every operation (valid and invalid bodies, path values, headers)
until ``--requests`` were sent or ``--seconds`` passed, shared evenly among the
operations. With ``--auth on`` (the default) the service has an admin key from
its settings and every request carries it, so the key routes validate their
bodies instead of answering 409 ``auth_disabled``, and every route passes the
access check. Each answer is checked as ``tests/app/test_schema_fuzz.py`` checks
it: no 5xx, every 4xx carries the error envelope, status, content type and body
conform to the document. Writes bench/results/fuzz.md (requests per operation,
status classes, failures by check) and exits 1 when any check failed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from deployments import local

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "fuzz.md"


def _envelope_ok(response) -> bool:
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and {"code", "message", "request_id"} <= set(err)


def register_serializers() -> None:
    """Bodies schemathesis has no serializer for: an import takes JSON Lines, each line
    an ``ExportLine``; a generated value is sent as one line."""
    import json

    import schemathesis

    @schemathesis.serializer("application/x-ndjson")
    def _ndjson(ctx, value) -> bytes:
        del ctx
        return json.dumps(value).encode() + b"\n"


def excluded_checks(case) -> list:
    """The schemathesis checks that do not apply to this API, and why.

    - "schema-valid data is accepted": a schema cannot say which strings are
      images, so a schema-valid random string gets a 400 ``image_decode_error``,
      which the document declares;
    - "schema-invalid data is refused": bodies are read in pydantic's lax mode
      (``"3"`` for 3, ``0`` for false, as form fields and DeepFace's clients
      send them), which JSON Schema cannot express.

    Every answer must still have a documented status, content type and schema,
    no answer may be a 5xx, and every 4xx carries the error envelope.
    """
    from schemathesis.specs.openapi.checks import (negative_data_rejection,
                                                   positive_data_acceptance)

    del case  # the same for every operation and media type
    return [positive_data_acceptance, negative_data_rejection]


def fuzz(base: str, budget: int, deadline: float, headers: dict[str, str] | None = None
         ) -> tuple[list[tuple], collections.Counter, dict[str, str]]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    register_serializers()
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    seen = {op.label: collections.Counter() for op in ops}
    failures: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}

    def one_round(op, cap: int) -> None:
        counts = seen[op.label]
        stop_at = counts["sent"] + cap

        @given(case=op.as_strategy())
        @settings(max_examples=cap, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            if time.monotonic() > deadline or counts["sent"] >= stop_at:
                return
            response = case.call(base_url=base, headers=headers, timeout=120)
            counts["sent"] += 1
            counts[f"{response.status_code // 100}xx"] += 1
            try:
                # the checks tests/app/test_schema_fuzz.py leaves out, and why
                case.validate_response(response, excluded_checks=excluded_checks(case))
            except Exception as exc:  # noqa: BLE001 - schemathesis raises a failure group
                for f in getattr(exc, "exceptions", [exc]):
                    name = getattr(f, "title", type(f).__name__)
                    failures[name] += 1
                    examples.setdefault(name, f"{op.label}: {str(f)[:300]}")
            if 400 <= response.status_code < 500 and not _envelope_ok(response):
                failures["4xx without the error envelope"] += 1
                examples.setdefault("4xx without the error envelope",
                                    f"{op.label}: {response.text[:300]}")

        run()

    # rounds: operations with few distinct requests (GET /health) stop early, and
    # what they leave of the budget goes to the others, drawn afresh each round
    active = list(ops)
    while active and time.monotonic() < deadline:
        left = budget - sum(c["sent"] for c in seen.values())
        if left <= 0:
            break
        cap = max(left // len(active), 1)
        for op in active:
            before = seen[op.label]["sent"]
            one_round(op, cap)
            print(op.label, dict(seen[op.label]), flush=True)
            if seen[op.label]["sent"] - before < cap:
                active = [o for o in active if o is not op]
    rows = [(op.label, seen[op.label]) for op in ops]
    return rows, failures, examples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=1800)
    p.add_argument("--auth", choices=("on", "off"), default="on",
                   help="on: an admin key from the settings, sent with every request")
    a = p.parse_args()
    port = local.free_port()
    key = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {key}"} if a.auth == "on" else None
    with tempfile.TemporaryDirectory() as data:
        overrides = {"settings": {"data_dir": data, "model_dir": str(REPO / "data" / "models")}}
        if headers:
            overrides["settings"]["api_key_sha256"] = [hashlib.sha256(key.encode()).hexdigest()]
        local.start(local.load_config(REPO / "serve_config.yaml", overrides, port),
                    num_cpus=os.cpu_count())
        base = f"http://127.0.0.1:{port}"
        try:
            httpx.get(base + "/ready", timeout=120)
            t0 = time.monotonic()
            rows, failures, examples = fuzz(base, a.requests, t0 + a.seconds, headers)
            elapsed = time.monotonic() - t0
        finally:
            local.stop()
    total = collections.Counter()
    for _, seen in rows:
        total.update(seen)
    auth = ("auth on, an admin key from the settings on every request" if headers
            else "auth off")
    lines = [f"`python -m bench.fuzz --requests {a.requests} --auth {a.auth}`: {total['sent']} "
             f"requests over {len(rows)} operations in {elapsed:.0f} s ({auth}), "
             f"{os.cpu_count()} cores "
             f"({platform.machine()}), load average at the end {os.getloadavg()[0]:.2f}.", "",
             f"**5xx: {total['5xx']}; failed checks: {sum(failures.values())}.**", "",
             "| operation | requests | 2xx | 4xx | 5xx |", "|---|---|---|---|---|"]
    lines += [f"| `{label}` | {s['sent']} | {s['2xx']} | {s['4xx']} | {s['5xx']} |"
              for label, s in rows]
    if failures:
        lines += ["", "| failed check | count | first seen |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {examples[k].replace('|', '/').replace(chr(10), ' ')} |"
                  for k, v in failures.most_common()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures or total["5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
