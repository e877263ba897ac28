"""The shipped params.yaml and the README's parameter table, written from the schema (pipeline/config/).

The schema is the one place a params key is written: its name, default, bounds and description. Both
documents are rendered from it, so they list every key with its current default; ``python -m stages.schema
--write`` writes them and ``--check`` (tests/test_schema_docs.py) fails while a committed file differs from
what it would write. The comparison is textual, not through the schema (which would fill a missing key with
its default and so hide it).
"""

from __future__ import annotations

import difflib
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import ConfigError, Params

WIDTH = 110  # the longest params.yaml line a description is wrapped to
COMMENT_COLUMN = 28  # a trailing comment starts after this column (when the line is shorter)
TABLE_START, TABLE_END = "<!-- params:start -->", "<!-- params:end -->"
HEADER = """\
# Parameters of every stage, grouped by stage. Validated by pipeline/config/: an unknown key, a wrong type or
# an out-of-range value fails before any work. Try variants with `dvc exp run -S train.lr=0.002`.
# Written by `python -m stages.schema --write` from the schema (pipeline/config/): change a default or a
# description there, not here (a test fails while this file differs from what that command writes).
"""


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def entries(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[tuple[str, FieldInfo, int]]:
    """Every key of the schema in file order: (dotted key, its field, nesting depth); a section comes
    before its keys."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field, key.count(".")
        if _is_section(field):
            yield from entries(field.annotation, f"{key}.")  # type: ignore[arg-type]


def yaml_value(value: Any) -> str:
    """One value as params.yaml writes it (flow style: ``[5, 10]``, ``null``, ``true``, ``0.003``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _default(key: str) -> Any:
    node: Any = Params().model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def _commented(line: str, indent: str, description: str) -> list[str]:
    """``line`` with its description: trailing when it fits in :data:`WIDTH`, else wrapped above it."""
    gap = " " if len(line) < COMMENT_COLUMN else "  "
    trailing = f"{line.ljust(COMMENT_COLUMN)}{gap}# {description}"
    if len(trailing) <= WIDTH:
        return [trailing]
    above = textwrap.wrap(
        description,
        WIDTH,
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}# ",
        break_on_hyphens=False,
        break_long_words=False,
    )
    return [*above, line]


def render_params_yaml() -> str:
    """The shipped params.yaml: every key with its default and its description, grouped by section."""
    lines = HEADER.splitlines()
    for key, field, depth in entries():
        indent = "  " * depth
        name = key.rsplit(".", 1)[-1]
        if depth == 0 and len(lines) > len(HEADER.splitlines()):
            lines.append("")
        line = f"{indent}{name}:" if _is_section(field) else f"{indent}{name}: {yaml_value(_default(key))}"
        lines += _commented(line, indent, field.description or "")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return " or ".join([*(_type_text(a) for a in rest), "`null`"])
    if origin is list:
        return f"list of {_type_text(args[0])}"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(annotation, str(annotation))


def type_text(field: FieldInfo) -> str:
    """What a key accepts: its type or its allowed values, with its bounds (``int in [1, 1,024]``)."""
    text = _type_text(field.annotation)
    lower = upper = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge | annotated_types.Gt):
            lower = ("[", m.ge) if isinstance(m, annotated_types.Ge) else ("(", m.gt)
        elif isinstance(m, annotated_types.Le | annotated_types.Lt):
            upper = ("]", m.le) if isinstance(m, annotated_types.Le) else (")", m.lt)
    if lower and upper:
        return f"{text} in {lower[0]}{_number(lower[1])}, {_number(upper[1])}{upper[0]}"
    if lower:
        return f"{text} {'≥' if lower[0] == '[' else '>'} {_number(lower[1])}"
    if upper:
        return f"{text} {'≤' if upper[0] == ']' else '<'} {_number(upper[1])}"
    return text


def _cell(text: str) -> str:
    """A Markdown table cell: ``|`` would end it, ``<`` could open an HTML tag (``<raw_dir>``)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render_table() -> str:
    """The README's parameter table: one row per key (and per section), in params.yaml's order."""
    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for key, field, _ in entries():
        if _is_section(field):
            rows.append(f"| **`{key}`** | | section | {_cell(field.description or '')} |")
        else:
            default = _cell(yaml_value(_default(key)))
            rows.append(
                f"| `{key}` | `{default}` | {_cell(type_text(field))} | {_cell(field.description or '')} |"
            )
    return "\n".join(rows) + "\n"


def with_table(readme: str, table: str, source: str = "README.md") -> str:
    """``readme`` with the text between the table markers replaced by ``table``."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ConfigError(f"{source}: no {TABLE_START} ... {TABLE_END} markers around the parameter table")
    return f"{readme[: start + len(TABLE_START)]}\n{table}{readme[end:]}"


def drift(name: str, expected: str, actual: str, max_lines: int = 40) -> str | None:
    """None when ``actual`` is ``expected``; else a unified diff (at most ``max_lines`` lines) from the
    committed text to what ``python -m stages.schema --write`` would write."""
    if actual == expected:
        return None
    diff = list(
        difflib.unified_diff(
            actual.splitlines(),
            expected.splitlines(),
            f"{name} (committed)",
            f"{name} (from the schema)",
            n=1,
        )
    )
    more = len(diff) - max_lines
    return "\n".join(diff[:max_lines] + ([f"... {more} more diff lines"] if more > 0 else []))


def documents(root: Path) -> dict[Path, str]:
    """The generated files under the project ``root`` and the text each should have."""
    readme = root / "README.md"
    return {
        root / "params.yaml": render_params_yaml(),
        readme: with_table(readme.read_text(), render_table(), str(readme)),
    }
