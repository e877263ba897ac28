"""Experiment configs hold overrides only: ``base:`` names the params file they are merged over."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import PROJECT_ROOT, ConfigError, load_params
from pipeline.config.files import merge_params, params_chain, read_params_file


def _write(path: Path, data: dict | list) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_mappings_merge_and_other_values_replace() -> None:
    base = {"train": {"epochs": 30, "kd": {"tau": 1.5, "code_weight": 0.1}, "modalities": ["text", "image"]}}
    over = {"train": {"kd": {"tau": 2.0}, "modalities": ["text"]}}
    assert merge_params(base, over) == {
        "train": {"epochs": 30, "kd": {"tau": 2.0, "code_weight": 0.1}, "modalities": ["text"]}
    }
    assert base["train"]["kd"]["tau"] == 1.5  # not modified in place


def test_an_overrides_file_is_its_base_with_the_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "params.yaml", {"train": {"epochs": 30, "lr": 0.003}, "eval": {"ks": [5, 10]}})
    (tmp_path / "configs").mkdir()
    config = _write(tmp_path / "configs" / "x.yaml", {"base": "../params.yaml", "train": {"epochs": 5}})
    p = load_params(config)
    assert (p.train.epochs, p.train.lr, p.eval.ks) == (5, 0.003, [5, 10])
    chained = _write(tmp_path / "configs" / "y.yaml", {"base": "x.yaml", "eval": {"ks": [20]}})
    assert (load_params(chained).train.epochs, load_params(chained).eval.ks) == (5, [20])
    assert params_chain(chained) == [chained, config.resolve(), (tmp_path / "params.yaml").resolve()]
    _write(tmp_path / "params.yaml", ["train", "eval"])  # a base that is not a mapping of sections
    with pytest.raises(ConfigError, match=r"params\.yaml: a base params file must be a mapping"):
        load_params(chained)


def test_bad_overrides_name_the_file_and_key(tmp_path: Path) -> None:
    _write(tmp_path / "params.yaml", {"train": {"epochs": 30}})
    typo = _write(tmp_path / "typo.yaml", {"base": "params.yaml", "train": {"epoch": 5}})
    with pytest.raises(ConfigError, match=r"(?s)typo\.yaml.*train\.epoch: unknown key"):
        load_params(typo)
    missing = _write(tmp_path / "missing.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: params file not found"):
        load_params(missing)
    loop = _write(tmp_path / "loop.yaml", {"base": "loop.yaml"})
    with pytest.raises(ConfigError, match="a cycle"):
        load_params(loop)
    with pytest.raises(ConfigError, match="expected the path"):
        load_params(_write(tmp_path / "bad.yaml", {"base": 3}))


def test_beauty_config_holds_overrides_of_the_defaults_only() -> None:
    path = PROJECT_ROOT / "configs" / "beauty.yaml"
    own = yaml.safe_load(path.read_text())
    assert own["base"] == "defaults"
    base = read_params_file(PROJECT_ROOT / "params.yaml")
    for section, keys in own.items():
        if section == "base":
            continue
        for key, value in keys.items():
            assert base[section][key] != value, f"{section}.{key} repeats params.yaml's value"
    p = load_params(path)
    assert p.train.epochs == 20 and p.train.modalities == ["text"]
    assert p.correlate == load_params().correlate  # not overridden: params.yaml's


def test_params_cli_writes_the_merged_file(tmp_path: Path, capsys) -> None:
    from stages.params import parse_args, run

    run(parse_args(["--config", str(PROJECT_ROOT / "configs" / "beauty.yaml")]))
    merged = _write(tmp_path / "params.yaml", yaml.safe_load(capsys.readouterr().out))
    assert "base" not in yaml.safe_load(merged.read_text())
    assert load_params(merged) == load_params(PROJECT_ROOT / "configs" / "beauty.yaml")


def test_base_defaults_is_the_shipped_params_yaml_whatever_params_yaml_now_holds(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", {"base": "defaults", "train": {"epochs": 7}})
    expected = read_params_file(PROJECT_ROOT / "params.yaml")
    expected["train"]["epochs"] = 7
    assert load_params(config) == load_params(_write(tmp_path / "full.yaml", expected))
    # a params.yaml beside it (e.g. a merged Beauty file written for DVC) does not leak in
    _write(tmp_path / "params.yaml", {"train": {"epochs": 99, "lr": 0.5}})
    assert load_params(config).train.lr == load_params().train.lr


def test_params_cli_out_writes_atomically_and_refuses_its_own_inputs(tmp_path: Path) -> None:
    from stages.params import parse_args, run

    out = tmp_path / "params.yaml"
    run(parse_args(["--config", str(PROJECT_ROOT / "configs" / "beauty.yaml"), "--out", str(out)]))
    assert load_params(out) == load_params(PROJECT_ROOT / "configs" / "beauty.yaml")
    base = _write(tmp_path / "base.yaml", {"train": {"epochs": 3}})
    config = _write(tmp_path / "x.yaml", {"base": "base.yaml", "train": {"lr": 0.001}})
    with pytest.raises(ConfigError, match=r"base\.yaml: .*x\.yaml reads that file"):
        run(parse_args(["--config", str(config), "--out", str(base)]))
    assert yaml.safe_load(base.read_text()) == {"train": {"epochs": 3}}  # untouched


def test_params_cli_explains_a_redirect_onto_its_own_base(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = _write(tmp_path / "params.yaml", {"train": {"epochs": 3}})
    config = _write(tmp_path / "x.yaml", {"base": "params.yaml", "train": {"lr": 0.001}})
    with base.open("w") as redirect:  # what `> params.yaml` does: the file is emptied before the command runs
        proc = subprocess.run(
            [sys.executable, "-m", "stages.params", "--config", str(config)],
            cwd=PROJECT_ROOT,
            stdout=redirect,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert proc.returncode == 2
    assert f"stdout is {base}" in proc.stderr and "--out" in proc.stderr
