"""Deterministic demo data in the real Amazon 2014 formats, with structure that both modalities reveal.

The catalogue is split into F *families*. A family has a colour and a shape (its images) and a pair of
words plus a product type (its titles); its items are ordered, and along that order the image shade and
size change smoothly and the title's variant word changes every few items, so content similarity also
points at an item's neighbours in the order. Users pick one or two families (popular families more often)
and walk mostly forward within a family, one to three steps at a time (popular items favoured), with
occasional jumps to a globally popular item and switches between their families. Item popularity is
heavy-tailed, so many items are rare and only their content says where they belong: a model that uses
modality information can beat an ID-only one.

Everything is vectorised numpy/polars (>= 1,000,000 items in seconds; images are optional). Random streams
are separate per part (catalogue, users, images), so e.g. changing the number of users keeps the catalogue.
Files are written byte-for-byte deterministically (gzip without a timestamp, PNG without metadata).

Raw files (names as the 2014 release): ``reviews_<Category>_5.json.gz`` (strict JSON lines) or
``ratings_<Category>.csv``, ``meta_<Category>.json.gz`` (one Python-literal dict per line, as the real
2014 metadata) and ``images/<asin>.png``. Realistic wrinkles: HTML entities in titles, brands and
categories (``&amp;``), brands with apostrophes (double-quoted literals), categories as a list of lists,
irregular whitespace, some items without title, brand, description or price, and a few repeated reviews.

Modules: ``catalogue`` (families, popularity, the users' walks), ``text`` (titles, metadata lines, reviews),
``images`` (the product pictures); this one writes the files (:func:`write_demo_raw`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from pipeline.config import DemoParams
from pipeline.data.sources.demo.catalogue import (
    DemoCatalogue,
    DemoInteractions,
    generate_catalogue,
    generate_interactions,
)
from pipeline.data.sources.demo.images import write_images
from pipeline.data.sources.demo.text import catalogue_text, meta_lines, review_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoFiles:
    """What :func:`write_demo_raw` wrote, plus the underlying arrays (for tests and benchmarks)."""

    reviews: Path
    meta: Path
    images_dir: Path | None
    catalogue: DemoCatalogue
    interactions: DemoInteractions


def _chunks(frame: pl.DataFrame, rows: int = 200_000) -> Iterator[pl.DataFrame]:
    for offset in range(0, frame.height, rows):
        yield frame.slice(offset, rows)


@contextlib.contextmanager
def _gzip_writer(path: Path) -> Iterator[gzip.GzipFile]:
    """A deterministic gzip stream (no file name, mtime 0)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as f,
    ):
        yield f


def write_demo_raw(
    demo: DemoParams,
    category: str,
    raw_dir: Path,
    image_prefix: str | None = None,
    reviews_format: Literal["json", "ratings_csv"] = "json",
    users: int | None = None,
) -> DemoFiles:
    """Generate the demo data set and write it in the Amazon 2014 formats under ``raw_dir``.

    Args:
        demo: generator params (``data.demo``).
        category: file-name category (``reviews_<category>_5.json.gz``, ``meta_<category>.json.gz``).
        raw_dir: output folder (created).
        image_prefix: what ``imUrl`` holds before ``/<asin>.png`` (e.g. ``data/processed/demo_raw/images``,
            relative to the project root); default ``raw_dir/images``. Unused when ``demo.images`` is off
            (no ``imUrl`` then).
        reviews_format: ``json`` (``reviews_<category>_5.json.gz``) or ``ratings_csv``
            (``ratings_<category>.csv``, the 2014 ratings-only format).
        users: overrides ``demo.users``.

    Returns:
        The paths written and the generated arrays.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    cat = generate_catalogue(demo)
    inter = generate_interactions(demo, cat, users)
    text = catalogue_text(cat, demo.seed)
    images_dir = raw_dir / "images" if demo.images else None
    if images_dir is not None:
        write_images(cat, images_dir, demo.image_size, demo.seed)
        prefix = image_prefix if image_prefix is not None else images_dir.as_posix()
    else:
        prefix = None

    meta_path = raw_dir / f"meta_{category}.json.gz"
    lines = meta_lines(text, category, prefix, demo.seed)
    with _gzip_writer(meta_path) as f:
        for offset in range(0, lines.len(), 200_000):
            f.write(("\n".join(lines.slice(offset, 200_000).to_list()) + "\n").encode())

    reviews = review_frame(inter, cat, text)
    if reviews_format == "json":
        reviews_path = raw_dir / f"reviews_{category}_5.json.gz"
        with _gzip_writer(reviews_path) as f:
            for chunk in _chunks(reviews):
                f.write(chunk.write_ndjson().encode())
    elif reviews_format == "ratings_csv":
        reviews_path = raw_dir / f"ratings_{category}.csv"
        reviews.select("reviewerID", "asin", "overall", "unixReviewTime").write_csv(
            reviews_path, include_header=False
        )
    else:
        raise ValueError(f"unknown reviews_format {reviews_format!r}")
    log.info(
        "demo data: %d items in %d families, %d users, %d reviews -> %s",
        cat.n_items, cat.n_families, inter.user_id.size, inter.item.size, raw_dir,
    )  # fmt: skip
    return DemoFiles(reviews_path, meta_path, images_dir, cat, inter)
