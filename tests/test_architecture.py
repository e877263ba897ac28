"""The code's shape (issue 18): no import cycle between the project's modules, and source files a reader holds
in one sitting. Both scan the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "benchmarks")
MAX_LINES = 400  # pipeline/ and stages/


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (lazy imports inside functions count:
    they run sooner or later, and a cycle through them is still a knot for the reader)."""

    def owner(dotted: str) -> str | None:  # ``pipeline.io.read_json`` -> ``pipeline.io``
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(owner(f"{node.module}.{a.name}") or owner(node.module) for a in node.names)
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


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
    modules = project_modules()
    assert "pipeline.training.trainer" in modules and "stages.train" in modules
    assert find_cycle(import_graph(modules)) == []


@pytest.mark.parametrize("package", ["pipeline", "stages"])
def test_no_source_file_over_400_lines(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
