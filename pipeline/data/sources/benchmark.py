"""The Amazon Reviews 2023 benchmark CSVs (``data.source: amazon2023_csv``) with their official split.

The McAuley lab publishes, per category, ``<Category>.train.csv``, ``.valid.csv`` and ``.test.csv`` (gzipped
on the server) under ``benchmark/<5core|0core>/<split>/``, with a header ``user_id,parent_asin,rating,
timestamp`` (timestamp in ms); the ``*_w_his`` variants add a ``history`` column (the space-separated
parent_asins before the row's item), which this reader accepts and ignores: the training rows carry the same
items. Files written by the lab's own scripts have no header; they are read by position (4 or 5 fields).

Each file is read by a polars lazy scan collected with the streaming engine, one line as one string split on
commas, so a file of tens of millions of lines is parsed in bounded working memory without a Python loop per
row, a ragged line is a malformed line rather than a parser error, and line numbers are exact (blank lines
count). Malformed lines are skipped, counted and named (:class:`~pipeline.data.records.FileReport`). Item text
comes from the 2023 metadata file (``meta_<Category>.jsonl``, keyed by parent_asin).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from pipeline.data.download import download_file, verify_checksum
from pipeline.data.records import MAX_REPORTED, FileReport, RawData, iter_lines
from pipeline.data.sources.amazon import AMAZON_FORMATS, load_amazon_metadata
from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.config import DataParams

log = logging.getLogger(__name__)

PARTS = ("train", "valid", "test")  # the ``part`` codes 0, 1, 2
SOURCE_DIR = "amazon2023_csv"  # under data.raw_dir
BENCHMARK_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/benchmark/{core}/{split}/{category}.{part}.csv.gz"
REQUIRED = ("user_id", "parent_asin", "timestamp")
POSITIONAL = {
    4: ("user_id", "parent_asin", "rating", "timestamp"),
    5: ("user_id", "parent_asin", "rating", "timestamp", "history"),
}
_SEPARATOR = "\x1f"  # a byte no CSV line of these files holds: each line is read as one string


def _columns(path: Path) -> tuple[tuple[str, ...], bool]:
    """The file's column names and whether line 1 is a header (it is when it names ``user_id``)."""
    first = next(iter_lines(path), None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header user_id,parent_asin,rating,timestamp)")
    text = first[1].decode("utf-8", errors="replace").removeprefix("\ufeff")  # a byte-order mark
    fields = tuple(f.strip() for f in text.split(","))
    if "user_id" in fields:
        missing = [c for c in REQUIRED if c not in fields]
        if missing:
            raise DataError(f"{path}:1: column(s) {missing} missing; the header has {list(fields)}")
        return fields, True
    if len(fields) not in POSITIONAL:
        raise DataError(
            f"{path}:1: no header and {len(fields)} fields; expected a header naming {', '.join(REQUIRED)}, or "
            "rows of 4 fields (user_id,parent_asin,rating,timestamp) or 5 (..., history)"
        )
    return POSITIONAL[len(fields)], False


def read_benchmark_csv(path: Path) -> tuple[pl.DataFrame, FileReport]:
    """Read one benchmark CSV (plain or gzipped) into ``user_id``, ``item_id``, ``ts``, ``line``.

    A line is malformed (skipped and counted) when it has another number of fields than the header, an
    empty user_id or parent_asin, a timestamp that is not an integer, a rating that is not a number, or
    bytes that are not UTF-8.

    Raises:
        DataError: an empty file, a header without a required column, or a file that cannot be read (a
            truncated gzip), naming the file (and line).
    """
    names, header = _columns(path)
    report = FileReport(path)
    fields = pl.col("raw").str.strip_suffix("\r").str.split(",")

    def field(name: str) -> pl.Expr:
        return fields.list.get(names.index(name), null_on_oob=True).str.strip_chars()

    user, item, ts_text = field("user_id"), field("parent_asin"), field("timestamp")
    ts = ts_text.cast(pl.Int64, strict=False)
    checks = {
        "fields": fields.list.len() == len(names),
        "user": user.str.len_bytes() > 0,
        "item": item.str.len_bytes() > 0,
        "ts": ts.is_not_null(),
        "utf8": ~pl.col("raw").str.contains("\ufffd", literal=True),
    }
    if "rating" in names:
        checks["rating"] = field("rating").cast(pl.Float64, strict=False).is_not_null()
    ok = pl.all_horizontal(list(checks.values())).fill_null(False)
    scan = pl.scan_csv(
        path,
        has_header=False,
        separator=_SEPARATOR,
        quote_char=None,
        schema={"raw": pl.String},
        row_index_name="row",
        encoding="utf8-lossy",
        truncate_ragged_lines=True,
    ).filter(pl.col("raw").is_not_null() & (pl.col("row") >= int(header)))  # a blank line reads as null
    line = (pl.col("row").cast(pl.Int64) + 1).alias("line")
    try:
        df = scan.select(
            user.alias("user_id"), item.alias("item_id"), ts.alias("ts"), line, ok.alias("ok")
        ).collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(
            f"{path}: cannot be read ({str(err).splitlines()[0][:200]}); a truncated download? delete it "
            "(and its .sha256 sidecar) and download it again"
        ) from None
    report.records = df.height
    bad = df.height - int(df.get_column("ok").sum())
    if bad:
        reason = (
            pl.when(~checks["utf8"])
            .then(pl.lit("not UTF-8"))
            .when(~checks["fields"])
            .then(
                pl.format(
                    "{} fields, expected {} ({})", fields.list.len(), len(names), pl.lit(",".join(names))
                )
            )
            .when(~checks["user"])
            .then(pl.lit("empty user_id"))
            .when(~checks["item"])
            .then(pl.lit("empty parent_asin"))
            .when(~checks["ts"])
            .then(pl.format("timestamp {} is not an integer", ts_text.str.slice(0, 40)))
            .otherwise(pl.lit("rating is not a number"))
        )
        examples = scan.filter(~ok).head(MAX_REPORTED).select(line, reason.alias("reason")).collect()
        for number, why in examples.iter_rows():
            report.bad(number, why)
        report.malformed = bad
        df = df.filter("ok")
    return df.drop("ok"), report


def _check_one_per_user(df: pl.DataFrame, path: Path, part: str) -> None:
    """last_out: each user has at most one validation row and one test row."""
    again = df.filter(~pl.col("user_id").is_first_distinct()).head(1)
    if again.height:
        user, number = again.get_column("user_id")[0], again.get_column("line")[0]
        first = df.filter(pl.col("user_id") == user).get_column("line")[0]
        raise DataError(
            f"{path}:{number}: user {user!r} has a second {part} row (the first is line {first}); a last_out "
            f"split holds one {part} item per user: is data.benchmark.split right?"
        )


def _find(candidates: list[Path], url: str | None, download: bool) -> Path | None:
    found = next((p for p in candidates if p.exists()), None)
    if found is None and download and url is not None:
        found = download_file(url, candidates[0])
    if found is not None and verify_checksum(found):
        log.info("%s: checksum verified", found)
    return found


def benchmark_files(data: DataParams) -> tuple[dict[str, Path], Path]:
    """The three split files and the metadata file of ``data`` (found, or downloaded with data.download).

    Raises:
        DataError: files missing (and not downloaded), naming each expected path and its official URL.
    """
    b, category, raw = data.benchmark, data.category, Path(data.raw_dir)
    folder = raw / SOURCE_DIR / b.core / b.split
    found: dict[str, Path] = {}
    missing: list[str] = []
    for part in PARTS:
        given = getattr(b, f"{part}_file")
        url = BENCHMARK_URL.format(core=b.core, split=b.split, category=category, part=part)
        if given is not None:
            candidates, url_or_none = [Path(given)], None  # an explicit path is never downloaded over
        else:
            candidates = [folder / f"{category}.{part}.csv.gz", folder / f"{category}.{part}.csv"]
            url_or_none = url
        path = _find(candidates, url_or_none, data.download)
        if path is not None:
            found[part] = path
        else:
            missing.append(f"{' or '.join(map(str, candidates))}  (data.benchmark.{part}_file; from {url})")
    fmt = AMAZON_FORMATS["amazon2023"]
    if b.meta_file is not None:
        metas, meta_url = [Path(b.meta_file)], None
    else:
        metas = [raw / "amazon2023" / name.format(category=category) for name in fmt.meta]
        meta_url = fmt.meta_url.format(category=category)
    meta = _find(metas, meta_url, data.download)
    if meta is None:
        missing.append(
            f"{' or '.join(map(str, metas))}  (data.benchmark.meta_file; from {fmt.meta_url.format(category=category)})"
        )
    if missing or meta is None:
        raise DataError(
            f"data.source=amazon2023_csv, data.category={category}: file(s) missing:\n  - "
            + "\n  - ".join(missing)
            + "\nPut them there, set the data.benchmark paths, or set data.download: true to fetch the default "
            "ones from the official URLs."
        )
    return found, meta


def load_benchmark_csv(data: DataParams) -> RawData:
    """The ``amazon2023_csv`` source: the three official split files plus the 2023 metadata.

    Returns:
        RawData whose interactions carry a ``part`` column (0 train, 1 validation, 2 test) and whose
        ``official_split`` is ``data.benchmark.split``.
    """
    files, meta = benchmark_files(data)
    frames, reports = [], []
    for code, part in enumerate(PARTS):
        t0 = time.perf_counter()
        df, rep = read_benchmark_csv(files[part])
        rep.check(data.max_bad_fraction)
        if part != "train" and data.benchmark.split.startswith("last_out"):
            _check_one_per_user(df, files[part], part)
        log.info(
            "%s: %d rows (%d malformed) in %.1f s",
            files[part],
            df.height,
            rep.malformed,
            time.perf_counter() - t0,
        )
        frames.append(df.with_columns(pl.lit(code, pl.Int8).alias("part")))
        reports.append(rep)
    fmt = AMAZON_FORMATS["amazon2023"]
    items, meta_rep, duplicates = load_amazon_metadata(
        fmt, meta, list(data.text_columns), data.image_column, data.max_bad_fraction, data.attribute_columns
    )
    return RawData(
        pl.concat(frames, rechunk=False),
        items,
        numeric_ids=False,
        reports=[*reports, meta_rep],
        category=data.category,
        metadata_duplicates=duplicates,
        official_split=data.benchmark.split,
    )
