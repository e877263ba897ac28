"""Processed tables from a source with an official split (``amazon2023_csv``): the split is kept, not redone.

Each user's sequence is their training rows (ordered by timestamp, then line), then their validation rows,
then their test rows (each part in the same order), so ``train_end`` / ``valid_end`` of the sequences
artifact mark exactly the official validation and test items, and evaluate scores the official split
(every target predicted from all items before it) instead of our own leave-one-out. Nothing else changes:

* no k-core (the files are already filtered) and no ``data.split``;
* a repeated (user, item) event is dropped, keeping the first in (part, timestamp, line) order (the official
  files have none);
* a user with no training row is dropped with their held-out rows (``dropped.users_without_training_items``):
  their first target would have nothing before it to predict from;
* **items that occur only in validation or test rows are kept**, as the official benchmark keeps them: they
  are in the catalogue with their metadata text, so text-aware models can still rank them
  (``official.items_only_held_out`` counts them).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl

from pipeline.data.records import RawData
from pipeline.data.tables import Dataset, assemble, dense_codes, densify, sorted_ids
from pipeline.errors import DataError

log = logging.getLogger(__name__)


def build_official_dataset(raw: RawData) -> Dataset:
    """Number and order the interactions of ``raw`` (which has a ``part`` column), keeping its split.

    Raises:
        DataError: no user with a training row is left; the message gives the count after each step.
    """
    t0 = time.perf_counter()
    df = raw.interactions
    n_raw = df.height
    user_ids = sorted_ids(df.get_column("user_id"), False)
    item_ids = sorted_ids(df.get_column("item_id"), False)
    df = (
        df.select(
            dense_codes(df.get_column("user_id"), user_ids).alias("u"),
            dense_codes(df.get_column("item_id"), item_ids).alias("i"),
            "part",
            "ts",
            "line",
        )
        .sort("u", "part", "ts", "line")
        .filter((pl.col("u") * len(item_ids) + pl.col("i")).is_first_distinct())
    )
    duplicates = n_raw - df.height
    u = df.get_column("u").to_numpy()
    i = df.get_column("i").to_numpy()
    part = df.get_column("part").to_numpy()
    del df
    has_train = np.bincount(u[part == 0], minlength=len(user_ids)) > 0
    keep = has_train[u]
    users_dropped = int(np.count_nonzero(np.bincount(u[~keep], minlength=len(user_ids))))
    targets_dropped = int(np.count_nonzero(~keep))
    u, i, part = u[keep], i[keep], part[keep]
    files = ", ".join(r.path.name for r in raw.reports[:-1]) or "the input"
    if u.size == 0:
        raise DataError(
            f"no interactions left: {n_raw} rows parsed from {files} "
            f"({sum(r.malformed for r in raw.reports)} malformed rows skipped) -> {n_raw - duplicates} after "
            f"dropping {duplicates} repeated (user, item) rows -> 0 after dropping the {users_dropped} users "
            "without a training row (is the training file the one of the same category and split?)"
        )

    # dense 1-based ids in sorted original-id order; rows stay sorted by (user, part, ts, line)
    dense = densify(u, i, len(user_ids), len(item_ids))
    n_users, n_items = dense.n_users, dense.n_items
    per_part = [np.bincount(dense.users[part == k], minlength=n_users + 1)[1:] for k in range(3)]
    lengths = per_part[0] + per_part[1] + per_part[2]
    bounds = (lengths, per_part[0], per_part[0] + per_part[1])
    item_counts = np.bincount(dense.items, minlength=n_items + 1)[1:]
    held_out_only = np.bincount(dense.items[part == 0], minlength=n_items + 1)[1:] == 0
    official = {
        "items_only_held_out": int(held_out_only.sum()),
        "interactions_of_items_only_held_out": int(item_counts[held_out_only].sum()),
        "users_without_valid_target": int((per_part[1] == 0).sum()),
        "users_without_test_target": int((per_part[2] == 0).sum()),
    }
    dropped = {"users_without_training_items": users_dropped, "held_out_rows_of_those_users": targets_dropped}
    counts = {"raw_interactions": n_raw, "duplicates": duplicates}
    out = assemble(raw, user_ids, item_ids, dense, bounds, counts, dropped, {"official": official})
    log.info(
        "%d users, %d items, %d interactions (official %s split; from %d rows: %d duplicates, %d users without "
        "a training row dropped) in %.1f s",
        n_users, n_items, int(u.size), raw.official_split, n_raw, duplicates, users_dropped,
        time.perf_counter() - t0,
    )  # fmt: skip
    return out
