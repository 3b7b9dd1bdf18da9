"""The OpenAPI document of the ingress: every ``$ref`` resolves from the document root,
so schema-driven clients and fuzzers can build each route's body (no Ray needed)."""

from __future__ import annotations

from typing import Any

import pytest

from configs.settings import Settings
from deployments.http.app import create_app
from pipelines.flow import Flow


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    settings = Settings()
    # the document comes from the routes alone: no backend is called to build it
    return create_app(Flow(settings, None, None, None), settings).openapi()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"{ref} does not resolve"
        node = node[token]
    return node


def test_every_ref_resolves(doc):
    found = refs(doc)
    assert found
    for ref in set(found):
        assert isinstance(resolve(doc, ref), dict)
    assert "$defs" not in str(doc)


def test_every_post_route_has_a_resolvable_body(doc):
    bodies = 0
    for path, ops in doc["paths"].items():
        op = ops.get("post")
        if not op:
            continue
        content = op["requestBody"]["content"]
        if path.endswith("/import"):  # JSON Lines: one face (an ExportLine) per line
            assert set(content) == {"application/x-ndjson"}
            line = resolve(doc, content["application/x-ndjson"]["schema"]["$ref"])
            assert {"id", "model", "embedding"} <= set(line["required"])
            continue
        assert set(content) == {"application/json", "multipart/form-data"}, path
        schema = resolve(doc, content["application/json"]["schema"]["$ref"])
        assert schema["type"] == "object" and schema["properties"], path
        bodies += 1
    assert bodies >= 13


def test_batch_items_resolve_to_their_model(doc):
    op = doc["paths"]["/v1/collections/{collection}/faces:batch"]["post"]
    body = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    item = resolve(doc, body["properties"]["items"]["items"]["$ref"])
    # an item is an image or an embedding
    assert {"img", "embedding", "person_id"} <= set(item["properties"])


def test_models_sharing_a_name_stay_distinct(doc):
    # /v1/verify and the DeepFace-compatible /verify take different bodies
    def body_of(path: str) -> dict[str, Any]:
        op = doc["paths"][path]["post"]
        return resolve(doc, op["requestBody"]["content"]["application/json"]["schema"]["$ref"])

    assert "img1" in body_of("/v1/verify")["properties"]
    assert "distance_metric" in body_of("/verify")["properties"]
    assert "distance_metric" not in body_of("/v1/verify")["properties"]


def test_listing_routes_document_their_pages_and_streams(doc):
    persons = doc["paths"]["/v1/collections/{collection}/persons"]["get"]
    page = resolve(doc, persons["responses"]["200"]["content"]["application/json"]["schema"]
                   ["$ref"])
    assert {"persons", "next_cursor"} <= set(page["properties"])
    params = {p["name"]: p for p in doc["paths"]["/v1/collections/{collection}/faces"]["get"]
              ["parameters"]}
    assert {"person_id", "limit", "cursor"} <= set(params)
    assert params["limit"]["schema"]["maximum"] == 1000
    export = doc["paths"]["/v1/collections/{collection}/export"]["get"]["responses"]["200"]
    assert set(export["content"]) == {"application/x-ndjson"}
    assert "patch" in doc["paths"]["/v1/collections/{collection}/persons/{person_id}"]
