"""Typed, validated configuration parsed from ``params.yaml``.

Every section of params.yaml maps onto a frozen pydantic model that forbids unknown keys, so a typo or a
wrong type fails before any work with a message that names the dotted key and what is allowed.

Stages never see the whole :class:`Params`: :func:`stage_params` wraps it in a :class:`ParamsView` that only
lets the stage read the keys dvc.yaml declares under its ``params:`` (read from there, the one list of them),
so an undeclared read fails loudly in tests instead of silently breaking DVC's change tracking.

The package: :mod:`~pipeline.config.sections` (the schema), :mod:`~pipeline.config.files` (reading params
files, experiment configs as overrides of params.yaml), :mod:`~pipeline.config.views` (what a stage may read).
"""

from pipeline.config.files import (
    BASE_KEY,
    DEFAULT_PARAMS,
    PROJECT_ROOT,
    load_params,
    parse_params,
    with_overrides,
)
from pipeline.config.sections import (
    AsyncLRParams,
    ConfigError,
    CorrelateParams,
    DataParams,
    DemoParams,
    EmbedParams,
    EvalParams,
    ImageTeacherParams,
    KDParams,
    MLflowParams,
    Modality,
    Params,
    RecommendParams,
    TextTeacherParams,
    TrainParams,
)
from pipeline.config.views import (
    ParamsView,
    UndeclaredParamError,
    declared_params,
    flatten,
    section_dict,
    stage_params,
)

__all__ = [
    "BASE_KEY",
    "DEFAULT_PARAMS",
    "PROJECT_ROOT",
    "AsyncLRParams",
    "ConfigError",
    "CorrelateParams",
    "DataParams",
    "DemoParams",
    "EmbedParams",
    "EvalParams",
    "ImageTeacherParams",
    "KDParams",
    "MLflowParams",
    "Modality",
    "Params",
    "ParamsView",
    "RecommendParams",
    "TextTeacherParams",
    "TrainParams",
    "UndeclaredParamError",
    "declared_params",
    "flatten",
    "load_params",
    "parse_params",
    "section_dict",
    "stage_params",
    "with_overrides",
]
