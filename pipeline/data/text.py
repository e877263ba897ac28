"""Item text and image references from metadata values (shared by every source).

Text is assembled from the configured ``data.text_columns``: values flattened, HTML-unescaped and
whitespace-normalised, empty and repeated pieces dropped, joined with `` | ``. Attributes
(``data.attribute_columns``) are the same pieces kept apart, each named after its field.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping, Sequence
from typing import Any

PART_SEPARATOR = " | "

# When a configured text column is absent from a metadata record, these fields are tried in its place, so
# one ``text_columns`` list works across the 2014 (categories, brand), 2018 (category, feature) and 2023
# (categories, store, features) metadata.
TEXT_ALIASES: dict[str, tuple[str, ...]] = {
    "categories": ("category",),
    "category": ("categories",),
    "features": ("feature",),
    "feature": ("features",),
    "brand": ("store",),
}


def has_text(record: Mapping[str, Any], column: str) -> bool:
    """True when ``record`` has a non-empty ``column`` (or one of its :data:`TEXT_ALIASES`)."""
    for key in (column, *TEXT_ALIASES.get(column, ())):
        value = record.get(key)
        if value is not None and value != "" and value != []:
            return True
    return False


@functools.lru_cache(maxsize=1 << 16)  # brands and category names repeat across many items
def normalise_text(value: str) -> str:
    """Unescape HTML entities (``&amp;`` -> ``&``) and collapse whitespace."""
    if "&" in value:
        value = html.unescape(value)
    return " ".join(value.split())


def text_parts(value: Any) -> list[str]:
    """The text pieces of a metadata value: strings as is, lists (of lists) flattened, dicts as ``k: v``."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list | tuple):
        out: list[str] = []
        for v in value:
            out.extend(text_parts(v))
        return out
    if isinstance(value, dict):
        return [f"{k}: {' '.join(text_parts(v))}" for k, v in value.items() if text_parts(v)]
    return []


def _field_value(record: Mapping[str, Any], column: str) -> Any:
    """``record[column]``, or the first of its :data:`TEXT_ALIASES` the record has; None when none."""
    value = record.get(column)
    if value is None:
        for alias in TEXT_ALIASES.get(column, ()):
            value = record.get(alias)
            if value is not None:
                break
    return value


def assemble_text(record: Mapping[str, Any], columns: Sequence[str]) -> str:
    """Join the text of ``columns`` of a record with `` | ``.

    Values are flattened (categories as a list of lists), HTML-unescaped and whitespace-normalised; empty
    and repeated pieces are dropped (so ``[["Beauty", "Makeup"], ["Beauty"]]`` gives ``Beauty | Makeup``).
    A column absent from the record falls back to its :data:`TEXT_ALIASES`.
    """
    parts: list[str] = []
    for col in columns:
        value = _field_value(record, col)
        for piece in (value,) if isinstance(value, str) else text_parts(value):
            clean = normalise_text(piece)
            if clean and clean not in parts:  # a handful of parts: a list beats a set here
                parts.append(clean)
    return PART_SEPARATOR.join(parts)


def item_attributes(record: Mapping[str, Any], columns: Mapping[str, str | None]) -> list[str]:
    """The attributes of a record: ``"<field>=<value>"`` for each piece of each field of ``columns``.

    ``columns`` maps a field to the separator that cuts its string value into pieces (None: the whole value
    is one piece); a list value gives one piece per element (categories as a list of lists: every category
    name). Pieces are normalised like text (:func:`normalise_text`); empty and repeated ones are dropped.
    A field absent from the record falls back to its :data:`TEXT_ALIASES`, but keeps its configured name.
    So ``{"brand": None, "categories": ","}`` on ``{"brand": "OPI", "categories": "Makeup,Nails"}`` gives
    ``["brand=OPI", "categories=Makeup", "categories=Nails"]``.
    """
    out: list[str] = []
    for col, sep in columns.items():
        for piece in text_parts(_field_value(record, col)):
            for part in piece.split(sep) if sep else (piece,):
                clean = normalise_text(part)
                name = f"{col}={clean}"
                if clean and name not in out:
                    out.append(name)
    return out


def image_reference(value: Any) -> str | None:
    """An image URL/path from a metadata value: a string, the first of a list (2018), or the first
    ``large``/``hi_res``/``thumb`` entry of a list of dicts (2023). None when there is none."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, list | tuple):
        for v in value:
            ref = image_reference(v)
            if ref:
                return ref
        return None
    if isinstance(value, dict):
        for key in ("large", "hi_res", "thumb"):
            ref = image_reference(value.get(key))
            if ref:
                return ref
    return None
