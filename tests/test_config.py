"""params.yaml validation and the stage <-> dvc.yaml params contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    PROJECT_ROOT,
    ConfigError,
    ParamsView,
    UndeclaredParamError,
    declared_params,
    load_params,
    parse_params,
    stage_params,
    with_overrides,
)

DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())


def test_the_shipped_params_file_is_valid() -> None:
    p = load_params()
    assert p.data.source == "demo" and p.train.backbone == "sasrec"


def test_yaml_1_1_exponent_strings_parse_as_floats(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: 1e-5\n  kd:\n    tau: 2e0\n")
    p = load_params(f)
    assert p.train.lr == pytest.approx(1e-5) and isinstance(p.train.lr, float)
    assert p.train.kd.tau == 2.0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key (allowed here: async_lr, attributes, backbone"),
        ({"train": {"lr": "fast"}}, "train.lr: Input should be a valid number"),
        ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0"),
        (
            {"train": {"backbone": "bert4rec"}},
            "train.backbone: Input should be 'sasrec', 'gru4rec', 'bsarec' or 'session_graph'",
        ),
        (
            {"train": {"modalities": ["text", "audio"]}},
            "train.modalities.1: Input should be 'text' or 'image'",
        ),
        ({"correlate": {"sub_vectors": 7}}, "sub_vectors (7) must divide dim (128)"),
        ({"data": {"demo": {"users": "many"}}}, "data.demo.users: Input should be a valid integer"),
        ({"eval": {"ks": [10, 0]}}, "eval.ks"),
        (
            {"data": {"attribute_columns": ["brand"]}},
            "data.attribute_columns: Input should be a valid dictionary",
        ),
        (
            {"data": {"attribute_columns": {"brand": " "}}},
            "attribute_columns.brand: the separator ' ' is blank; use null to keep the value whole",
        ),
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number"),
        (
            {"trian": {}},
            "trian: unknown key (allowed here: correlate, data, embed, eval, mlflow, recommend, train)",
        ),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert fragment in str(err.value)


def test_bad_yaml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_params(f)
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_are_validated() -> None:
    p = load_params()
    assert with_overrides(p, {"train.epochs": 3}).train.epochs == 3
    with pytest.raises(ConfigError, match="unknown key 'epochz'"):
        with_overrides(p, {"train.epochz": 3})
    with pytest.raises(ConfigError, match="train.epochs"):
        with_overrides(p, {"train.epochs": 0})


def test_params_view_exposes_only_declared_keys() -> None:
    view = ParamsView(load_params(), ["train", "correlate.score"], stage="train")
    assert view.train.lr > 0
    assert view.correlate.score == "cos"
    with pytest.raises(UndeclaredParamError, match="reads params key 'correlate.dim'"):
        _ = view.correlate.dim
    with pytest.raises(UndeclaredParamError, match="reads params key 'data'"):
        _ = view.data
    assert set(view.to_dict()) == {"train", "correlate"} and view.to_dict()["correlate"] == {"score": "cos"}


@pytest.mark.parametrize("stage", sorted(DVC_YAML["stages"]))
def test_each_stage_reads_the_params_dvc_yaml_declares_for_it(stage: str) -> None:
    """The one list of a stage's keys is dvc.yaml's ``params:``: the stage's view is built from it, its entry
    module asks for its own stage's view, and every declared key is a key of the schema."""
    spec = DVC_YAML["stages"][stage]
    assert spec["cmd"] == f"python -m stages.{stage}"
    assert f"stages/{stage}.py" in spec["deps"]
    source = (PROJECT_ROOT / "stages" / f"{stage}.py").read_text()
    assert f'stage_params("{stage}")' in source and "PARAMS" not in source
    view = stage_params(stage)
    assert declared_params(stage) == tuple(spec["params"]) == view._declared
    for key in spec["params"]:
        node = view
        for part in key.split("."):
            node = getattr(node, part)  # a key the schema lacks raises AttributeError (not the view's error)


def test_a_stage_missing_from_dvc_yaml_is_named(tmp_path: Path) -> None:
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  ingest:\n    params: [data]\n  embed:\n    cmd: x\n  bad:\n    params: data\n")
    assert declared_params("ingest", dvc) == ("data",)
    with pytest.raises(ConfigError, match=r"dvc.yaml: stages.embed.params: missing"):
        declared_params("embed", dvc)
    with pytest.raises(ConfigError, match=r"dvc.yaml: stages.bad.params: must be a list"):
        declared_params("bad", dvc)
    with pytest.raises(ConfigError, match=r"nope.yaml: not found"):
        declared_params("ingest", tmp_path / "nope.yaml")


def test_device_auto_and_a_missing_gpu() -> None:
    import torch

    from pipeline.devices import resolve_device
    from pipeline.errors import PipelineError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="train.device is 'cuda' but no CUDA device"):
            resolve_device("cuda", "train.device")
