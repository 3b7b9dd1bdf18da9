"""configs/rayservice.yaml is a RayService the Kubernetes API server would accept.

Validated against the ``openAPIV3Schema`` of KubeRay's own RayService CRD
(``../shared/k8s/ray.io_rayservices.yaml``, copied unchanged), as the API server
applies it, with the Kubernetes extensions of OpenAPI turned into what they
mean in JSON Schema:

- ``kubectl apply`` validates fields strictly (unknown fields are an error,
  kubectl >= 1.27), so every object schema that lists ``properties`` and neither
  ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` refuses
  others: a misspelt or misplaced field fails here;
- ``nullable: true`` admits null; ``x-kubernetes-int-or-string`` admits both;
- ``x-kubernetes-list-type: map`` / ``set``: items unique by their
  ``x-kubernetes-list-map-keys`` / unique (checked after the schema);
- ``x-kubernetes-validations`` are CEL rules, which this test cannot run: it
  checks instead that the manifest sets none of the fields that carry one.

Also checks that ``python -m configs.make_rayservice`` writes the file as it is.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from configs import make_rayservice

REPO = Path(__file__).resolve().parent.parent.parent
CRD = REPO.parent / "shared" / "k8s" / "ray.io_rayservices.yaml"
MANIFEST = REPO / "configs" / "rayservice.yaml"


def _crd_schema(version: str) -> dict:
    if not CRD.is_file():
        pytest.skip(f"KubeRay's CRD not found at {CRD}")
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "RayService"
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v["served"]
            return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"the CRD does not serve {version}")


def strict(schema: dict) -> dict:
    """The CRD's schema as a JSON Schema with Kubernetes' meaning (module doc)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
            return
        if not isinstance(node, dict):
            return
        for key in ("properties", "patternProperties"):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            walk(node.get(key, []))
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node["type"] = ["integer", "string"]
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False

    walk(s)
    return s


def _list_rules(schema: dict, doc, path: str, errors: list[str], cel: list[str]) -> None:
    """Check Kubernetes' list types and note CEL rules on fields the manifest sets."""
    if doc is None:
        return
    if schema.get("x-kubernetes-validations"):
        cel.append(path)
    if isinstance(doc, list):
        kind = schema.get("x-kubernetes-list-type")
        if kind == "map":
            keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"])
                    for item in doc]
            if len(set(keys)) != len(keys):
                errors.append(f"{path}: duplicate keys {keys}")
        elif kind == "set" and len({yaml.safe_dump(x) for x in doc}) != len(doc):
            errors.append(f"{path}: duplicate items")
        for i, item in enumerate(doc):
            _list_rules(schema.get("items", {}), item, f"{path}[{i}]", errors, cel)
    elif isinstance(doc, dict):
        props = schema.get("properties", {})
        for k, v in doc.items():
            sub = props.get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _list_rules(sub, v, f"{path}.{k}", errors, cel)


def test_rayservice_manifest_matches_kuberays_crd():
    manifest = yaml.safe_load(MANIFEST.read_text())
    api_group, version = manifest["apiVersion"].split("/")
    assert api_group == "ray.io" and manifest["kind"] == "RayService"
    schema = _crd_schema(version)
    validator = jsonschema.Draft7Validator(strict(schema))
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(manifest)]
    assert not problems, "\n".join(problems)
    errors: list[str] = []
    cel: list[str] = []
    _list_rules(schema, manifest, "", errors, cel)
    assert not errors, errors
    assert not cel, f"fields with CEL rules this test cannot check, review by hand: {cel}"


def test_the_strict_schema_refuses_a_misplaced_field():
    """The check has teeth: a typo and a field one level off are refused, as
    ``kubectl apply`` refuses them."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    validator = jsonschema.Draft7Validator(strict(_crd_schema("v1")))
    typo = copy.deepcopy(manifest)
    typo["spec"]["serveConfigv2"] = typo["spec"].pop("serveConfigV2")
    misplaced = copy.deepcopy(manifest)
    misplaced["spec"]["rayClusterConfig"]["headGroupSpec"]["replicas"] = 1
    wrong_type = copy.deepcopy(manifest)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    for bad in (typo, misplaced, wrong_type):
        assert list(validator.iter_errors(bad))
    assert not list(validator.iter_errors(manifest))


def test_make_rayservice_writes_the_manifest_as_committed():
    assert make_rayservice.render() == MANIFEST.read_text(), (
        "configs/rayservice.yaml is stale: run `python -m configs.make_rayservice`")
