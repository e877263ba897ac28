"""Reliability of the params file and of the stage entry points (issue 15, items 5 and 6): an empty file,
code defaults vs the documented ones, duplicate keys, booleans where numbers belong, and one-line errors with
exit code 2 for I/O failures."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_PARAMS, ConfigError, Params, load_params, parse_params
from pipeline.io import write_json
from stages._common import main


# --------------------------------------------------------------------------------------------- 5. config
@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_empty_params_file_is_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml: the params file is empty"):
        load_params(f)


def test_code_defaults_equal_the_documented_params_file() -> None:
    """A partial params.yaml falls back on the code defaults: they must be the documented values (the
    repository's params.yaml, generated from the schema like the README's parameter table). Compared as raw
    YAML, every key: read through the schema, a key missing from the file would be filled in and pass."""
    documented = yaml.safe_load(DEFAULT_PARAMS.read_text())
    assert documented == Params().model_dump(mode="json")
    assert load_params(DEFAULT_PARAMS) == Params()
    train = Params().train
    assert (train.lr, train.warmup_epochs, train.cosine, train.epochs, train.batch_size) == (
        3e-3,
        1,
        True,
        30,
        256,
    )


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_lines(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 0.003\n  epochs: 3\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_params(f)
    assert "params.yaml: line 4: train.lr: duplicate key (first set at line 2)" in str(err.value)
    f.write_text("train:\n  epochs: 3\neval:\n  ks: [5]\ntrain:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"line 5: train: duplicate key \(first set at line 1\)"):
        load_params(f)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"data": {"kcore": True}}, "data.kcore: Input should be a valid integer (got true: a boolean"),
        ({"train": {"epochs": False}}, "train.epochs: Input should be a valid integer (got false: a boolean"),
        ({"train": {"lr": True}}, "train.lr: Input should be a valid number (got true: a boolean"),
        ({"eval": {"ks": [5, True]}}, "eval.ks.1: Input should be a valid integer (got true: a boolean"),
        ({"train": {"async_lr": {"step_epochs": [True]}}}, "train.async_lr.step_epochs.0: Input should be"),
        (
            {"embed": {"image": {"fetch_timeout_s": True}}},
            "embed.image.fetch_timeout_s: Input should be a valid",
        ),
    ],
)
def test_boolean_where_a_number_belongs_is_refused(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert fragment in str(err.value)


def test_numbers_still_coerce_as_before(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 3e-3\n  epochs: 7\n  dropout: 0\ndata:\n  kcore: 2\n  download: false\n")
    p = load_params(f)  # PyYAML reads 3e-3 as a string; ints stay valid for float fields
    assert (p.train.lr, p.train.epochs, p.train.dropout, p.data.kcore) == (0.003, 7, 0.0, 2)


# --------------------------------------------------------------------------------------------- 6. stage exits
def _exit(run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)  # main() changes to the project root; this puts the test's folder back after
    with pytest.raises(SystemExit) as info:
        main(run)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no traceback
    return err


def test_stage_os_error_is_one_line_naming_the_path_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only_folder() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "out.json"))

    err = _exit(read_only_folder, capsys, monkeypatch, tmp_path)
    assert err == f"error: {tmp_path}/ro/out.json: Permission denied\n"


def test_stage_full_disk_names_the_output_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "reports" / "metrics.json"
    target.parent.mkdir()
    target.write_text('{"old": 1}\n')

    def no_space(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

    monkeypatch.setattr(Path, "write_text", no_space)
    err = _exit(lambda: write_json(target, {"new": 2}), capsys, monkeypatch, tmp_path)
    assert err == f"error: {target}: cannot write (No space left on device)\n"
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}\n'  # the old output survives, no temporary file is left
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_stage_value_error_from_an_unreadable_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.artifacts import read_sequences

    bad = tmp_path / "sequences.parquet"
    bad.write_text("not parquet\nat all\n")
    err = _exit(lambda: read_sequences(bad), capsys, monkeypatch, tmp_path)
    assert err.startswith(f"error: {bad}: cannot be read as Parquet")


# --------------------------------------------------------------------------------------------- bounded parsing (issue 23)
def test_yaml_alias_bomb_is_refused_at_once_naming_the_line(tmp_path: Path) -> None:
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 strings
    f = tmp_path / "params.yaml"
    f.write_text("\n".join(lines) + "\ntrain:\n  epochs: 2\n")
    assert f.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"params\.yaml: line 2: YAML alias \*a0: aliases are not allowed"):
        load_params(f)
    assert time.perf_counter() - start < 5  # expanded by the duplicate-key walk, it ran for hours


def test_deeply_nested_params_file_is_refused_naming_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  modalities: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: line 2: nested deeper than 16 levels"):
        load_params(f)
    f.write_text(
        "base: defaults\ntrain:\n  modalities: " + "[" * 5000 + "]" * 5000 + "\n"
    )  # the base chain too
    with pytest.raises(ConfigError, match="nested deeper than 16 levels"):
        load_params(f)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        (
            "train.seed",
            "10000000000000000000",
            "train.seed: Input should be less than or equal to 4294967295",
        ),
        ("data.demo.seed", "-1", "data.demo.seed: Input should be greater than or equal to 0"),
        ("correlate.seed", "4294967296", "correlate.seed: Input should be less than or equal to 4294967295"),
        ("train.hidden", "1000000000000", "train.hidden: Input should be less than or equal to 65536"),
        (
            "train.max_len",
            "100000000000000000000",
            "train.max_len: Input should be less than or equal to 100000",
        ),
        (
            "data.demo.users",
            "1000000000000",
            "data.demo.users: Input should be less than or equal to 10000000",
        ),
    ],
)
def test_sizes_and_seeds_have_upper_bounds_named_with_the_key(
    tmp_path: Path, key: str, value: str, fragment: str
) -> None:
    f = tmp_path / "params.yaml"
    *parents, leaf = key.split(".")
    text = (
        "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents))
        + f"{'  ' * len(parents)}{leaf}: {value}\n"
    )
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(f)
    assert fragment in str(err.value)


def test_every_size_and_seed_has_an_upper_bound() -> None:
    """Each int field of the schema (sizes, counts, epochs, seeds) declares ``le``: no value reaches an
    allocation or a C integer unbounded."""
    from annotated_types import Le
    from pydantic import BaseModel

    def unbounded(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += unbounded(ann, f"{prefix}{name}.")
            elif ann in (int, int | None) and not any(isinstance(m, Le) for m in field.metadata):
                out.append(f"{prefix}{name}")
        return out

    assert unbounded(Params) == []
