"""The ``sequences`` source: ``user item1 item2 ...`` lines and an item table (TSV or CSV)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from pipeline.data.records import (
    ITEM_SCHEMA,
    FieldCounts,
    FileReport,
    RawData,
    interactions_frame,
    iter_lines,
    parse_progress,
)
from pipeline.data.text import assemble_text, image_reference, item_attributes
from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.config import DataParams

log = logging.getLogger(__name__)

# ids of the ``sequences`` source: canonical non-negative integers only ("5", not "5.0", "05" or "+5")
CANONICAL_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_CANONICAL_LINE = re.compile(
    r"\s*(?:0|[1-9][0-9]{0,17})(?:\s+(?:0|[1-9][0-9]{0,17}))*\s*"
)  # one match a line
# a configured text/image field that fewer than this share of records has is reported as a warning


def read_sequences_file(path: Path) -> tuple[pl.DataFrame, FileReport]:
    """Read ``user item1 item2 ...`` lines (time order within and across lines = file order).

    ``ts`` and ``line`` are both the event's position in the file. Ids must be canonical non-negative
    integers (``5``; not ``5.0``, ``05``, ``+5`` or a word): a line with another token, or a user with no
    items, is malformed (skipped, counted, and named with its line number).
    """
    report = FileReport(path)
    users: list[str] = []
    items: list[str] = []
    for number, raw in parse_progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report.bad(number, f"not UTF-8 ({err})")
            continue
        tokens = text.split()
        if len(tokens) < 2:
            report.bad(number, "a user id with no items")
            continue
        bad = None  # one regex per line; token by token only to name the bad one
        if not _CANONICAL_LINE.fullmatch(text):
            bad = next((t for t in tokens if not CANONICAL_INT.fullmatch(t)), None)
        if bad is not None:
            report.bad(
                number,
                f"{bad[:40]!r} is not an integer id (ids are written like 5: no sign, decimals or leading zeros)",
            )
            continue
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
    order = list(range(len(users)))
    return interactions_frame(users, items, order, order), report


def _separator(path: Path) -> str:
    return "," if path.suffix.lower() == ".csv" else "\t"


def read_item_table(
    path: Path,
    id_column: str,
    text_columns: Sequence[str],
    image_column: str | None,
    counts: FieldCounts | None = None,
    attribute_columns: Mapping[str, str | None] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Read the item table of the ``sequences`` source (TSV, or CSV by extension) into (item_id, text, image,
    attributes).

    ``image_column`` is ignored when the table has no such column; ``attribute_columns`` maps columns to
    their separators (:func:`~pipeline.data.text.item_attributes`). Returns the frame and the number of
    repeated ids dropped (first row kept). ``counts`` (optional) is filled with how many rows have a
    non-empty value in each text and attribute column and in the image column.
    """
    attribute_columns = dict(attribute_columns or {})
    if not path.exists():
        raise DataError(f"{path}: item table not found (data.items_file)")
    sep = _separator(path)
    try:
        df = pl.read_csv(path, separator=sep, infer_schema=False, quote_char='"' if sep == "," else None)
    except (pl.exceptions.PolarsError, ValueError) as err:
        raise DataError(
            f"{path}: cannot be read as a {'CSV' if sep == ',' else 'TSV'} table ({err})"
        ) from None
    missing = [
        c for c in dict.fromkeys([id_column, *text_columns, *attribute_columns]) if c not in df.columns
    ]
    if missing:
        raise DataError(
            f"{path}: column(s) {missing} not found (data.item_id_column / data.text_columns / "
            f"data.attribute_columns); the table has: {df.columns}"
        )
    has_image = image_column is not None and image_column in df.columns
    if image_column is not None and not has_image:
        log.info("%s: no column %r: items have no image", path, image_column)
    n_before = df.height
    df = df.filter(pl.col(id_column).is_not_null() & (pl.col(id_column).str.strip_chars() != ""))
    df = df.with_columns(pl.col(id_column).str.strip_chars()).unique(
        id_column, keep="first", maintain_order=True
    )
    duplicates = n_before - df.height
    columns = {
        c: df.get_column(c).fill_null("").to_list()
        for c in dict.fromkeys([*text_columns, *attribute_columns])
    }
    rows = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    texts = [assemble_text(row, text_columns) for row in rows]
    attributes = [item_attributes(row, attribute_columns) for row in rows] if attribute_columns else None
    images = df.get_column(image_column).to_list() if has_image else [None] * df.height
    if counts is not None:
        counts.records = df.height
        for c in text_columns:
            counts.text[c] = sum(1 for v in columns[c] if v.strip())
        for c in attribute_columns:
            counts.attributes[c] = sum(1 for v in columns[c] if v.strip())
        counts.image = sum(1 for v in images if v is not None and v.strip())
    frame = pl.DataFrame(
        {
            "item_id": df.get_column(id_column),
            "text": texts,
            "image": [image_reference(v) for v in images],
            "attributes": attributes if attributes is not None else [[] for _ in range(df.height)],
        },
        schema=ITEM_SCHEMA,
    )
    return frame, duplicates


def load_sequences(data: DataParams) -> RawData:
    """The ``sequences`` source: ``data.sequences_file`` + the item table ``data.items_file``."""
    seq_path, items_path = Path(data.sequences_file), Path(data.items_file)
    if not seq_path.exists():
        raise DataError(f"{seq_path}: sequences file not found (data.sequences_file)")
    inter, rep = read_sequences_file(seq_path)  # canonical integer ids only: the rest are malformed lines
    rep.check(data.max_bad_fraction)
    counts = FieldCounts(items_path)
    items, duplicates = read_item_table(
        items_path,
        data.item_id_column,
        list(data.text_columns),
        data.image_column,
        counts,
        data.attribute_columns,
    )
    counts.check(list(data.text_columns), data.image_column, [], list(data.attribute_columns))
    return RawData(
        inter,
        items,
        numeric_ids=True,
        reports=[rep],
        category=seq_path.stem,
        metadata_duplicates=duplicates,
    )
