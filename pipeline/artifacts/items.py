"""``data/processed/items.parquet``: the one reader of the item table, its attributes as ids
(:func:`read_attributes`), and the dense-id check every per-item artefact shares (``item`` is exactly 1..N in
order, row i holding item i + 1).

Only numpy is imported at module level (pyarrow on reading), so it loads where polars and mlflow are absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

REQUIRED = ("item", "item_id", "text")


def check_dense_ids(path: Path, item: np.ndarray) -> None:
    """Raise DataError (naming ``path``) unless ``item`` is exactly 1..N in order with N >= 1."""
    from pipeline.errors import DataError

    if len(item) == 0:
        raise DataError(f"{path}: no items")
    expected = np.arange(1, len(item) + 1)
    if not np.array_equal(item, expected):
        row = int(np.flatnonzero(item != expected)[0])
        raise DataError(
            f"{path}: column 'item' must be 1..N in order; row {row} has {item[row]}, expected {row + 1}"
        )


def read_table(path: Path, required: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read a per-item Parquet artefact: ``columns`` (default all), with ``item`` checked by
    :func:`check_dense_ids`. The file must have ``item``, ``required`` and ``columns``; only ``columns`` (and
    ``item``) are decoded.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, a required column missing, or ``item`` not 1..N in order (naming the file).
    """
    from pipeline.errors import DataError
    from pipeline.io import parquet_schema, read_parquet

    path = Path(path)
    try:
        names = parquet_schema(path).names
        missing = [c for c in ("item", *required, *(columns or ())) if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(set(missing))} (has {names})")
        # only the columns asked for (and item, for the check): a large column left out is never decoded
        table = read_parquet(path, None if columns is None else list(dict.fromkeys(["item", *columns])))
    except ValueError as err:
        raise DataError(str(err)) from None
    check_dense_ids(path, table.column("item").to_numpy().astype(np.int64))
    return table.select(list(columns)) if columns is not None else table


def read_items(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``items.parquet`` (``item`` 1..N in order, ``item_id`` original id, ``text``, optional ``image``
    and ``attributes``).

    Args:
        path: the ingest stage's items file.
        columns: the columns to return (default all); ``item``, ``item_id`` and ``text`` must exist anyway.
    """
    return read_table(path, REQUIRED, columns)


#: an attribute held by fewer items is dropped: one item's own attribute would only duplicate its ID embedding
MIN_ITEMS_PER_ATTRIBUTE = 2


def read_attributes(path: Path, num_items: int) -> tuple[np.ndarray, list[str]]:
    """The items' attributes (``items.parquet``'s ``attributes`` column, ``data.attribute_columns``) as ids.

    Attributes held by fewer than :data:`MIN_ITEMS_PER_ATTRIBUTE` items are dropped; the rest are numbered
    1..V in sorted name order.

    Args:
        path: the ingest stage's items file.
        num_items: N; the table has N + 1 rows (row 0, the padding item, and items past the file's rows hold
            no attribute).

    Returns:
        ``(ids, names)``: ids (N + 1, A) int64, row i the attribute ids of item i left-aligned and padded with
        0, A the most any item keeps (0 when no item keeps one, or the file predates the column); names
        (V,) the attribute of id v at ``names[v - 1]``.
    """
    from pipeline.io import parquet_schema

    if "attributes" not in parquet_schema(Path(path)).names:
        return np.zeros((num_items + 1, 0), dtype=np.int64), []
    col = read_table(path, REQUIRED, ["attributes"]).column("attributes").combine_chunks()
    col = col.slice(0, min(len(col), num_items))  # row i: item i + 1
    lengths = col.value_lengths().fill_null(0).to_numpy().astype(np.int64)  # a null list holds nothing
    row = np.repeat(np.arange(1, len(col) + 1), lengths)  # the item of each value (values are in item order)
    # dictionary-encoded in arrow: no Python string per value, however large the catalogue
    encoded = col.flatten().dictionary_encode()
    code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    keep_name = np.bincount(code, minlength=len(names)) >= MIN_ITEMS_PER_ATTRIBUTE
    kept_names = names[keep_name]
    order = np.argsort(kept_names.astype(str), kind="stable")
    new_id = np.zeros(len(names), dtype=np.int64)
    new_id[np.flatnonzero(keep_name)[order]] = np.arange(1, len(order) + 1)  # 1..V in sorted name order
    kept = keep_name[code]
    row, ids = row[kept], new_id[code[kept]]
    per_item = np.bincount(row, minlength=num_items + 1)
    width = int(per_item.max()) if len(row) else 0
    table = np.zeros((num_items + 1, width), dtype=np.int64)
    if len(row):
        start = np.cumsum(per_item) - per_item  # where each item's values begin
        table[row, np.arange(len(row)) - start[row]] = ids
    return table, [str(n) for n in kept_names[order]]
