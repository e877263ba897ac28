"""What every params section shares: the error type, the section base class and the value types used by
several sections.

Every key of a section is a pydantic field with ``description=...``: the one text that documents it, written
into the shipped params.yaml and the README's parameter table by ``python -m stages.schema --write``.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.errors import PipelineError

Modality = Literal["text", "image"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]
MAX_SEED = 2**32 - 1  # every seed: what numpy, torch and random all accept


class ConfigError(PipelineError, ValueError):
    """A params.yaml problem, with the file and dotted key in its message."""


class BoolAsNumber:
    """A YAML ``true``/``false`` given where a number is expected: pydantic's lax mode would read it as 1/0,
    so :class:`Section` swaps it for this marker, which every number type refuses (and the error shows)."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


def _number_field(annotation: Any) -> str | None:
    """``scalar`` for int/float fields (optionally ``| None``), ``list`` for list[int]/list[float], else None."""
    if annotation in (int, float):
        return "scalar"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return "scalar" if rest and all(a in (int, float) for a in rest) else None
    if origin is list and args and args[0] in (int, float):
        return "list"
    return None


class Section(BaseModel):
    """A section (or sub-section) of params.yaml: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_booleans_as_numbers(cls, data: Any) -> Any:
        """``data.kcore: true`` must fail, not become ``kcore: 1`` (pydantic's lax mode accepts it)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            kind = _number_field(field.annotation) if field is not None else None
            if kind == "scalar" and isinstance(value, bool):
                out[name] = BoolAsNumber(value)
            elif kind == "list" and isinstance(value, list):
                out[name] = [BoolAsNumber(v) if isinstance(v, bool) else v for v in value]
        return out
