"""The Amazon releases (2014, 2018, 2023): where each keeps its files and which fields hold what, finding
(or downloading) one category's files and loading them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.data.download import download_file, verify_checksum
from pipeline.data.records import FieldCounts, FileReport, RawData
from pipeline.data.sources.metadata import read_metadata
from pipeline.data.sources.reviews import read_json_reviews, read_ratings_csv
from pipeline.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmazonFormat:
    """Where an Amazon release keeps its files and which fields hold what.

    File names contain ``{category}``. ``reviews`` lists alternatives in order of preference, each a
    (file name, kind) pair with kind ``json`` (JSON lines) or ``ratings_csv`` (``user,item,rating,ts``).
    """

    name: str
    reviews: tuple[tuple[str, str], ...]
    meta: tuple[str, ...]  # alternatives for the metadata file
    user_key: str
    item_key: str
    time_key: str
    meta_item_key: str
    meta_python_literal: bool
    image_field: str  # the release's own image field, tried when data.image_column is absent from a record
    review_url: str  # official URL of reviews[0] (with {category})
    meta_url: str  # official URL of meta[0]


AMAZON_FORMATS: dict[str, AmazonFormat] = {
    "amazon2014": AmazonFormat(
        name="amazon2014",
        reviews=(("reviews_{category}_5.json.gz", "json"), ("ratings_{category}.csv", "ratings_csv")),
        meta=("meta_{category}.json.gz",),
        user_key="reviewerID",
        item_key="asin",
        time_key="unixReviewTime",
        meta_item_key="asin",
        meta_python_literal=True,
        image_field="imUrl",
        review_url="https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz",
        meta_url="https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{category}.json.gz",
    ),
    "amazon2018": AmazonFormat(
        name="amazon2018",
        reviews=(("{category}_5.json.gz", "json"), ("{category}_5.json", "json")),
        meta=("meta_{category}.json.gz", "meta_{category}.json"),
        user_key="reviewerID",
        item_key="asin",
        time_key="unixReviewTime",
        meta_item_key="asin",
        meta_python_literal=False,
        image_field="image",
        review_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz",
        meta_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_{category}.json.gz",
    ),
    "amazon2023": AmazonFormat(
        name="amazon2023",
        reviews=(("{category}.jsonl.gz", "json"), ("{category}.jsonl", "json")),
        meta=("meta_{category}.jsonl.gz", "meta_{category}.jsonl"),
        user_key="user_id",
        item_key="parent_asin",
        time_key="timestamp",
        meta_item_key="parent_asin",
        meta_python_literal=False,
        image_field="images",
        review_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/review_categories/{category}.jsonl.gz",
        meta_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/meta_categories/meta_{category}.jsonl.gz",
    ),
}


def amazon_files(
    fmt: AmazonFormat, category: str, folder: Path, download: bool
) -> tuple[tuple[Path, str], Path]:
    """Find (or download) an Amazon release's review and metadata files in ``folder``.

    Returns:
        ((reviews path, kind), metadata path); kind is ``json`` or ``ratings_csv``.

    Raises:
        DataError: files missing and ``download`` off (or the download failed), naming the expected paths.
    """
    reviews = [(folder / name.format(category=category), kind) for name, kind in fmt.reviews]
    metas = [folder / name.format(category=category) for name in fmt.meta]
    found_reviews = next(((p, k) for p, k in reviews if p.exists()), None)
    found_meta = next((p for p in metas if p.exists()), None)
    if download:
        if found_reviews is None:
            found_reviews = (
                download_file(fmt.review_url.format(category=category), reviews[0][0]),
                reviews[0][1],
            )
        if found_meta is None:
            found_meta = download_file(fmt.meta_url.format(category=category), metas[0])
    if found_reviews is None or found_meta is None:
        missing = []
        if found_reviews is None:
            missing.append(
                " or ".join(str(p) for p, _ in reviews)
                + f"  (from {fmt.review_url.format(category=category)})"
            )
        if found_meta is None:
            missing.append(
                " or ".join(str(p) for p in metas) + f"  (from {fmt.meta_url.format(category=category)})"
            )
        raise DataError(
            f"data.source={fmt.name}, data.category={category}: raw file(s) missing:\n  - "
            + "\n  - ".join(missing)
            + "\nPut them there, or set data.download: true to fetch them from the official URLs."
        )
    for path in (found_reviews[0], found_meta):
        if verify_checksum(path):
            log.info("%s: checksum verified", path)
    return found_reviews, found_meta


def load_amazon_files(
    fmt: AmazonFormat,
    reviews: tuple[Path, str],
    meta: Path,
    text_columns: list[str],
    image_column: str | None,
    max_bad_fraction: float,
    attribute_columns: Mapping[str, str | None] | None = None,
) -> RawData:
    """Parse one release's reviews and metadata; fail when a file has too many malformed records, or when
    a configured text, attribute or image field is in none of the metadata records (warn when it is in
    few)."""
    path, kind = reviews
    t0 = time.perf_counter()
    if kind == "ratings_csv":
        inter, rep = read_ratings_csv(path)
    else:
        inter, rep = read_json_reviews(path, fmt.user_key, fmt.item_key, fmt.time_key)
    rep.check(max_bad_fraction)
    log.info(
        "%s: %d interactions (%d malformed) in %.1f s",
        path,
        inter.height,
        rep.malformed,
        time.perf_counter() - t0,
    )
    items, meta_rep, duplicates = load_amazon_metadata(
        fmt, meta, text_columns, image_column, max_bad_fraction, attribute_columns
    )
    return RawData(inter, items, numeric_ids=False, reports=[rep, meta_rep], metadata_duplicates=duplicates)


def load_amazon_metadata(
    fmt: AmazonFormat,
    meta: Path,
    text_columns: list[str],
    image_column: str | None,
    max_bad_fraction: float,
    attribute_columns: Mapping[str, str | None] | None = None,
) -> tuple[pl.DataFrame, FileReport, int]:
    """Parse one release's metadata file into (item_id, text, image, attributes) rows; fail when it has too
    many malformed records, or when a configured text, attribute or image field is in none of its records.

    Returns:
        The item frame, the file report and the number of repeated ids dropped.
    """
    t0 = time.perf_counter()
    image_columns = [] if image_column is None else list(dict.fromkeys([image_column, fmt.image_field]))
    counts = FieldCounts(meta)
    attribute_columns = dict(attribute_columns or {})
    items, meta_rep, duplicates = read_metadata(
        meta,
        fmt.meta_item_key,
        text_columns,
        image_columns,
        fmt.meta_python_literal,
        counts,
        attribute_columns,
    )
    meta_rep.check(max_bad_fraction)
    counts.check(text_columns, image_column, [fmt.image_field], list(attribute_columns))
    log.info(
        "%s: %d items (%d malformed) in %.1f s",
        meta,
        items.height,
        meta_rep.malformed,
        time.perf_counter() - t0,
    )
    return items, meta_rep, duplicates
