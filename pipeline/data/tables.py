"""Helpers shared by the ingest builders (:mod:`pipeline.data.ingest`, :mod:`pipeline.data.official`): dense
numbering of original ids, the items table with its metadata counts, and sequence-length summaries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

log = logging.getLogger(__name__)


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
    """The items table (item = 1..n in the order of ``item_ids``) with text, image and attributes from
    ``metadata``.

    An item absent from the metadata keeps empty text, no image and no attributes.

    Args:
        item_ids: the original ids of items 1..n.
        metadata: item_id, text, image, attributes (a repeated id: the first row is used).
        item_counts: (n,) interactions of each item.

    Returns:
        The table and its metadata counts (``items_without_metadata``, ``interactions_without_metadata``,
        ``items_without_text``, ``items_with_image``, ``items_with_attributes``).
    """
    n_items = len(item_ids)
    frame = pl.DataFrame({"item": np.arange(1, n_items + 1, dtype=np.int32), "item_id": item_ids})
    meta = metadata.unique("item_id", keep="first", maintain_order=True).with_columns(
        pl.lit(True).alias("_known")
    )
    frame = frame.join(meta, on="item_id", how="left").sort("item")
    known = frame.get_column("_known").fill_null(False).to_numpy()
    text = frame.get_column("text").fill_null("")
    attributes = frame.get_column("attributes").fill_null([])
    table = pa.table(
        {
            "item": pa.array(frame.get_column("item").to_numpy()),
            "item_id": string_array(frame.get_column("item_id")),
            "text": string_array(text),
            "image": string_array(frame.get_column("image")),
            "attributes": attributes.to_arrow().cast(pa.list_(pa.string())),
        }
    )
    counts: dict[str, Any] = {
        "items_without_metadata": int((~known).sum()),
        "interactions_without_metadata": int(np.asarray(item_counts)[~known].sum()),
        "items_without_text": int((text == "").sum()),
        "items_with_image": int(frame.get_column("image").is_not_null().sum()),
        "items_with_attributes": int((attributes.list.len() > 0).sum()),
    }
    return table, counts


@dataclass(frozen=True)
class Dense:
    """Interactions renumbered to dense 1-based ids in sorted original-id order (absent ids dropped)."""

    users: np.ndarray  # (E,) int32 user of each interaction, 1..n_users
    items: np.ndarray  # (E,) int32 item of each interaction, 1..n_items
    user_present: np.ndarray  # (len(user_ids),) bool: the original ids kept
    item_present: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.user_present.sum())

    @property
    def n_items(self) -> int:
        return int(self.item_present.sum())


def densify(u: np.ndarray, i: np.ndarray, n_user_ids: int, n_item_ids: int) -> Dense:
    """Dense ids of the interactions ``(u, i)`` (0-based codes into the sorted original ids)."""
    user_present = np.bincount(u, minlength=n_user_ids) > 0
    item_present = np.bincount(i, minlength=n_item_ids) > 0
    return Dense(
        np.cumsum(user_present)[u].astype(np.int32),
        np.cumsum(item_present)[i].astype(np.int32),
        user_present,
        item_present,
    )


def assemble(
    raw: Any,
    user_ids: pl.Series,
    item_ids: pl.Series,
    dense: Dense,
    bounds: tuple[np.ndarray, np.ndarray, np.ndarray],
    counts: dict[str, int],
    dropped: dict[str, int],
    extra: dict[str, Any],
) -> Dataset:
    """The items and sequences tables and their statistics, shared by the ingest builders.

    Args:
        raw: the :class:`pipeline.data.records.RawData` read (its metadata, reports and duplicate count).
        dense: the kept interactions, rows sorted by user then time.
        bounds: (lengths, train_end, valid_end) per user.
        counts: ``raw_interactions`` (rows parsed) and ``duplicates`` (repeated (user, item) rows dropped).
        dropped: the builder's own dropped counts (between ``duplicates`` and ``duplicate_metadata_records``).
        extra: the builder's own statistics, after ``dropped``.
    """
    lengths, train_end, valid_end = bounds
    n_users, n_items = dense.n_users, dense.n_items
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    sequences = pa.table(
        {
            "user": pa.array(np.arange(1, n_users + 1, dtype=np.int32)),
            "user_id": string_array(user_ids.gather(np.flatnonzero(dense.user_present))),
            "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(dense.items)),
            "train_end": pa.array(np.asarray(train_end, dtype=np.int32)),
            "valid_end": pa.array(np.asarray(valid_end, dtype=np.int32)),
        }
    )
    item_counts = np.bincount(dense.items, minlength=n_items + 1)[1:]
    kept_items = item_ids.gather(np.flatnonzero(dense.item_present))
    items, meta_counts = items_table(kept_items, raw.items, item_counts)
    n_inter = int(dense.items.size)
    stats: dict[str, Any] = {
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "sequence_length": lengths_summary(lengths),
        "raw": {
            "interactions": counts["raw_interactions"],
            "users": len(user_ids),
            "items": len(item_ids),
            "metadata_records": raw.items.height,
        },
        "dropped": {
            "malformed_records": sum(r.malformed for r in raw.reports),
            "duplicates": counts["duplicates"],
            **dropped,
            "duplicate_metadata_records": raw.metadata_duplicates,
        },
        **extra,
        "metadata": meta_counts,
        "split_sizes": {
            "train_interactions": int(np.sum(train_end)),
            "valid_targets": int(np.sum(valid_end - train_end)),
            "test_targets": int(np.sum(lengths - valid_end)),
        },
        "records": {r.path.name: r.records for r in raw.reports},
        "malformed": {r.path.name: r.malformed for r in raw.reports},
    }
    if meta_counts["items_without_metadata"]:
        log.warning(
            "%d items (%d interactions) have no metadata record: kept with empty text and no image",
            meta_counts["items_without_metadata"], meta_counts["interactions_without_metadata"],
        )  # fmt: skip
    return Dataset(items, sequences, stats)
