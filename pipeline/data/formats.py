"""Parsers of the raw data formats, each returning plain polars frames.

Every reader returns interactions as a frame with columns ``user_id`` (str), ``item_id`` (str), ``ts``
(int64, the source's time unit; for ``sequences`` the event's position in the file) and ``line`` (int64,
position in the file: the deterministic tie-break for equal timestamps), and item metadata as a frame with
``item_id`` (str), ``text`` (str, "" when empty) and ``image`` (str or null).

Big files take a fast path through polars (``read_ndjson`` / ``read_csv`` with a fixed schema); only when
that path meets a malformed record does the file go through a per-line Python parser, which skips and
counts bad lines and reports the first few with their line numbers (:class:`FileReport`). Metadata is parsed
per line in Python because its fields are heterogeneous and the text is assembled in Python anyway; the
2014 files are Python literals, read with :func:`ast.literal_eval` (never ``eval``) after a cheap exact
JSON fast path for lines that contain no double quote or backslash.
"""

from __future__ import annotations

import ast
import csv
import functools
import gzip
import html
import json
import logging
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import DataError
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

MAX_REPORTED = 5  # malformed lines logged (and quoted in errors) per file
PART_SEPARATOR = " | "
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # timestamps must fit the int64 ``ts`` column
# ids of the ``sequences`` source: canonical non-negative integers only ("5", not "5.0", "05" or "+5")
CANONICAL_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_CANONICAL_LINE = re.compile(
    r"\s*(?:0|[1-9][0-9]{0,17})(?:\s+(?:0|[1-9][0-9]{0,17}))*\s*"
)  # one match a line
# a configured text/image field that fewer than this share of records has is reported as a warning
FIELD_WARN_SHARE = 0.1

# When a configured text column is absent from a metadata record, these fields are tried in its place, so
# one ``text_columns`` list works across the 2014 (categories, brand), 2018 (category, feature) and 2023
# (categories, store, features) metadata.
TEXT_ALIASES: dict[str, tuple[str, ...]] = {
    "categories": ("category",),
    "category": ("categories",),
    "features": ("feature",),
    "feature": ("features",),
    "brand": ("store",),
}

INTERACTION_SCHEMA = {"user_id": pl.String, "item_id": pl.String, "ts": pl.Int64, "line": pl.Int64}
ITEM_SCHEMA = {"item_id": pl.String, "text": pl.String, "image": pl.String}


# --------------------------------------------------------------------------------------------- sources
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


# --------------------------------------------------------------------------------------------- reports
@dataclass
class FileReport:
    """Record and malformed-record counts of one input file, with the first few problems."""

    path: Path
    records: int = 0
    malformed: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def bad(self, line: int, reason: str) -> None:
        """Count a skipped record; log the first :data:`MAX_REPORTED` with file and line number."""
        self.malformed += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append((line, reason))
            log.warning("%s:%d: skipped malformed record: %s", self.path, line, reason)

    def summary(self) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.examples)
        more = (
            f" (and {self.malformed - len(self.examples)} more)"
            if self.malformed > len(self.examples)
            else ""
        )
        return f"{shown}{more}"

    def check(self, max_bad_fraction: float) -> None:
        """Raise :class:`DataError` naming the file when its malformed share exceeds ``max_bad_fraction``."""
        if self.malformed and self.malformed > max_bad_fraction * self.records:
            raise DataError(
                f"{self.path}: {self.malformed} of {self.records} records are malformed "
                f"({self.malformed / self.records:.2%} > data.max_bad_fraction = {max_bad_fraction:.2%}): "
                f"{self.summary()}"
            )


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without the newline) of a plain or gzip file.

    Raises:
        DataError: a truncated or corrupt gzip file (naming the file and the last good line).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):  # ``number``: the last good line, for the error
                yield number, raw.rstrip(b"\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(
            f"{path}: truncated or corrupt gzip file after line {number} ({type(err).__name__}: {err}); "
            "download it again (delete it and its .sha256 sidecar with data.download: true)"
        ) from None


@dataclass
class FieldCounts:
    """How many records of a metadata file carry each configured text/image field (aliases included)."""

    path: Path
    records: int = 0
    text: dict[str, int] = field(default_factory=dict)
    image: int = 0

    def check(
        self, text_columns: Sequence[str], image_column: str | None, image_fields: Sequence[str]
    ) -> None:
        """Warn (with the count) about a field few records have; fail when no record has it.

        Raises:
            DataError: a ``data.text_columns`` field or the ``data.image_column`` (or the release's own
                image field) that no record has.
        """
        if self.records == 0:
            return
        absent = [c for c in text_columns if self.text.get(c, 0) == 0]
        if absent:
            raise DataError(
                f"{self.path}: data.text_columns field(s) {absent} are in none of its {self.records} records "
                "(nor their aliases): fix the names or drop them from data.text_columns"
            )
        for col in text_columns:
            n = self.text[col]
            if n < FIELD_WARN_SHARE * self.records:
                log.warning(
                    "%s: data.text_columns field %r is in only %d of %d records (%.1f%%)",
                    self.path, col, n, self.records, 100 * n / self.records,
                )  # fmt: skip
        if image_column is None:
            return
        names = " or ".join(repr(f) for f in dict.fromkeys([image_column, *image_fields]))
        if self.image == 0:
            raise DataError(
                f"{self.path}: data.image_column {names} is in none of its {self.records} records: fix the name, "
                "or set data.image_column: null when the items have no images"
            )
        if self.image < FIELD_WARN_SHARE * self.records:
            log.warning(
                "%s: data.image_column %s is in only %d of %d records (%.1f%%)",
                self.path, names, self.image, self.records, 100 * self.image / self.records,
            )  # fmt: skip


def _has_text(record: Mapping[str, Any], column: str) -> bool:
    """True when ``record`` has a non-empty ``column`` (or one of its :data:`TEXT_ALIASES`)."""
    for key in (column, *TEXT_ALIASES.get(column, ())):
        value = record.get(key)
        if value is not None and value != "" and value != []:
            return True
    return False


def _progress(it: Iterator[Any], path: Path) -> Iterator[Any]:
    return progress_bar(
        it, desc=f"parse {path.name}", unit=" lines", unit_scale=True, mininterval=2.0, disable=None
    )


# --------------------------------------------------------------------------------------------- text
@functools.lru_cache(maxsize=1 << 16)  # brands and category names repeat across many items
def normalise_text(value: str) -> str:
    """Unescape HTML entities (``&amp;`` -> ``&``) and collapse whitespace."""
    if "&" in value:
        value = html.unescape(value)
    return " ".join(value.split())


def text_parts(value: Any) -> list[str]:
    """The text pieces of a metadata value: strings as is, lists (of lists) flattened, dicts as ``k: v``."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list | tuple):
        out: list[str] = []
        for v in value:
            out.extend(text_parts(v))
        return out
    if isinstance(value, dict):
        return [f"{k}: {' '.join(text_parts(v))}" for k, v in value.items() if text_parts(v)]
    return []


def assemble_text(record: Mapping[str, Any], columns: Sequence[str]) -> str:
    """Join the text of ``columns`` of a record with `` | ``.

    Values are flattened (categories as a list of lists), HTML-unescaped and whitespace-normalised; empty
    and repeated pieces are dropped (so ``[["Beauty", "Makeup"], ["Beauty"]]`` gives ``Beauty | Makeup``).
    A column absent from the record falls back to its :data:`TEXT_ALIASES`.
    """
    parts: list[str] = []
    for col in columns:
        value = record.get(col)
        if value is None:
            for alias in TEXT_ALIASES.get(col, ()):
                value = record.get(alias)
                if value is not None:
                    break
        for piece in (value,) if isinstance(value, str) else text_parts(value):
            clean = normalise_text(piece)
            if clean and clean not in parts:  # a handful of parts: a list beats a set here
                parts.append(clean)
    return PART_SEPARATOR.join(parts)


def image_reference(value: Any) -> str | None:
    """An image URL/path from a metadata value: a string, the first of a list (2018), or the first
    ``large``/``hi_res``/``thumb`` entry of a list of dicts (2023). None when there is none."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, list | tuple):
        for v in value:
            ref = image_reference(v)
            if ref:
                return ref
        return None
    if isinstance(value, dict):
        for key in ("large", "hi_res", "thumb"):
            ref = image_reference(value.get(key))
            if ref:
                return ref
    return None


# --------------------------------------------------------------------------------------------- reviews
def _interactions(users: list[str], items: list[str], ts: list[int], lines: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": ts, "line": lines}, schema=INTERACTION_SCHEMA
    )


def _has_gaps(df: pl.DataFrame, id_cols: Sequence[str], other: Sequence[str]) -> bool:
    """True when a required field is null, or an id is empty (the per-line parser must then report it)."""
    checks = [pl.col(c).is_null().any() for c in [*id_cols, *other]]
    checks += [(pl.col(c).str.len_bytes() == 0).any() for c in id_cols]
    return bool(df.select(pl.any_horizontal(checks)).item())


def _as_id(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj:
        raise ValueError(f"missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    value = str(value)
    if not value:
        raise ValueError(f"field '{key}' is empty")
    return value


def _as_int(obj: Mapping[str, Any], key: str) -> int:
    if key not in obj:
        raise ValueError(f"missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{key}' must be an integer, got {value!r}")
    return _in_int64(value, key)


def _in_int64(value: int, key: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"field '{key}' is out of range: {value} does not fit a 64-bit timestamp")
    return value


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

    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lines: list[int] = []
    for number, raw in _progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError(f"not a JSON object ({type(obj).__name__})")
            u, i, t = _as_id(obj, user_key), _as_id(obj, item_key), _as_int(obj, time_key)
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
    return _interactions(users, items, times, lines), report


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

    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    lines: list[int] = []
    for number, raw in _progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            row = next(csv.reader([raw.decode("utf-8")]))
            if len(row) != 4:
                raise ValueError(f"expected 4 fields (user,item,rating,timestamp), got {len(row)}")
            u, i, rating, t = (x.strip() for x in row)
            if not u or not i:
                raise ValueError("empty user or item id")
            float(rating)
            times.append(_in_int64(int(t), "timestamp"))
        except ValueError as err:
            report.bad(number, str(err))
            continue
        users.append(u)
        items.append(i)
        lines.append(number)
    return _interactions(users, items, times, lines), report


# --------------------------------------------------------------------------------------------- metadata
def parse_metadata_line(text: str, python_literal: bool) -> Any:
    """Parse one metadata line: strict JSON, or (2014) a Python literal via :func:`ast.literal_eval`.

    A Python-literal line without double quotes or backslashes has only single-quoted strings that contain
    no quote and no escape, so swapping the quotes gives equivalent JSON: a fast exact path for most lines.
    """
    if python_literal:
        if '"' not in text and "\\" not in text:
            try:
                return json.loads(text.replace("'", '"'))
            except (ValueError, RecursionError):
                pass
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise ValueError(f"neither JSON nor a Python literal ({type(err).__name__}: {err})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def read_metadata(
    path: Path,
    item_key: str,
    text_columns: Sequence[str],
    image_columns: Sequence[str],
    python_literal: bool,
    counts: FieldCounts | None = None,
) -> tuple[pl.DataFrame, FileReport, int]:
    """Read an Amazon metadata file into (item_id, text, image) rows.

    Args:
        path: ``meta_<Category>.json(l)(.gz)``.
        item_key: the id field (``asin`` / ``parent_asin``).
        text_columns: fields joined into the text (see :func:`assemble_text`).
        image_columns: fields tried in order for the image reference (empty: no images).
        python_literal: the 2014 format (one Python dict literal per line).
        counts: filled with how many records carry each text/image field (see :meth:`FieldCounts.check`).

    Returns:
        The item frame (first record of a repeated id kept), the file report, and the number of
        repeated ids dropped.
    """
    report = FileReport(path)
    ids: list[str] = []
    texts: list[str] = []
    images: list[str | None] = []
    seen: set[str] = set()
    duplicates = 0
    for number, raw in _progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            obj = parse_metadata_line(raw.decode("utf-8"), python_literal)
            if not isinstance(obj, dict):
                raise ValueError(f"not a record ({type(obj).__name__})")
            item = _as_id(obj, item_key)
            if item in seen:
                duplicates += 1
                continue
            image = None
            for col in image_columns:
                image = image_reference(obj.get(col))
                if image:
                    break
            text = assemble_text(obj, text_columns)
        except ValueError as err:
            report.bad(number, str(err))
            continue
        except RecursionError:  # a record nested deeper than the text helpers can walk
            report.bad(number, "nested too deeply to parse")
            continue
        seen.add(item)
        if counts is not None:
            for col in text_columns:
                counts.text[col] = counts.text.get(col, 0) + _has_text(obj, col)
            counts.image += image is not None
        ids.append(item)
        texts.append(text)
        images.append(image)
    frame = pl.DataFrame({"item_id": ids, "text": texts, "image": images}, schema=ITEM_SCHEMA)
    if counts is not None:
        counts.records = len(ids)
    return frame, report, duplicates


# --------------------------------------------------------------------------------------------- sequences
def read_sequences_file(path: Path) -> tuple[pl.DataFrame, FileReport]:
    """Read ``user item1 item2 ...`` lines (time order within and across lines = file order).

    ``ts`` and ``line`` are both the event's position in the file. Ids must be canonical non-negative
    integers (``5``; not ``5.0``, ``05``, ``+5`` or a word): a line with another token, or a user with no
    items, is malformed (skipped, counted, and named with its line number).
    """
    report = FileReport(path)
    users: list[str] = []
    items: list[str] = []
    for number, raw in _progress(iter_lines(path), path):
        if not raw.strip():
            continue
        report.records += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report.bad(number, f"not UTF-8 ({err})")
            continue
        tokens = text.split()
        if len(tokens) < 2:
            report.bad(number, "a user id with no items")
            continue
        bad = None  # one regex per line; token by token only to name the bad one
        if not _CANONICAL_LINE.fullmatch(text):
            bad = next((t for t in tokens if not CANONICAL_INT.fullmatch(t)), None)
        if bad is not None:
            report.bad(
                number,
                f"{bad[:40]!r} is not an integer id (ids are written like 5: no sign, decimals or leading zeros)",
            )
            continue
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
    order = list(range(len(users)))
    return _interactions(users, items, order, order), report


def _separator(path: Path) -> str:
    return "," if path.suffix.lower() == ".csv" else "\t"


def read_item_table(
    path: Path,
    id_column: str,
    text_columns: Sequence[str],
    image_column: str | None,
    counts: FieldCounts | None = None,
) -> tuple[pl.DataFrame, int]:
    """Read the item table of the ``sequences`` source (TSV, or CSV by extension) into (item_id, text, image).

    ``image_column`` is ignored when the table has no such column. Returns the frame and the number of
    repeated ids dropped (first row kept). ``counts`` (optional) is filled with how many rows have a
    non-empty value in each text column and in the image column.
    """
    if not path.exists():
        raise DataError(f"{path}: item table not found (data.items_file)")
    sep = _separator(path)
    try:
        df = pl.read_csv(path, separator=sep, infer_schema=False, quote_char='"' if sep == "," else None)
    except (pl.exceptions.PolarsError, ValueError) as err:
        raise DataError(
            f"{path}: cannot be read as a {'CSV' if sep == ',' else 'TSV'} table ({err})"
        ) from None
    missing = [c for c in [id_column, *text_columns] if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: column(s) {missing} not found (data.item_id_column / data.text_columns); "
            f"the table has: {df.columns}"
        )
    has_image = image_column is not None and image_column in df.columns
    if image_column is not None and not has_image:
        log.info("%s: no column %r: items have no image", path, image_column)
    n_before = df.height
    df = df.filter(pl.col(id_column).is_not_null() & (pl.col(id_column).str.strip_chars() != ""))
    df = df.with_columns(pl.col(id_column).str.strip_chars()).unique(
        id_column, keep="first", maintain_order=True
    )
    duplicates = n_before - df.height
    columns = {c: df.get_column(c).fill_null("").to_list() for c in text_columns}
    texts = [
        assemble_text(dict(zip(text_columns, row, strict=True)), text_columns)
        for row in zip(*columns.values(), strict=True)
    ]
    images = df.get_column(image_column).to_list() if has_image else [None] * df.height
    if counts is not None:
        counts.records = df.height
        for c in text_columns:
            counts.text[c] = sum(1 for v in columns[c] if v.strip())
        counts.image = sum(1 for v in images if v is not None and v.strip())
    frame = pl.DataFrame(
        {"item_id": df.get_column(id_column), "text": texts, "image": [image_reference(v) for v in images]},
        schema=ITEM_SCHEMA,
    )
    return frame, duplicates
