"""The Amazon review files: JSON lines (2014 ``reviews_*_5.json.gz``, 2018 ``*_5.json.gz``, 2023
``*.jsonl``) and the 2014 ratings-only CSV.

Big files take a fast path through polars (``read_ndjson`` / ``read_csv`` with a fixed schema); only when
that path meets a malformed record does the file go through a per-line Python parser, which skips and
counts bad lines and reports the first few with their line numbers (:class:`~pipeline.data.records.FileReport`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from pipeline.data.records import (
    FileReport,
    as_id,
    as_int,
    in_int64,
    interactions_frame,
    iter_lines,
    parse_progress,
)

log = logging.getLogger(__name__)


def _has_gaps(df: pl.DataFrame, id_cols: Sequence[str], other: Sequence[str]) -> bool:
    """True when a required field is null, or an id is empty (the per-line parser must then report it)."""
    checks = [pl.col(c).is_null().any() for c in [*id_cols, *other]]
    checks += [(pl.col(c).str.len_bytes() == 0).any() for c in id_cols]
    return bool(df.select(pl.any_horizontal(checks)).item())


def _parse_line_by_line(
    path: Path, report: FileReport, parse: Callable[[bytes], tuple[str, str, int]]
) -> pl.DataFrame:
    """The slow path of both readers: ``parse`` each non-blank line into (user, item, timestamp); a line it
    rejects (ValueError, or JSON nested too deeply) is counted in ``report`` with its number and skipped."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lines: list[int] = []
    for number, raw in parse_progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            u, i, t = parse(raw)
        except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            report.bad(number, str(err))
            continue
        except RecursionError:
            report.bad(number, "nested too deeply to parse")
            continue
        users.append(u)
        items.append(i)
        times.append(t)
        lines.append(number)
    return interactions_frame(users, items, times, lines)


def read_json_reviews(
    path: Path, user_key: str, item_key: str, time_key: str
) -> tuple[pl.DataFrame, FileReport]:
    """Read JSON-lines reviews (2014 ``reviews_*_5.json.gz``, 2018 ``*_5.json.gz``, 2023 ``*.jsonl``).

    Args:
        path: the (optionally gzipped) JSON-lines file.
        user_key: field with the user id (``reviewerID`` / ``user_id``).
        item_key: field with the item id (``asin`` / ``parent_asin``).
        time_key: integer timestamp field (``unixReviewTime`` seconds / ``timestamp`` ms).

    Returns:
        The interactions frame and the file's report (malformed lines skipped and counted).
    """
    report = FileReport(path)
    schema = {user_key: pl.String, item_key: pl.String, time_key: pl.Int64}
    try:
        df = pl.read_ndjson(path, schema=schema, row_index_name="line")
    except (pl.exceptions.PolarsError, ValueError, OSError) as err:  # OSError: e.g. a damaged .gz
        log.info("%s: fast JSON path failed (%s); parsing line by line", path, str(err).splitlines()[0][:120])
    else:
        if not _has_gaps(df, [user_key, item_key], [time_key]):
            report.records = df.height
            frame = df.select(
                pl.col(user_key).alias("user_id"),
                pl.col(item_key).alias("item_id"),
                pl.col(time_key).alias("ts"),
                pl.col("line").cast(pl.Int64),
            )
            return frame, report
        log.info("%s: records with missing fields; parsing line by line to report them", path)

    def parse(raw: bytes) -> tuple[str, str, int]:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError(f"not a JSON object ({type(obj).__name__})")
        return as_id(obj, user_key), as_id(obj, item_key), as_int(obj, time_key)

    return _parse_line_by_line(path, report, parse), report


def read_ratings_csv(path: Path) -> tuple[pl.DataFrame, FileReport]:
    """Read the 2014 ratings-only CSV (``user,item,rating,timestamp`` rows, no header)."""
    report = FileReport(path)
    schema = {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64, "ts": pl.Int64}
    try:
        df = pl.read_csv(path, has_header=False, schema=schema, row_index_name="line", quote_char='"')
    except (pl.exceptions.PolarsError, ValueError, OSError) as err:
        log.info("%s: fast CSV path failed (%s); parsing line by line", path, str(err).splitlines()[0][:120])
    else:
        # blank lines come back as all-null rows
        df = df.filter(~pl.all_horizontal(pl.col("user_id", "item_id", "rating", "ts").is_null()))
        if not _has_gaps(df, ["user_id", "item_id"], ["rating", "ts"]):
            report.records = df.height
            return df.select("user_id", "item_id", "ts", pl.col("line").cast(pl.Int64)), report
        log.info("%s: rows with missing fields; parsing line by line to report them", path)

    def parse(raw: bytes) -> tuple[str, str, int]:
        row = next(csv.reader([raw.decode("utf-8")]))
        if len(row) != 4:
            raise ValueError(f"expected 4 fields (user,item,rating,timestamp), got {len(row)}")
        u, i, rating, t = (x.strip() for x in row)
        if not u or not i:
            raise ValueError("empty user or item id")
        float(rating)
        return u, i, in_int64(int(t), "timestamp")

    return _parse_line_by_line(path, report, parse), report
