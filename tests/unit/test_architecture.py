"""The shape of the code: the import contract between the parts holds (import-linter,
contracts in pyproject.toml), no module imports itself round a circle, and no source
file outgrows a reader (about 600 lines)."""

from __future__ import annotations

import graphlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("configs", "pipelines", "index", "deployments", "facefleet", "bench")
MAX_LINES = 600


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(REPO))
    # imports under ``if TYPE_CHECKING`` never run, so they cannot make a circle at run time
    return grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)


def cycles(graph: grimp.ImportGraph, most: int = 20) -> list[list[str]]:
    """Import circles among the modules: graphlib names one circle at a time; dropping
    its last edge and asking again lists the others."""
    deps = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    found: list[list[str]] = []
    while len(found) < most:
        try:
            graphlib.TopologicalSorter(deps).prepare()
            return found
        except graphlib.CycleError as exc:
            circle = exc.args[1]
            found.append(circle)
            deps[circle[-2]].discard(circle[-1])
    return found


def test_no_import_cycle(graph: grimp.ImportGraph) -> None:
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_import_contracts_hold() -> None:
    """The allowed direction between the parts (docs/architecture.md): the contracts in
    pyproject.toml's [tool.importlinter], checked by ``lint-imports``."""
    run = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
                          "--no-logo"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_no_source_file_over_the_limit() -> None:
    roots = [REPO / p for p in PACKAGES] + [REPO / "tests"]
    long = {str(f.relative_to(REPO)): n for root in roots for f in root.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
