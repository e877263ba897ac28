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

from pipeline.config import DataParams, MLflowParams, ParamsView, section_dict
from pipeline.data.kcore import kcore_filter
from pipeline.data.official import build_official_dataset
from pipeline.data.records import RawData
from pipeline.data.sources.amazon import AMAZON_FORMATS, amazon_files, load_amazon_files
from pipeline.data.sources.benchmark import load_benchmark_csv
from pipeline.data.sources.demo import write_demo_raw
from pipeline.data.sources.sequences import load_sequences
from pipeline.data.splits import MIN_SEQUENCE_LENGTH, split_boundaries
from pipeline.data.tables import Dataset, assemble, dense_codes, densify, sorted_ids
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
    raw = load_amazon_files(
        fmt,
        reviews,
        meta,
        list(data.text_columns),
        image_column,
        data.max_bad_fraction,
        data.attribute_columns,
    )
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
    dense = densify(u, i, len(user_ids), len(item_ids))
    lengths = np.bincount(dense.users, minlength=dense.n_users + 1)[1:]
    train_end, valid_end = split_boundaries(lengths, split, test_fraction)
    dropped = {
        "kcore_users": core.users_dropped,
        "kcore_items": core.items_dropped,
        "kcore_interactions": core.interactions_dropped,
    }
    counts = {"raw_interactions": n_raw, "duplicates": duplicates}
    bounds = (lengths, train_end, valid_end)
    out = assemble(raw, user_ids, item_ids, dense, bounds, counts, dropped, {"kcore_passes": core.passes})
    log.info(
        "%d users, %d items, %d interactions (from %d raw; %d duplicates, k-core dropped %d users, %d items) in %.1f s",
        dense.n_users, dense.n_items, int(u.size), n_raw, duplicates, core.users_dropped, core.items_dropped,
        time.perf_counter() - t0,
    )  # fmt: skip
    return out


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
