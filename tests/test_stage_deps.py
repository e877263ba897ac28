"""dvc.yaml's code deps follow the imports (issue 24): each stage lists exactly the source files its entry
module may execute, so changing any of them makes ``dvc status`` name that stage."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.imports import closure, project_modules
from pipeline.stage_deps import StageDepsError, check, expected_code_deps, rewrite
from stages.deps import run

ROOT = Path(__file__).resolve().parent.parent


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    return root


def _copy_project(dst: Path) -> Path:
    for package in ("pipeline", "stages"):
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dst / "dvc.yaml")
    return dst


def test_every_stage_lists_exactly_what_it_imports() -> None:
    assert check(ROOT) == []
    assert rewrite(ROOT) == (ROOT / "dvc.yaml").read_text()  # --write leaves the committed file as it is


def test_bytecode_is_no_part_of_a_folder_dep() -> None:
    # Python writes __pycache__/ into the package folders dvc.yaml lists: DVC must not hash it
    assert {"__pycache__/", "*.pyc"} <= set((ROOT / ".dvcignore").read_text().split())


def test_the_artefact_readers_are_deps_of_exactly_the_stages_that_read_artefacts() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    readers = {name for name, stage in stages.items() if "pipeline/artifacts" in stage["deps"]}
    assert readers == {"embed", "correlate", "train", "evaluate", "recommend"}
    for name, stage in stages.items():  # every stage runs through these
        assert {"stages/__init__.py", "stages/_common.py", "pipeline/threads.py"} <= set(stage["deps"]), name


def test_closure_follows_lazy_relative_and_package_imports_but_not_type_checking(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/a.py": "from pipeline.pkg.b import f\n",
            "pipeline/pkg/__init__.py": "from pipeline import c\n",
            "pipeline/pkg/b.py": "def f():\n    from . import d\n",
            "pipeline/pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.e\n",
            "pipeline/c.py": "import os\n",
            "pipeline/e.py": "",
            "pipeline/runner.py": "def _x():\n    import pipeline.c\n\n\ndef _y():\n    import pipeline.e\n",
        },
    )
    modules = project_modules(root, ("pipeline",))
    assert closure("pipeline.a", modules) == {
        "pipeline",
        "pipeline.a",
        "pipeline.pkg",
        "pipeline.pkg.b",
        "pipeline.pkg.d",
        "pipeline.c",
    }
    assert closure("pipeline.runner", modules, skip=[("pipeline.runner", "_y")]) == {
        "pipeline",
        "pipeline.runner",
        "pipeline.c",
    }
    with pytest.raises(KeyError, match="pipeline.nope"):
        closure("pipeline.nope", modules)


def test_a_folder_is_listed_only_when_the_stage_imports_all_of_it(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/runner.py": 'STAGES = {"s": _s, "t": _t}\n\n\ndef _s():\n    import pipeline.all\n\n\n'
            "def _t():\n    import pipeline.part.one\n",
            "pipeline/all/__init__.py": "from pipeline.all import one, two\n",
            "pipeline/all/one.py": "",
            "pipeline/all/two.py": "",
            "pipeline/part/__init__.py": "",
            "pipeline/part/one.py": "X = 1\n",
            "pipeline/part/two.py": "X = 2\n",
            "stages/__init__.py": "import os\n",
            "stages/s.py": "from pipeline.runner import STAGES\n",
            "stages/t.py": "from pipeline.runner import STAGES\n",
        },
    )
    # the empty pipeline/__init__.py and pipeline/part/__init__.py run nothing: not listed
    common = ["pipeline/runner.py", "stages/__init__.py"]
    assert expected_code_deps(root, "s", "stages.s") == ["stages/s.py", "pipeline/all", *common]
    assert expected_code_deps(root, "t", "stages.t") == ["stages/t.py", "pipeline/part/one.py", *common]


def test_a_planted_drift_is_caught_and_write_mends_only_the_code_deps(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    original = (root / "dvc.yaml").read_text()
    # ingest gains a lazy import; evaluate's list loses threads.py; recommend lists a file it never imports
    with (root / "stages" / "ingest.py").open("a") as f:
        f.write("\n\ndef _later():\n    from pipeline.experiments import retention\n")
    lines = original.splitlines(keepends=True)
    evaluate = lines.index("  evaluate:\n")
    drop = lines.index("      - pipeline/threads.py\n", evaluate)
    recommend = lines.index("  recommend:\n")
    lines.insert(lines.index("    deps:\n", recommend) + 1, "      - pipeline/http.py    # planted\n")
    del lines[drop]
    (root / "dvc.yaml").write_text("".join(lines))

    drifts = {d.stage: d for d in check(root)}
    assert set(drifts) == {"ingest", "evaluate", "recommend"}
    assert "pipeline/experiments/retention.py" in drifts["ingest"].missing and not drifts["ingest"].extra
    assert (drifts["evaluate"].missing, drifts["evaluate"].extra) == (("pipeline/threads.py",), ())
    assert (drifts["recommend"].missing, drifts["recommend"].extra) == ((), ("pipeline/http.py",))
    assert "stage recommend:\n  lists pipeline/http.py but does not import it" == str(drifts["recommend"])
    assert run(argparse.Namespace(write=False, check=True), root) == 1

    assert run(argparse.Namespace(write=True, check=False), root) == 0
    assert check(root) == []
    mended = (root / "dvc.yaml").read_text()
    assert "pipeline/http.py    # planted" not in mended
    # only ingest's code deps differ from the committed file: data deps, comments and other keys are kept
    changed = [line for line in mended.splitlines() if line not in original.splitlines()]
    assert "      - pipeline/experiments/retention.py" in changed
    assert all(line.startswith("      - pipeline/") for line in changed), changed
    assert "      - data/processed/items.parquet    # the item-id map of the MLflow model\n" in mended
    assert run(argparse.Namespace(write=False, check=True), root) == 0


def test_a_stage_command_that_is_not_a_module_is_refused_by_name(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    text = (root / "dvc.yaml").read_text().replace("cmd: python -m stages.embed", "cmd: bash embed.sh")
    (root / "dvc.yaml").write_text(text)
    with pytest.raises(StageDepsError, match=r"dvc.yaml: stage embed: cmd must be 'python -m <module>'"):
        check(root)
    assert (root / "dvc.yaml").read_text() == text
