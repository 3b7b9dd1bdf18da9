"""The store and gallery split by responsibility: every backend offers what the
``Store`` Protocols state, the index part imports nothing above it and has no
import circle, and the access service (keys, audit) applies its retention."""

from __future__ import annotations

import ast
import asyncio
import inspect
import time
from pathlib import Path

from index.access_service import AccessService
from index.audit import Actor, AuditAction
from index.store import PostgresStore, SqliteStore, protocols
from index.store.pgvector import PgvectorStore

INDEX = Path(__file__).resolve().parents[2] / "index"


def protocol_methods() -> set[str]:
    names: set[str] = set()
    for _, cls in inspect.getmembers(protocols, inspect.isclass):
        if cls.__module__ == protocols.__name__:
            names |= {n for n, v in vars(cls).items()
                      if callable(v) and not n.startswith("_")}
    return names


def test_every_backend_implements_every_store_protocol_method():
    wanted = protocol_methods()
    assert {"add_faces", "changes_since", "append_audit", "key_table"} <= wanted
    for backend in (SqliteStore, PostgresStore, PgvectorStore):
        missing = {n for n in wanted if not callable(getattr(backend, n, None))}
        assert not missing, (backend.__name__, missing)


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _module(path: Path) -> str:
    parts = list(path.relative_to(INDEX.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> list[str] | None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                return [*path, mod, dep]
            if state.get(dep) is None and dep in graph:
                found = visit(dep, [*path, mod])
                if found:
                    return found
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state:
            found = visit(mod, [])
            if found:
                return found
    return None


def _part(mod: str) -> str:
    """A module's part: the package it is in below ``index`` (index.store,
    index.gallery), or the module itself."""
    parts = mod.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (INDEX / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return mod


def test_index_imports_nothing_above_it_and_has_no_import_circle():
    files = sorted(INDEX.rglob("*.py"))
    modules = {_module(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        deps = _imports(f)
        above = {m for m in deps if m.split(".")[0] == "deployments"
                 or m.startswith("pipelines.flow") or m.startswith("ray.serve")}
        assert not above, (f.name, above)
        # "from index.store.x import name" names the module; "from index import x" too
        graph[_module(f)] = {m for m in deps if m in modules}
    assert _circle(graph) is None, _circle(graph)
    # between parts: index.store as a whole neither imports a module that imports it
    # back (as index.store and index.pgvector_store did) nor the gallery
    parts: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        parts.setdefault(_part(mod), set()).update(_part(d) for d in deps)
    for part, deps in parts.items():
        deps.discard(part)
    assert _circle(parts) is None, _circle(parts)
    assert "index.gallery" not in parts["index.store"]
    assert "index.access_service" not in parts["index.store"]


def test_index_source_files_stay_small():
    sizes = {f.relative_to(INDEX.parent).as_posix(): len(f.read_text().splitlines())
             for f in INDEX.rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > 600} == {}


def test_access_service_applies_the_audit_retention(store):
    me = Actor("settings", "r1")
    for _ in range(3):  # apart in time, so a cutoff falls between them
        store.append_audit([me.entry(AuditAction.IDENTIFY, "c")])
        time.sleep(0.01)
    entries = store.audit_entries()
    assert len(entries) == 3

    async def run() -> tuple[int, int, list[dict]]:
        keep = AccessService(store)  # no retention: nothing is ever pruned
        kept = await keep.prune_audit(now=time.time() + 10 * 86400.0)
        keep.close()
        week = AccessService(store, retention_days=7.0)
        pruned = await week.prune_audit(now=entries[1].at + 7 * 86400.0)
        left = await week.audit_entries()
        week.close()
        return kept, pruned, left

    kept, pruned, left = asyncio.run(run())
    assert kept == 0
    assert pruned == 1
    assert [e["seq"] for e in left] == [e.seq for e in entries[1:]]
