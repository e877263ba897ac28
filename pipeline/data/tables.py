"""Helpers shared by the ingest builders (:mod:`pipeline.data.ingest`, :mod:`pipeline.data.official`): dense
numbering of original ids, the items table with its metadata counts, and sequence-length summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa


@dataclass
class Dataset:
    """The processed tables (``items``, ``sequences``: the data contract) and their statistics."""

    items: pa.Table
    sequences: pa.Table
    stats: dict[str, Any]


def sorted_ids(ids: pl.Series, numeric: bool) -> pl.Series:
    """The distinct ids in sorted order (numeric order when ``numeric``)."""
    uniq = ids.unique()
    return uniq.gather(uniq.cast(pl.Int64).arg_sort()) if numeric else uniq.sort()


def dense_codes(ids: pl.Series, sorted_ids: pl.Series) -> pl.Series:
    """0-based position of each id in ``sorted_ids`` (a hash join: much faster than ranking strings)."""
    table = pl.DataFrame({"id": sorted_ids, "code": np.arange(len(sorted_ids), dtype=np.int64)})
    return (
        pl.DataFrame({"id": ids}).join(table, on="id", how="left", maintain_order="left").get_column("code")
    )


def lengths_summary(lengths: np.ndarray) -> dict[str, float]:
    p25, p50, p75, p90 = np.percentile(lengths, [25, 50, 75, 90])
    return {
        "min": int(lengths.min()),
        "p25": float(p25),
        "median": float(p50),
        "p75": float(p75),
        "p90": float(p90),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }


def string_array(series: pl.Series) -> pa.Array:
    return series.to_arrow().cast(pa.string())


def items_table(
    item_ids: pl.Series, metadata: pl.DataFrame, item_counts: np.ndarray
) -> tuple[pa.Table, dict[str, int]]:
    """The items table (item = 1..n in the order of ``item_ids``) with text and image from ``metadata``.

    An item absent from the metadata keeps empty text and no image.

    Args:
        item_ids: the original ids of items 1..n.
        metadata: item_id, text, image (a repeated id: the first row is used).
        item_counts: (n,) interactions of each item.

    Returns:
        The table and its metadata counts (``items_without_metadata``, ``interactions_without_metadata``,
        ``items_without_text``, ``items_with_image``).
    """
    n_items = len(item_ids)
    frame = pl.DataFrame({"item": np.arange(1, n_items + 1, dtype=np.int32), "item_id": item_ids})
    meta = metadata.unique("item_id", keep="first", maintain_order=True).with_columns(
        pl.lit(True).alias("_known")
    )
    frame = frame.join(meta, on="item_id", how="left").sort("item")
    known = frame.get_column("_known").fill_null(False).to_numpy()
    text = frame.get_column("text").fill_null("")
    table = pa.table(
        {
            "item": pa.array(frame.get_column("item").to_numpy()),
            "item_id": string_array(frame.get_column("item_id")),
            "text": string_array(text),
            "image": string_array(frame.get_column("image")),
        }
    )
    counts: dict[str, Any] = {
        "items_without_metadata": int((~known).sum()),
        "interactions_without_metadata": int(np.asarray(item_counts)[~known].sum()),
        "items_without_text": int((text == "").sum()),
        "items_with_image": int(frame.get_column("image").is_not_null().sum()),
    }
    return table, counts
