"""dvc.yaml's code ``deps``, derived from the imports instead of kept by hand.

A stage's code deps are the source files that ``python -m stages.<stage>`` may execute: the import closure
(:func:`pipeline.imports.closure`) of its entry module, lazy imports included. One exception: the runner's
dispatch table (``STAGES`` in pipeline/runner.py) maps each stage to a function that imports that stage's
library lazily; only the running stage's function is followed, or every stage would depend on every library.

A package folder is listed instead of its files when the stage imports every module in it; otherwise the
files are listed one by one. Empty files (an empty ``__init__.py``) are left out: they run nothing, and DVC
warns about an empty dep. Data deps (anything outside ``pipeline/`` and ``stages/``), other keys, comments
and order of dvc.yaml are left as they are. ``python -m stages.deps --check`` / ``--write`` run this.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.imports import closure, project_modules

CODE_PREFIXES = ("pipeline/", "stages/")
RUNNER = "pipeline.runner"
_CMD = re.compile(r"python -m (?P<module>[\w.]+)")
_STAGE = re.compile(r"^  (?P<name>[\w-]+):\s*(#.*)?$")
_DEPS = re.compile(r"^(?P<indent> +)deps:\s*(#.*)?$")
_ITEM = re.compile(r"^(?P<indent> +)- (?P<path>[^\s#:]+)(?P<comment>\s+#.*)?$")


class StageDepsError(ValueError):
    """dvc.yaml or the runner are not in the shape this module reads; the message names the file and line."""


@dataclass(frozen=True)
class Drift:
    """How one stage's listed code deps differ from its imports."""

    stage: str
    missing: tuple[str, ...]  # imported, not listed
    extra: tuple[str, ...]  # listed, not imported

    def __str__(self) -> str:
        lines = [f"stage {self.stage}:"]
        lines += [f"  imports {p} but does not list it" for p in self.missing]
        lines += [f"  lists {p} but does not import it" for p in self.extra]
        return "\n".join(lines)


def is_code(path: str) -> bool:
    return path.startswith(CODE_PREFIXES)


def runner_dispatch(root: Path) -> dict[str, str]:
    """Stage -> the function of ``STAGES`` in pipeline/runner.py that runs it (a dict literal of names)."""
    path = root / "pipeline" / "runner.py"
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "STAGES":
            value = node.value
            if not isinstance(value, ast.Dict) or not all(
                isinstance(k, ast.Constant) and isinstance(v, ast.Name)
                for k, v in zip(value.keys, value.values, strict=True)
            ):
                raise StageDepsError(
                    f"{path}:{node.lineno}: STAGES must be a dict literal of stage: function"
                )
            return {k.value: v.id for k, v in zip(value.keys, value.values, strict=True)}  # type: ignore[union-attr]
    raise StageDepsError(f"{path}: no STAGES dispatch table")


def _collapse(files: set[str], all_files: set[str]) -> list[str]:
    """``files`` with each folder whose .py files are all in ``files`` named once instead (largest first)."""
    folders = sorted({str(Path(f).parent) for f in all_files}, key=lambda d: (d.count("/"), d))
    listed, collapsed = set(files), []
    for folder in folders:
        if "/" not in folder or any(folder.startswith(c + "/") for c in collapsed):
            continue  # never a top-level package itself; a folder inside a listed one is listed already
        inside = {f for f in all_files if f.startswith(folder + "/")}
        if inside <= files:
            listed = (listed - inside) | {folder}
            collapsed.append(folder)
    return sorted(listed)


def expected_code_deps(root: Path, stage: str, entry: str) -> list[str]:
    """The code deps of ``stage`` (entry module ``entry``): its entry file first, then the rest sorted."""
    modules = project_modules(root, ("pipeline", "stages"))
    dispatch = runner_dispatch(root)
    skip = [(RUNNER, fn) for name, fn in dispatch.items() if name != stage]
    files = {str(modules[m].relative_to(root)) for m in closure(entry, modules, skip)}
    entry_file = str(modules[entry].relative_to(root))
    rest = _collapse(files - {entry_file}, {str(p.relative_to(root)) for p in modules.values()})
    return [entry_file, *(p for p in rest if not _empty(root / p))]


def _empty(path: Path) -> bool:
    """An empty file (``pipeline/__init__.py``) runs nothing and DVC warns about it as a dep: left out until it
    has content, when the check asks for it."""
    return path.is_file() and path.stat().st_size == 0


def _entries(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Stage -> (entry module, listed deps) from dvc.yaml."""
    path = root / "dvc.yaml"
    stages = yaml.safe_load(path.read_text()).get("stages") or {}
    out = {}
    for name, stage in stages.items():
        match = _CMD.fullmatch(str(stage.get("cmd", "")).strip())
        if match is None:
            raise StageDepsError(
                f"{path}: stage {name}: cmd must be 'python -m <module>', got {stage.get('cmd')!r}"
            )
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []]
        out[name] = (match["module"], deps)
    return out


def check(root: Path) -> list[Drift]:
    """Every stage of ``root``/dvc.yaml whose code deps differ (as sets) from its imports."""
    entries = _entries(root)
    drifts = []
    for name, (entry, deps) in entries.items():
        want = set(expected_code_deps(root, name, entry))
        have = {d for d in deps if is_code(d)}
        if want != have:
            drifts.append(Drift(name, tuple(sorted(want - have)), tuple(sorted(have - want))))
    return drifts


def rewrite(root: Path) -> str:
    """The text of ``root``/dvc.yaml with each stage's code deps replaced by its imports' files.

    Only the ``- pipeline/...`` and ``- stages/...`` lines of each ``deps:`` list change (the generated ones
    first, data deps after them in their order, with their comments); everything else is kept byte for byte.
    The result is checked to load to the same YAML apart from those deps.
    """
    path = root / "dvc.yaml"
    text = path.read_text()
    entries = _entries(root)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    in_stages = False
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.strip() and not line.startswith(" "):
            in_stages, stage = line.rstrip() == "stages:", None
            continue
        if in_stages and (m := _STAGE.match(line)):
            stage = m["name"]
            continue
        if stage is None or not (m := _DEPS.match(line)):
            continue
        code: dict[str, str] = {}
        kept: list[str] = []
        indent = None
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(m["indent"] + " ")):
            item = _ITEM.match(lines[i])
            if item and is_code(item["path"]):
                indent = indent or item["indent"]
                code[item["path"]] = item["comment"] or ""
            else:
                kept.append(lines[i])
            i += 1
        indent = indent or m["indent"] + "  "
        entry = entries[stage][0]
        out += [f"{indent}- {p}{code.get(p, '')}\n" for p in expected_code_deps(root, stage, entry)]
        out += kept
    new = "".join(out)
    _same_but_code_deps(yaml.safe_load(text), yaml.safe_load(new), path)
    return new


def _same_but_code_deps(old: dict, new: dict, path: Path) -> None:
    def strip(doc: dict) -> dict:
        stages = {
            name: {
                **stage,
                "deps": [d for d in stage.get("deps") or [] if not (isinstance(d, str) and is_code(d))],
            }
            for name, stage in (doc.get("stages") or {}).items()
        }
        return {**doc, "stages": stages}

    if strip(old) != strip(new):
        raise StageDepsError(f"{path}: rewriting the code deps would change other content; left it as it was")
