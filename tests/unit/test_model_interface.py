"""The model interface and its layering: one base and one registry keyed by task,
request-time model code that never imports the install-time part, and settings
that import no model code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.errors import UnknownModel
from configs.settings import DEFAULT_FUSION_WEIGHTS
from pipelines.models import (AttributeModel, DetectorModel, EmbedderModel, InferenceModel,
                              ModelContext, ModelTask)
from pipelines.registry import ATTRIBUTES, DETECTORS, EMBEDDERS, REGISTRY, build

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_request_time_model_code_never_imports_the_install_part():
    request_time = [p for p in (REPO / "pipelines").rglob("*.py")
                    if "install" not in p.relative_to(REPO / "pipelines").parts]
    assert len(request_time) > 15
    for path in request_time:
        bad = {m for m in _imports(path) if m.startswith("pipelines.install")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_settings_import_no_model_code():
    for path in (REPO / "configs").glob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] == "pipelines"}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_one_registry_keyed_by_task():
    assert set(REGISTRY) == set(ModelTask)
    ctx = ModelContext(fusion_weights=DEFAULT_FUSION_WEIGHTS)
    for task, names, base in ((ModelTask.DETECT, ["blazeface", "dlib-hog"], DetectorModel),
                              (ModelTask.EMBED, ["dlib", "mfn512", "dlib+mfn512"], EmbedderModel),
                              (ModelTask.ATTRIBUTE, list(ATTRIBUTES), AttributeModel)):
        for name in names:
            model = build(task, name, ctx)  # built, not loaded: no weights are read
            assert isinstance(model, InferenceModel) and isinstance(model, base)
            assert model.task is task and model.name
    assert set(DETECTORS) and set(EMBEDDERS)
    with pytest.raises(UnknownModel, match="unknown detector"):
        build(ModelTask.DETECT, "dlib", ctx)
    with pytest.raises(UnknownModel, match="unknown action"):
        build(ModelTask.ATTRIBUTE, "blazeface", ctx)


def test_info_says_what_to_feed_each_model():
    ctx = ModelContext(fusion_weights=DEFAULT_FUSION_WEIGHTS)
    fused = build(ModelTask.EMBED, "dlib+mfn512", ctx).info()
    assert fused["name"] == "dlib+mfn512" and fused["dim"] == 128 + 512
    assert [c["size"] for c in fused["chip_specs"]] == [150, 112]
    assert (fused["chip_size"], fused["chip_padding"]) == (150, 0.25)
    live = build(ModelTask.ATTRIBUTE, "anti_spoofing", ctx).info()
    assert live["action"] == "anti_spoofing" and live["name"] == "fr_liveness"
    assert build(ModelTask.DETECT, "blazeface", ctx).info()["chip_specs"] == []
