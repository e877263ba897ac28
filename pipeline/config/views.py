"""What a stage may read: a view of the config limited to the keys its dvc.yaml ``params:`` list declares."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.config.files import DEFAULT_PARAMS, PROJECT_ROOT, load_params
from pipeline.config.sections import ConfigError

DVC_YAML = PROJECT_ROOT / "dvc.yaml"


class UndeclaredParamError(AttributeError):
    """A stage read a params key that its dvc.yaml ``params:`` list does not declare."""


class ParamsView:
    """Read-only view of a config that only exposes the dotted keys a stage declares.

    Declared ``train`` exposes the whole section; declared ``correlate.score`` exposes just that key of
    ``correlate``. Reading anything else raises :class:`UndeclaredParamError`.
    """

    __slots__ = ("_model", "_path", "_declared", "_stage")

    def __init__(self, model: BaseModel, declared: Iterable[str], stage: str, path: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_declared", tuple(declared))
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self._path}.{name}" if self._path else name
        value = getattr(self._model, name)  # AttributeError for keys that do not exist at all
        if any(full == d or full.startswith(d + ".") for d in self._declared):
            return value
        if any(d.startswith(full + ".") for d in self._declared) and isinstance(value, BaseModel):
            return ParamsView(value, self._declared, self._stage, full)
        raise UndeclaredParamError(
            f"stage '{self._stage}' reads params key '{full}' but dvc.yaml does not declare it under "
            f"stages.{self._stage}.params (declared: {', '.join(self._declared)})"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def to_dict(self) -> dict[str, Any]:
        """The declared keys only, as a nested dict (what a stage logs as its params)."""
        out: dict[str, Any] = {}
        for name in type(self._model).model_fields:
            full = f"{self._path}.{name}" if self._path else name
            if any(full == d or full.startswith(d + ".") for d in self._declared):
                value = getattr(self._model, name)
                out[name] = value.model_dump() if isinstance(value, BaseModel) else value
            elif any(d.startswith(full + ".") for d in self._declared):
                out[name] = getattr(self, name).to_dict()
        return out

    def __repr__(self) -> str:
        return f"ParamsView(stage={self._stage!r}, path={self._path!r}, declared={self._declared})"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def section_dict(section: BaseModel | ParamsView) -> dict[str, Any]:
    """A params section as a nested dict: a pydantic section whole, a :class:`ParamsView` its declared keys."""
    if isinstance(section, ParamsView):
        return section.to_dict()
    return section.model_dump()


def declared_params(stage: str, dvc_yaml: Path = DVC_YAML) -> tuple[str, ...]:
    """The params keys ``stage`` declares under ``stages.<stage>.params`` in dvc.yaml: the keys DVC tracks for
    it, so the only ones it may read (the one list of them; the stages do not repeat it)."""
    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{dvc_yaml}: not found (it declares each stage's params)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{dvc_yaml}: not valid YAML: {err}") from None
    stages = spec.get("stages") if isinstance(spec, dict) else None
    stage_spec = stages.get(stage) if isinstance(stages, dict) else None
    if not isinstance(stage_spec, dict) or "params" not in stage_spec:
        raise ConfigError(f"{dvc_yaml}: stages.{stage}.params: missing (declare the keys the stage reads)")
    keys = stage_spec["params"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(
            f"{dvc_yaml}: stages.{stage}.params: must be a list of dotted params keys, got {keys!r}"
        )
    return tuple(keys)


def stage_params(stage: str, path: str | Path = DEFAULT_PARAMS, dvc_yaml: Path = DVC_YAML) -> ParamsView:
    """Load params.yaml and return the view a stage may read: the keys dvc.yaml declares for it."""
    return ParamsView(load_params(path), declared_params(stage, dvc_yaml), stage)
