"""The ingest stage: raw files (or the demo generator) -> ``items.parquet``, ``sequences.parquet``, stats.

Steps, each counted in ``reports/data_stats.json``:

1. parse the source's files (:mod:`pipeline.data.sources`), skipping and counting malformed records; a
   file with more than ``data.max_bad_fraction`` malformed records fails the stage;
2. order each user's events chronologically (timestamp, then position in the file; for ``sequences`` the
   file order is the time order) and drop repeated (user, item) events, keeping the earliest;
3. iterative k-core to a fixed point: items need ``data.kcore`` interactions, users ``max(data.kcore, 3)``
   (a user needs a training item, a validation target and a test target);
4. number users and items densely from 1 in the sorted order of their original ids (numeric order for the
   ``sequences`` source, whose ids must be canonical integers, so Beauty's item 1 stays 1); 0 is padding;
5. attach item text and image; **an item absent from the metadata keeps its interactions** with empty text
   and no image (dropping it would break the k-core guarantee); such items and their interactions are
   counted (``metadata.items_without_metadata`` / ``metadata.interactions_without_metadata``);
6. split boundaries (``loo`` / ``ratio``, :mod:`pipeline.data.splits`).

A source with an official split (``amazon2023_csv``) skips steps 3 and 6: it keeps its split as it is
(:mod:`pipeline.data.official`).

Outputs are written into a temporary sibling folder of ``data/processed`` and swapped in at the end, so a
failed run leaves an existing good output untouched and nothing half-written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.config import DataParams, MLflowParams, ParamsView, section_dict
from pipeline.data.kcore import kcore_filter
from pipeline.data.official import build_official_dataset
from pipeline.data.records import RawData
from pipeline.data.sources.amazon import AMAZON_FORMATS, amazon_files, load_amazon_files
from pipeline.data.sources.benchmark import load_benchmark_csv
from pipeline.data.sources.demo import write_demo_raw
from pipeline.data.sources.sequences import load_sequences
from pipeline.data.splits import MIN_SEQUENCE_LENGTH, split_boundaries
from pipeline.data.tables import Dataset, dense_codes, items_table, lengths_summary, sorted_ids, string_array
from pipeline.errors import DataError
from pipeline.io import file_digest, staged_dir, write_json, write_parquet
from pipeline.layout import ITEMS, SEQUENCES
from pipeline.tracking import start_run

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- loading
def load_raw(data: DataParams, staging: Path, out_dir: Path) -> RawData:
    """Parse the configured source. The demo generator writes its raw files into ``staging/demo_raw``,
    with image paths pointing at their final place ``out_dir/demo_raw/images``."""
    if data.source == "sequences":
        return load_sequences(data)
    if data.source == "amazon2023_csv":
        return load_benchmark_csv(data)
    if data.source == "demo":
        files = write_demo_raw(
            data.demo,
            data.category,
            staging / "demo_raw",
            image_prefix=(out_dir / "demo_raw" / "images").as_posix(),
        )
        fmt, reviews, meta = AMAZON_FORMATS["amazon2014"], (files.reviews, "json"), files.meta
        image_column = data.image_column if data.demo.images else None  # the demo wrote no image field
    else:
        fmt = AMAZON_FORMATS[data.source]
        reviews, meta = amazon_files(fmt, data.category, Path(data.raw_dir) / data.source, data.download)
        image_column = data.image_column
    raw = load_amazon_files(fmt, reviews, meta, list(data.text_columns), image_column, data.max_bad_fraction)
    raw.category = data.category
    return raw


# --------------------------------------------------------------------------------------------- processing
def build_dataset(raw: RawData, kcore: int, split: str, test_fraction: float = 0.2) -> Dataset:
    """Order, deduplicate, k-core filter, number and split the parsed interactions (steps 2-6 above).

    Raises:
        DataError: nothing is left after filtering; the message gives the count after each step.
    """
    t0 = time.perf_counter()
    df = raw.interactions
    n_raw = df.height
    user_ids = sorted_ids(df.get_column("user_id"), raw.numeric_ids)
    item_ids = sorted_ids(df.get_column("item_id"), raw.numeric_ids)
    df = (
        df.select(
            dense_codes(df.get_column("user_id"), user_ids).alias("u"),
            dense_codes(df.get_column("item_id"), item_ids).alias("i"),
            "ts",
            "line",
        )
        .sort("u", "ts", "line")
        .filter((pl.col("u") * len(item_ids) + pl.col("i")).is_first_distinct())
    )
    duplicates = n_raw - df.height
    u = df.get_column("u").to_numpy()
    i = df.get_column("i").to_numpy()
    core = kcore_filter(u, i, min_user=max(kcore, MIN_SEQUENCE_LENGTH), min_item=kcore)
    u, i = u[core.keep], i[core.keep]
    if u.size == 0:
        raise DataError(
            "no interactions left after filtering: "
            f"{n_raw} parsed from {', '.join(r.path.name for r in raw.reports) or 'the input'} "
            f"({sum(r.malformed for r in raw.reports)} malformed records skipped) -> {n_raw - duplicates} after "
            f"dropping {duplicates} repeated (user, item) events -> 0 after the iterative {kcore}-core "
            f"(users need >= {max(kcore, MIN_SEQUENCE_LENGTH)} interactions, items >= {kcore}; it dropped "
            f"{core.users_dropped} users, {core.items_dropped} items and {core.interactions_dropped} "
            f"interactions in {core.passes} passes)"
        )

    # dense 1-based ids in sorted original-id order; rows stay sorted by (user, ts, line)
    user_present = np.bincount(u, minlength=len(user_ids)) > 0
    item_present = np.bincount(i, minlength=len(item_ids)) > 0
    new_u = np.cumsum(user_present)[u].astype(np.int32)
    new_i = np.cumsum(item_present)[i].astype(np.int32)
    n_users, n_items = int(user_present.sum()), int(item_present.sum())
    lengths = np.bincount(new_u, minlength=n_users + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    train_end, valid_end = split_boundaries(lengths, split, test_fraction)
    sequences = pa.table(
        {
            "user": pa.array(np.arange(1, n_users + 1, dtype=np.int32)),
            "user_id": string_array(user_ids.gather(np.flatnonzero(user_present))),
            "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(new_i)),
            "train_end": pa.array(train_end),
            "valid_end": pa.array(valid_end),
        }
    )

    item_counts = np.bincount(new_i, minlength=n_items + 1)[1:]
    items, meta_counts = items_table(item_ids.gather(np.flatnonzero(item_present)), raw.items, item_counts)

    n_inter = int(u.size)
    stats: dict[str, Any] = {
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "sequence_length": lengths_summary(lengths),
        "raw": {
            "interactions": n_raw,
            "users": len(user_ids),
            "items": len(item_ids),
            "metadata_records": raw.items.height,
        },
        "dropped": {
            "malformed_records": sum(r.malformed for r in raw.reports),
            "duplicates": duplicates,
            "kcore_users": core.users_dropped,
            "kcore_items": core.items_dropped,
            "kcore_interactions": core.interactions_dropped,
            "duplicate_metadata_records": raw.metadata_duplicates,
        },
        "kcore_passes": core.passes,
        "metadata": meta_counts,
        "split_sizes": {
            "train_interactions": int(train_end.sum()),
            "valid_targets": int((valid_end - train_end).sum()),
            "test_targets": int((lengths - valid_end).sum()),
        },
        "records": {r.path.name: r.records for r in raw.reports},
        "malformed": {r.path.name: r.malformed for r in raw.reports},
    }
    log.info(
        "%d users, %d items, %d interactions (from %d raw; %d duplicates, k-core dropped %d users, %d items) in %.1f s",
        n_users, n_items, n_inter, n_raw, duplicates, core.users_dropped, core.items_dropped, time.perf_counter() - t0,
    )  # fmt: skip
    if stats["metadata"]["items_without_metadata"]:
        log.warning(
            "%d items (%d interactions) have no metadata record: kept with empty text and no image",
            stats["metadata"]["items_without_metadata"], stats["metadata"]["interactions_without_metadata"],
        )  # fmt: skip
    return Dataset(items, sequences, stats)


# --------------------------------------------------------------------------------------------- output
def run_ingest(
    data: DataParams | ParamsView,
    mlflow_params: MLflowParams | ParamsView,
    out_dir: Path,
    stats_path: Path,
) -> dict[str, Any]:
    """Run the ingest stage: parse ``data.source``, filter, number, split and write the outputs.

    Args:
        data: the ``data`` params section (:class:`pipeline.config.DataParams` or a view of it).
        mlflow_params: the ``mlflow`` params section.
        out_dir: gets ``items.parquet``, ``sequences.parquet`` (and ``demo_raw/`` for the demo source);
            replaced as a whole only when everything succeeded.
        stats_path: the statistics JSON (DVC metrics file).

    Returns:
        The statistics written to ``stats_path``.
    """
    out_dir, stats_path = Path(out_dir), Path(stats_path)
    t0 = time.perf_counter()
    with start_run("ingest", mlflow_params, tags={"data.source": data.source}) as tracker:
        tracker.log_params({"data": section_dict(data)})
        with staged_dir(out_dir, clear_stale=True) as staging:
            raw = load_raw(data, staging, out_dir)
            metadata: dict[str, Any] = {"source": data.source, "category": raw.category}
            if raw.official_split is not None:  # the source's own split: no k-core, no data.split
                dataset = build_official_dataset(raw)
                metadata |= {"split": f"official:{raw.official_split}", "core": data.benchmark.core}
            else:
                dataset = build_dataset(raw, data.kcore, data.split, data.test_fraction)
                metadata |= {
                    "split": data.split,
                    "kcore": data.kcore,
                    "min_user_interactions": max(data.kcore, MIN_SEQUENCE_LENGTH),
                }
                if data.split == "ratio":
                    metadata["test_fraction"] = data.test_fraction
            write_parquet(staging / ITEMS, dataset.items, metadata)
            # lineage: the items these sequences number (embed records the digest of the items it read)
            lineage = {"items_sha256": file_digest(staging / ITEMS)}
            write_parquet(staging / SEQUENCES, dataset.sequences, {**metadata, **lineage})
        stats = {**metadata, **dataset.stats}
        write_json(stats_path, stats)
        tracker.log_metrics({k: v for k, v in dataset.stats.items()})
        tracker.log_artifact(stats_path)
    log.info(
        "ingest done in %.1f s: %s, %s",
        time.perf_counter() - t0,
        out_dir / ITEMS,
        out_dir / SEQUENCES,
    )
    return stats
