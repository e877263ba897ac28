"""The code's shape (issue 18): no import cycle between the project's modules, and source files a reader holds
in one sitting. Both scan the source with ``ast`` (pipeline/imports.py); nothing is imported."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from pipeline.imports import import_graph, project_modules

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400  # pipeline/ and stages/


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (first module repeated at the end), or [] when there is none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return []


def test_the_cycle_finder_finds_a_known_cycle(tmp_path: Path) -> None:
    for name, body in {
        "a": "from pipeline.b import f\n",
        "b": "def f():\n    from pipeline.c import g\n",
        "c": "import pipeline.a\n",
        "d": "from pipeline.a import x\n",
    }.items():
        (tmp_path / "pipeline").mkdir(exist_ok=True)
        (tmp_path / "pipeline" / f"{name}.py").write_text(body)
    graph = import_graph(project_modules(tmp_path))
    assert graph["pipeline.d"] == {"pipeline.a"}
    cycle = find_cycle(graph)
    assert sorted(set(cycle)) == ["pipeline.a", "pipeline.b", "pipeline.c"] and cycle[0] == cycle[-1]
    del graph["pipeline.c"]
    assert find_cycle(graph) == []


def test_no_import_cycle_between_the_project_modules() -> None:
    modules = project_modules(ROOT)
    assert "pipeline.training.train" in modules and "stages.train" in modules
    assert find_cycle(import_graph(modules)) == []


@pytest.mark.parametrize("package", ["pipeline", "stages"])
def test_no_source_file_over_400_lines(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
