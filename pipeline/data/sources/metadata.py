"""The Amazon metadata files: one record per item, read into (item_id, text, image) rows.

Metadata is parsed per line in Python because its fields are heterogeneous and the text is assembled in
Python anyway; the 2014 files are Python literals, read with :func:`ast.literal_eval` (never ``eval``)
after a cheap exact JSON fast path for lines that contain no double quote or backslash.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.data.records import ITEM_SCHEMA, FieldCounts, FileReport, as_id, iter_lines, parse_progress
from pipeline.data.text import assemble_text, has_text, image_reference, item_attributes

# the longest line handed to ast.literal_eval: its syntax tree takes ~500 bytes per character (a 5 MB tuple
# literal, 6.8 KB gzipped, drove ingest to 2.56 GB); real 2014 records are a few KB, so this costs ~140 MB
MAX_LITERAL_CHARS = 256 * 1024


def parse_metadata_line(text: str, python_literal: bool) -> Any:
    """Parse one metadata line: strict JSON, or (2014) a Python literal via :func:`ast.literal_eval`.

    A Python-literal line without double quotes or backslashes has only single-quoted strings that contain
    no quote and no escape, so swapping the quotes gives equivalent JSON: a fast exact path for most lines.
    A line that needs ``ast.literal_eval`` and is longer than :data:`MAX_LITERAL_CHARS` is refused
    (``ValueError``: a malformed line) before its syntax tree is built.
    """
    if python_literal:
        if '"' not in text and "\\" not in text:
            try:
                return json.loads(text.replace("'", '"'))
            except (ValueError, RecursionError):
                pass
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
        if len(text) > MAX_LITERAL_CHARS:
            raise ValueError(
                f"a Python-literal record of {len(text):,} characters, over the {MAX_LITERAL_CHARS:,} "
                "read with ast.literal_eval"
            )
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise ValueError(f"neither JSON nor a Python literal ({type(err).__name__}: {err})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def read_metadata(
    path: Path,
    item_key: str,
    text_columns: Sequence[str],
    image_columns: Sequence[str],
    python_literal: bool,
    counts: FieldCounts | None = None,
    attribute_columns: Mapping[str, str | None] | None = None,
) -> tuple[pl.DataFrame, FileReport, int]:
    """Read an Amazon metadata file into (item_id, text, image, attributes) rows.

    Args:
        path: ``meta_<Category>.json(l)(.gz)``.
        item_key: the id field (``asin`` / ``parent_asin``).
        text_columns: fields joined into the text (see :func:`assemble_text`).
        image_columns: fields tried in order for the image reference (empty: no images).
        python_literal: the 2014 format (one Python dict literal per line).
        counts: filled with how many records carry each text/attribute/image field (see
            :meth:`FieldCounts.check`).
        attribute_columns: fields kept as attributes, each with its separator (see :func:`item_attributes`).

    Returns:
        The item frame (first record of a repeated id kept), the file report, and the number of
        repeated ids dropped.
    """
    report = FileReport(path)
    ids: list[str] = []
    texts: list[str] = []
    images: list[str | None] = []
    attributes: list[list[str]] = []
    attribute_columns = dict(attribute_columns or {})
    seen: set[str] = set()
    duplicates = 0
    for number, raw in parse_progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            obj = parse_metadata_line(raw.decode("utf-8"), python_literal)
            if not isinstance(obj, dict):
                raise ValueError(f"not a record ({type(obj).__name__})")
            item = as_id(obj, item_key)
            if item in seen:
                duplicates += 1
                continue
            image = None
            for col in image_columns:
                image = image_reference(obj.get(col))
                if image:
                    break
            text = assemble_text(obj, text_columns)
            attrs = item_attributes(obj, attribute_columns) if attribute_columns else []
        except ValueError as err:
            report.bad(number, str(err))
            continue
        except RecursionError:  # a record nested deeper than the text helpers can walk
            report.bad(number, "nested too deeply to parse")
            continue
        seen.add(item)
        if counts is not None:
            for col in text_columns:
                counts.text[col] = counts.text.get(col, 0) + has_text(obj, col)
            for col in attribute_columns:
                counts.attributes[col] = counts.attributes.get(col, 0) + has_text(obj, col)
            counts.image += image is not None
        ids.append(item)
        texts.append(text)
        images.append(image)
        attributes.append(attrs)
    frame = pl.DataFrame(
        {"item_id": ids, "text": texts, "image": images, "attributes": attributes}, schema=ITEM_SCHEMA
    )
    if counts is not None:
        counts.records = len(ids)
    return frame, report, duplicates
