"""The artefact layout: every path of dvc.yaml's stages is named by ``Layout.project``, and only there."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import PROJECT_ROOT
from pipeline.layout import Layout
from pipeline.runner import STAGES

CODE = ("pipeline/", "stages/")


def _names(entries: list) -> list[str]:
    """dvc.yaml list entries: plain strings or one-key mappings (``path: {cache: false}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def _layout_paths(layout: Layout) -> dict[str, str]:
    fields = {name: str(getattr(layout, name)) for name in Layout.__dataclass_fields__}
    return {**fields, "items": str(layout.items), "sequences": str(layout.sequences)}


def test_every_dvc_artefact_is_a_layout_path() -> None:
    known = set(_layout_paths(Layout.project(Path())).values())
    for name, stage in _dvc_stages().items():
        outs = (
            _names(stage.get("outs", [])) + _names(stage.get("metrics", [])) + _names(stage.get("plots", []))
        )
        data_deps = [d for d in _names(stage["deps"]) if not d.startswith(CODE)]
        for path in outs + data_deps:
            assert path in known, f"stage {name}: {path} is not named by Layout.project"


def test_every_layout_artefact_is_a_dvc_output() -> None:
    outs = {
        path
        for stage in _dvc_stages().values()
        for key in ("outs", "metrics", "plots")
        for path in _names(stage.get(key, []))
    }
    paths = _layout_paths(Layout.project(Path()))
    untracked = {"checkpoints", "items", "sequences"}  # a cache; files inside data/processed
    assert {k for k, v in paths.items() if v not in outs} == untracked


def test_each_dvc_stage_runs_through_run_stage_and_depends_on_the_wiring() -> None:
    stages = _dvc_stages()
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        deps = _names(stage["deps"])
        assert {"pipeline/layout.py", "pipeline/runner.py", f"stages/{name}.py"} <= set(deps), name


def test_flat_layout_puts_shared_data_and_run_outputs_apart(tmp_path: Path) -> None:
    layout = Layout.flat(tmp_path / "data", tmp_path / "run")
    assert layout.sequences == tmp_path / "data" / "processed" / "sequences.parquet"
    assert layout.teacher("text") == tmp_path / "data" / "supervision" / "teacher_text.parquet"
    assert layout.model_weights == tmp_path / "run" / "models" / "model.safetensors"
    assert Layout.flat(tmp_path).metrics == tmp_path / "metrics.json"


def test_the_outputs_a_stage_run_locks_are_its_dvc_outputs() -> None:
    from pipeline.layout import STAGE_OUTPUTS

    stages = _dvc_stages()
    assert set(STAGE_OUTPUTS) == set(stages)
    layout = Layout.project(Path())
    for name, stage in stages.items():
        outs = {p for key in ("outs", "metrics", "plots") for p in _names(stage.get(key, []))}
        locked = {str(p) for p in layout.outputs(name) if p != layout.checkpoints}  # a cache, not an out
        assert locked == outs, name
