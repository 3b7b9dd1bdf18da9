"""The HTTP API stays what clients were built against: the OpenAPI document of the
ingress, less its prose (descriptions), equals ``openapi_snapshot.json``. A change of
the API is a deliberate act: rewrite the snapshot with
``.venv/bin/python -m tests.unit.test_openapi_snapshot`` and review its diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("openapi_snapshot.json")


def without_prose(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_prose(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_prose(v) for v in node]
    return node


def current() -> dict[str, Any]:
    from configs.settings import Settings
    from deployments.http.app import create_app
    from pipelines.flow import Flow

    settings = Settings()
    # the document comes from the routes alone: no backend is called to build it
    return without_prose(create_app(Flow(settings, None, None, None), settings).openapi())


def test_api_unchanged() -> None:
    want = json.loads(SNAPSHOT.read_text())
    got = current()
    assert sorted(got["paths"]) == sorted(want["paths"])
    for path in want["paths"]:
        assert got["paths"][path] == want["paths"][path], path
    assert got["components"] == want["components"]
    assert got == want


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
