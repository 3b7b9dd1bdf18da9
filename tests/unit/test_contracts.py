"""Every backend offers every operation of its contract (``pipelines.flow.contracts``),
with the contract's parameters, and the Serve backends only call methods the
deployments have: a renamed or missing operation fails here, not in a request."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

from deployments.serve import backends
from pipelines.flow import contracts

REPO = Path(__file__).resolve().parents[2]

PAIRS = [
    (contracts.DetectBackend, backends.ServeDetector),
    (contracts.DetectBackend, backends.LocalDetector),
    (contracts.EmbedBackend, backends.ServeEmbedder),
    (contracts.EmbedBackend, backends.LocalEmbedder),
    (contracts.AnalyzeBackend, backends.ServeAnalyzer),
    (contracts.AnalyzeBackend, backends.LocalAnalyzer),
    (contracts.GalleryBackend, backends.ServeGallery),
    (contracts.GalleryBackend, backends.LocalGallery),
]


def operations(protocol: type) -> dict[str, Any]:
    return {name: fn for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


def params(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("protocol,backend", PAIRS,
                         ids=[f"{b.__name__}" for _, b in PAIRS])
def test_a_backend_offers_its_whole_contract(protocol, backend):
    ops = operations(protocol)
    assert ops, protocol
    for name, fn in ops.items():
        impl = getattr(backend, name, None)
        assert impl is not None, f"{backend.__name__} lacks {name}"
        assert params(impl) == params(fn), (backend.__name__, name)
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(fn), \
            (backend.__name__, name, "a stage call returns a Ref at once; the rest are async")
    assert "__getattr__" not in vars(backend)


def _handle_calls(cls: type) -> set[str]:
    """The deployment methods a Serve backend calls (``self._h.NAME.remote``)."""
    tree = ast.parse(inspect.getsource(cls))
    return {node.value.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "remote"
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "_h"}


def test_the_serve_backends_call_methods_the_deployments_have():
    from deployments.serve.gallery import Gallery
    from deployments.serve.models import Analyzer, Detector, Embedder

    for backend, deployment in [(backends.ServeDetector, Detector),
                                (backends.ServeEmbedder, Embedder),
                                (backends.ServeAnalyzer, Analyzer),
                                (backends.ServeGallery, Gallery)]:
        cls = deployment.func_or_class
        calls = _handle_calls(backend)
        assert calls, backend
        missing = sorted(c for c in calls if not callable(getattr(cls, c, None)))
        assert not missing, (backend.__name__, missing)


def test_the_flow_imports_nothing_above_it():
    """``pipelines/flow`` is plain code: no Ray, Serve, FastAPI, index or deployments."""
    banned = ("ray", "fastapi", "starlette", "index", "deployments")
    for path in (REPO / "pipelines" / "flow").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in banned, (path.name, name)
