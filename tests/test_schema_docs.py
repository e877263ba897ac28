"""The shipped params.yaml and the README's parameter table are written from the schema (issue 24): every key
once, in pipeline/config/; these tests fail while a generated file differs from what the schema gives."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import PROJECT_ROOT, ConfigError, CorrelateParams, Params, TrainParams
from pipeline.schema_docs import (
    TABLE_END,
    TABLE_START,
    documents,
    drift,
    entries,
    render_params_yaml,
    render_table,
    type_text,
    with_table,
    yaml_value,
)
from stages.schema import run


@pytest.mark.parametrize("name", ["params.yaml", "README.md"])
def test_the_generated_files_follow_the_schema(name: str) -> None:
    expected = documents(PROJECT_ROOT)[PROJECT_ROOT / name]
    diff = drift(name, expected, (PROJECT_ROOT / name).read_text())
    assert diff is None, f"{name} differs from the schema; run python -m stages.schema --write\n{diff}"


def test_a_deleted_key_and_a_changed_default_are_caught() -> None:
    text = render_params_yaml()
    lines = text.splitlines(keepends=True)
    start = lines.index("  text:                      # the text teacher\n")
    gone = next(i for i in range(start, len(lines)) if lines[i] == "    precision: auto\n")
    planted = "".join(lines[:gone] + lines[gone + 1 :])
    # read through the schema the planted file means the same (the key is filled in) ...
    assert Params.model_validate(yaml.safe_load(planted)) == Params()
    # ... the textual comparison names the missing line
    diff = drift("params.yaml", text, planted)
    assert diff is not None and "\n+    precision: auto" in diff and "params.yaml (committed)" in diff
    changed = text.replace("\n  lr: 0.003 ", "\n  lr: 0.002 ")
    assert changed != text
    diff = drift("params.yaml", text, changed)
    assert diff is not None and "\n-  lr: 0.002" in diff and "\n+  lr: 0.003" in diff
    assert drift("params.yaml", text, text) is None


def test_a_deleted_table_row_is_caught() -> None:
    readme = with_table(f"intro\n{TABLE_START}\n{TABLE_END}\nrest\n", render_table())
    row = next(line for line in readme.splitlines() if line.startswith("| `train.output` |"))
    assert "`id_teacher`" in row
    diff = drift("README.md", readme, readme.replace(row + "\n", ""))
    assert diff is not None and f"\n+{row}" in diff


def test_the_table_goes_between_the_markers_and_missing_markers_are_named() -> None:
    readme = f"intro\n{TABLE_START}\nold table\n{TABLE_END}\nrest\n"
    assert with_table(readme, "| new |\n") == f"intro\n{TABLE_START}\n| new |\n{TABLE_END}\nrest\n"
    with pytest.raises(ConfigError, match=r"README.md: no <!-- params:start --> ... <!-- params:end -->"):
        with_table("no markers\n", "| new |\n")


def test_every_key_has_a_description_and_a_row() -> None:
    table = render_table()
    keys = [key for key, _, _ in entries()]
    assert len(keys) > 100 and "embed.text.precision" in keys and "train.bsarec.window" in keys
    for key, field, _ in entries():
        assert field.description, f"{key} has no description"
        assert f"`{key}`" in table


def test_types_and_bounds_are_read_from_the_schema() -> None:
    assert type_text(TrainParams.model_fields["dropout"]) == "float in [0, 1)"
    assert type_text(TrainParams.model_fields["lr"]) == "float > 0"
    assert type_text(TrainParams.model_fields["backbone"]) == "`sasrec`, `gru4rec`, `bsarec`, `session_graph`"
    assert type_text(CorrelateParams.model_fields["ae_epochs"]) == "int or `null` in [1, 1,000,000]"
    assert type_text(TrainParams.model_fields["modalities"]) == "list of `text`, `image`"


@pytest.mark.parametrize("value", [1e-8, 0.003, 10.0, 5, True, None, "../a b.txt", [5, 10], ["text"], "1e-5"])
def test_values_are_written_as_yaml_that_reads_back_the_same(value: object) -> None:
    assert yaml.safe_load(f"k: {yaml_value(value)}") == {"k": value}


def test_check_reports_drift_and_write_repairs_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("params.yaml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("    precision: auto\n", "", 1))
    assert run(argparse.Namespace(check=True, write=False), tmp_path) == 1
    assert "+    precision: auto" in capsys.readouterr().out
    assert run(argparse.Namespace(check=False, write=True), tmp_path) == 0
    assert params.read_text() == (PROJECT_ROOT / "params.yaml").read_text()
    assert run(argparse.Namespace(check=True, write=False), tmp_path) == 0
