"""Option names and model defaults come from the schema (issue 24): each setting's names are one ``Literal`` in
pipeline/config/, the registries that implement them cover exactly those names, and the student's config takes
its defaults and values from the ``train`` params."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from pipeline.config import Params, ParamsView, TrainParams, parse_params
from pipeline.config.inputs import Quantizer, Score
from pipeline.config.train import AsyncSchedule, Backbone, Fusion, KDProjection, Output, Scoring
from pipeline.models import Student, StudentConfig
from pipeline.models.student import BACKBONES, FUSIONS, KD_PROJECTIONS, OUTPUTS, SCORINGS
from pipeline.supervision.codebooks import QUANTIZERS
from pipeline.supervision.scores import SCORES
from pipeline.training.schedule import async_lr_scale


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        (FUSIONS, Fusion),
        (BACKBONES, Backbone),
        (OUTPUTS, Output),
        (KD_PROJECTIONS, KDProjection),
        (SCORINGS, Scoring),
        (SCORES, Score),
        (QUANTIZERS, Quantizer),
    ],
)
def test_each_registry_implements_exactly_the_schema_names(registry, names) -> None:
    assert sorted(registry) == sorted(get_args(names))


def test_every_async_schedule_of_the_schema_is_implemented() -> None:
    for schedule in get_args(AsyncSchedule):
        assert 0.0 < async_lr_scale(schedule, 1.0, 0.25, 10, [5, 10], 2.0) <= 1.0
    with pytest.raises(ValueError, match="unknown async_lr schedule 'cyclic'"):
        async_lr_scale("cyclic", 1.0, 0.25, 10, [5, 10], 2.0)


def test_an_unknown_option_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(
        ValueError, match=r"train.fusion: Input should be 'sum', 'gate', 'concat' or 'paper_gate'"
    ):
        parse_params({"train": {"fusion": "product"}})
    with pytest.raises(
        ValueError, match=r"unknown kd_projection 'pca' \(identity \| random \| none \| item\)"
    ):
        Student(StudentConfig(num_items=5, hidden=8, heads=1, kd_projection="pca"))


def test_student_config_defaults_are_the_schema_defaults() -> None:
    cfg, train = StudentConfig(num_items=5), TrainParams()
    assert cfg.kd_projection == train.kd.projection == "item"
    linked = {f.name: f.metadata["train"] for f in dataclasses.fields(StudentConfig) if "train" in f.metadata}
    assert {"backbone", "fusion", "output", "kd_projection", "scoring", "bsarec_alpha"} <= set(linked)
    for name, key in linked.items():
        value = train
        for part in key.split("."):
            value = getattr(value, part)
        assert getattr(cfg, name) == value, name


def test_student_config_from_train_takes_every_linked_value() -> None:
    raw = {
        "backbone": "bsarec",
        "hidden": 12,
        "heads": 3,
        "layers": 1,
        "dropout": 0.1,
        "max_len": 7,
        "fusion": "paper_gate",
        "output": "id_teacher",
        "scoring": "cos",
        "temperature": 0.2,
        "id_init_scale": 0.0,
        "kd": {"projection": "random"},
        "bsarec": {"alpha": 0.3, "window": 4},
    }
    params = parse_params({"train": raw})
    fixed = {"num_items": 9, "modalities": ("text",), "modality_dim": 4, "num_codes": 3, "code_groups": 0}
    expected = StudentConfig(
        **fixed,
        backbone="bsarec",
        hidden=12,
        heads=3,
        layers=1,
        dropout=0.1,
        max_len=7,
        fusion="paper_gate",
        output="id_teacher",
        scoring="cos",
        temperature=0.2,
        id_init_scale=0.0,
        kd_projection="random",
        bsarec_alpha=0.3,
        bsarec_window=4,
    )
    assert StudentConfig.from_train(params.train, **fixed) == expected
    view = ParamsView(params, ["train"], stage="train").train  # what the train stage passes
    assert StudentConfig.from_train(view, **fixed) == expected


def test_an_old_config_json_loads_as_it_was_trained_whatever_the_schema_defaults() -> None:
    """config.json from before train.output / train.kd.projection existed lacks them: it means the behaviour
    of that time (fused, identity), not today's defaults (item)."""
    before_issue_14 = {
        "num_items": 5,
        "backbone": "sasrec",
        "hidden": 8,
        "layers": 1,
        "heads": 1,
        "dropout": 0.0,
        "max_len": 4,
        "modalities": ["text"],
        "modality_dim": 4,
        "fusion": "sum",
        "num_codes": 3,
    }
    cfg = StudentConfig.from_dict(before_issue_14)
    assert (cfg.output, cfg.kd_projection, cfg.code_groups, cfg.scoring) == ("fused", "identity", 0, "dot")
    assert "text" in Student(cfg).kd_proj  # the identity head of that time, whose weights the file holds
    # written back: the keys written since issue 14 are there, the optional ones at their old value are not
    written = cfg.to_dict()
    assert written["kd_projection"] == "identity" and "scoring" not in written
    assert StudentConfig.from_dict(written) == cfg
    assert Params().train.kd.projection != cfg.kd_projection
