"""The project's import graph, read from the source with ``ast`` (nothing is imported).

Two users: tests/test_architecture.py (no import cycle) and :mod:`pipeline.stage_deps` (each dvc.yaml stage's
code ``deps`` are the files its entry module ``stages/<stage>.py`` imports, directly or not).

Every ``import`` statement counts, lazy ones inside functions included: they run sooner or later. Relative
imports are resolved against the importing module's package. Each import also records the top-level function
or class whose body holds it and whether it sits under ``if TYPE_CHECKING:`` (it never runs), so that
:func:`closure` can leave out what a given process does not execute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("pipeline", "stages", "benchmarks")


@dataclass(frozen=True)
class Import:
    """One project module imported by a module's source."""

    module: str  # dotted name of the imported project module
    scope: str | None  # the top-level function or class whose body holds the import; None at module level
    type_checking: bool  # under ``if TYPE_CHECKING:``: only type checkers see it


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _owner(dotted: str, modules: dict[str, Path]) -> str | None:
    """The project module that defines ``dotted`` (``pipeline.io.read_json`` -> ``pipeline.io``), or None."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def scan_imports(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules that module ``name`` (source ``path``) imports, in source order.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``; ``import a.b`` imports
    ``a.b``. Names outside ``modules`` (the standard library, third-party packages) are left out.
    """
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise SyntaxError(f"{path}:{err.lineno}: {err.msg}") from err
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str | None]:
        if isinstance(node, ast.Import):
            return [_owner(a.name, modules) for a in node.names]
        base = node.module or ""
        if node.level:  # from . import x / from ..a import y
            parts = package.split(".")
            if node.level - 1 >= len(parts):
                raise ImportError(f"{path}:{node.lineno}: relative import beyond the top-level package")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        return [_owner(f"{base}.{a.name}", modules) or _owner(base, modules) for a in node.names]

    def visit(node: ast.AST, scope: str | None, type_checking: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for module in targets(node):
                if module is not None and module != name:
                    found.append(Import(module, scope, type_checking))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, scope, True)
            for child in node.orelse:
                visit(child, scope, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            inner = scope
            if scope is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = child.name
            visit(child, inner, type_checking)

    visit(tree, None, False)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (lazy and ``TYPE_CHECKING`` imports
    included: a cycle through them is still a knot for the reader)."""
    return {name: {i.module for i in scan_imports(name, path, modules)} for name, path in modules.items()}


def closure(entry: str, modules: dict[str, Path], skip: Iterable[tuple[str, str]] = ()) -> set[str]:
    """Every project module that running ``entry`` may execute: ``entry``, what it imports at run time
    (``TYPE_CHECKING`` imports left out), recursively, and the packages (``__init__.py``) above each.

    ``skip``: ``(module, scope)`` pairs whose imports are not followed -- a function known not to run in
    this process (e.g. another stage's branch of a dispatch table).
    """
    if entry not in modules:
        raise KeyError(f"{entry}: no such module among the project's packages")
    skipped = set(skip)
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent in modules:  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            todo.append(parent)
        for imp in scan_imports(name, modules[name], modules):
            if not imp.type_checking and (name, imp.scope) not in skipped:
                todo.append(imp.module)
    return seen
