"""Reading params files: validation with messages that name the file and dotted key, and experiment configs
that hold overrides only.

A params file whose top level has ``base: <path>`` (relative to the file) holds overrides: its sections are
merged key by key over the base file's (mappings merge, any other value replaces), so
``configs/beauty.yaml`` says only how Beauty differs from ``params.yaml``. ``python -m stages.params --config
configs/beauty.yaml > params.yaml`` writes the merged file for ``dvc repro``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.sections import BoolAsNumber, ConfigError, Params

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"
BASE_KEY = "base"  # top-level key of an overrides file: the params file it overrides
# ``base: defaults``: the built-in defaults (equal to the shipped params.yaml, a test checks), so a config's
# meaning does not change when params.yaml is overwritten with a merged config for DVC
DEFAULTS_BASE = "defaults"
MAX_YAML_DEPTH = 16  # nesting of mappings and lists in a params file (the schema's deepest key has 4)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            msg = f"unknown key (allowed here: {', '.join(allowed)})"
        else:
            msg = e["msg"]
            if isinstance(e.get("input"), BoolAsNumber):
                msg += f" (got {e['input']!r}: a boolean where a number is expected)"
            elif "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)


def _allowed_keys(loc: Iterable[Any]) -> list[str]:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _reject_non_finite(obj: Any, path: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{path}: must be a finite number, got {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_non_finite(v, f"{path}.{k}" if path else str(k))


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`.

    Strings such as ``"1e-5"`` (PyYAML's YAML 1.1 reading of ``1e-5``) are coerced to float by pydantic's
    lax mode, so both YAML 1.1 and 1.2 spellings give the same config.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    _reject_non_finite(raw)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def _check_yaml_structure(text: str, source: str) -> None:
    """Refuse, before anything is built, what a params file never needs and a hostile one uses: an alias
    (``*name``: a 1 KB file of nested aliases stands for billions of values, the "billion laughs") and
    nesting deeper than :data:`MAX_YAML_DEPTH` (thousands of ``[`` overflow the recursive YAML composer).
    Reads the event stream, which needs neither recursion nor memory beyond one event."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"{source}: line {line}: YAML alias *{event.anchor}: aliases are not allowed in params "
                "files (write the value out)"
            )
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{source}: line {line}: nested deeper than {MAX_YAML_DEPTH} levels of mappings and "
                    "lists (a params file needs 4)"
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` after :func:`_check_yaml_structure` and the duplicate-key check."""
    _check_yaml_structure(text, source)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _refuse_duplicate_keys(node, source)
    return yaml.safe_load(text)


def _refuse_duplicate_keys(node: yaml.Node, source: str, path: str = "") -> None:
    """Fail on a key repeated in one mapping (YAML loaders silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            full = f"{path}.{key_node.value}" if path else key_node.value
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(
                    f"{source}: line {line}: {full}: duplicate key (first set at line "
                    f"{seen[key_node.value]}); a repeated key would silently override the first"
                )
            seen[key_node.value] = line
            _refuse_duplicate_keys(value_node, source, full)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, source, f"{path}.{i}" if path else str(i))


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file (an overrides file merged over its base); raises :class:`ConfigError`
    naming the file and key.

    An empty file (or one with only comments) is refused: it would silently run on the code defaults.
    A key repeated within one mapping is refused too.
    """
    path = Path(path)
    return parse_params(read_params_file(path), str(path))


def _read_yaml(path: Path) -> Any:
    """One params file's own YAML, refusing a missing, unreadable, invalid, duplicate-keyed or empty file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the params file ({err})") from None
    try:
        raw = _load_yaml(text, str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None or raw == {}:
        raise ConfigError(
            f"{path}: the params file is empty; write at least one section (data, embed, correlate, train, "
            "eval, mlflow): the repository's params.yaml lists every key with its default"
        )
    return raw


def params_chain(path: Path) -> list[Path]:
    """``path`` and the params files it is based on (``base:``), nearest first.

    The chain ends at a file without a base, with ``base: defaults``, or one that cannot be read as YAML
    (:func:`read_params_file` says why); a base that leads back into the chain is refused.
    """
    chain = [Path(path)]
    while True:
        try:
            raw = _load_yaml(chain[-1].read_text(), str(chain[-1]))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
            return chain  # read_params_file reads it again and says why
        base = raw.get(BASE_KEY) if isinstance(raw, dict) else None
        if not isinstance(base, str) or base == DEFAULTS_BASE:
            return chain
        base_path = (chain[-1].parent / base).resolve()
        if base_path in {p.resolve() for p in chain}:
            raise ConfigError(f"{chain[-1]}: {BASE_KEY}: {base} leads back to {base_path} (a cycle)")
        chain.append(base_path)


def read_params_file(path: Path) -> Any:
    """The mapping a params file stands for: its own, or (with ``base:``) its overrides merged over its base
    chain (:func:`params_chain`), the farthest base first. Anything but a mapping is returned as read, for
    :func:`parse_params` to refuse."""
    chain = params_chain(path)
    farthest = chain[-1]
    merged = _read_yaml(farthest)
    if isinstance(merged, dict) and BASE_KEY in merged:  # no file further: a bad base or base: defaults
        merged = dict(merged)
        base = merged.pop(BASE_KEY)
        if not isinstance(base, str):
            raise ConfigError(
                f"{farthest}: {BASE_KEY}: expected the path of the params file this one overrides"
            )
        merged = merge_params(Params().model_dump(mode="json"), merged)
    for file in reversed(chain[:-1]):
        if not isinstance(merged, dict):
            raise ConfigError(f"{farthest}: a base params file must be a mapping of sections")
        raw = _read_yaml(file)  # a mapping with a base: params_chain went on past it
        merged = merge_params(merged, {k: v for k, v in raw.items() if k != BASE_KEY})
    return merged


def merge_params(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged over ``base``: mappings merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """Return a copy of ``params`` with dotted-key overrides applied and re-validated.

    ``with_overrides(p, {"train.epochs": 2, "data.demo.users": 50})``
    """
    raw = params.model_dump()
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {dotted}: no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {dotted}: unknown key {leaf!r}")
        node[leaf] = value
    return parse_params(raw, "overrides")
