"""What every raw-data parser returns and reports: the frame schemas, per-file record counts, field checks.

Every reader returns interactions as a frame with columns ``user_id`` (str), ``item_id`` (str), ``ts``
(int64, the source's time unit; for ``sequences`` the event's position in the file) and ``line`` (int64,
position in the file: the deterministic tie-break for equal timestamps), and item metadata as a frame with
``item_id`` (str), ``text`` (str, "" when empty) and ``image`` (str or null). A reader skips and counts a
malformed record (:class:`FileReport`, which reports the first few with their line numbers); a file with
too many fails the stage. Item frames also have ``attributes`` (a list of ``"<field>=<value>"`` strings, empty
when ``data.attribute_columns`` names none). The readers themselves are in :mod:`pipeline.data.sources`.
"""

from __future__ import annotations

import gzip
import logging
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
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # timestamps must fit the int64 ``ts`` column
# a configured text/image field that fewer than this share of records has is reported as a warning
FIELD_WARN_SHARE = 0.1

INTERACTION_SCHEMA = {"user_id": pl.String, "item_id": pl.String, "ts": pl.Int64, "line": pl.Int64}
ITEM_SCHEMA = {"item_id": pl.String, "text": pl.String, "image": pl.String, "attributes": pl.List(pl.String)}


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
    """How many records of a metadata file carry each configured text/attribute/image field (aliases
    included)."""

    path: Path
    records: int = 0
    text: dict[str, int] = field(default_factory=dict)
    image: int = 0
    attributes: dict[str, int] = field(default_factory=dict)

    def check(
        self,
        text_columns: Sequence[str],
        image_column: str | None,
        image_fields: Sequence[str],
        attribute_columns: Sequence[str] = (),
    ) -> None:
        """Warn (with the count) about a field few records have; fail when no record has it.

        Raises:
            DataError: a ``data.text_columns`` or ``data.attribute_columns`` field, or the
                ``data.image_column`` (or the release's own image field), that no record has.
        """
        if self.records == 0:
            return
        self._check_fields("data.text_columns", text_columns, self.text)
        self._check_fields("data.attribute_columns", attribute_columns, self.attributes)
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

    def _check_fields(self, key: str, columns: Sequence[str], counts: dict[str, int]) -> None:
        absent = [c for c in columns if counts.get(c, 0) == 0]
        if absent:
            raise DataError(
                f"{self.path}: {key} field(s) {absent} are in none of its {self.records} records "
                f"(nor their aliases): fix the names or drop them from {key}"
            )
        for col in columns:
            n = counts[col]
            if n < FIELD_WARN_SHARE * self.records:
                log.warning(
                    "%s: %s field %r is in only %d of %d records (%.1f%%)",
                    self.path, key, col, n, self.records, 100 * n / self.records,
                )  # fmt: skip


@dataclass
class RawData:
    """Parsed input before filtering.

    Attributes:
        interactions: user_id, item_id, ts, line (:data:`INTERACTION_SCHEMA`).
        items: item_id, text, image, attributes (one row per id, :data:`ITEM_SCHEMA`).
        numeric_ids: number users/items in numeric rather than lexicographic id order.
        reports: one per parsed file.
        category: recorded in the outputs' metadata.
        metadata_duplicates: repeated metadata ids dropped.
        official_split: the name of the official split the source carries (``amazon2023_csv``); the
            interactions then have a ``part`` column (0 train, 1 validation, 2 test) and are neither
            k-core filtered nor split by ``data.split``.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    numeric_ids: bool
    reports: list[FileReport] = field(default_factory=list)
    category: str = ""
    metadata_duplicates: int = 0
    official_split: str | None = None


# --------------------------------------------------------------------------------------------- fields
def parse_progress(it: Iterator[Any], path: Path) -> Iterator[Any]:
    """A progress bar over the lines of ``path`` being parsed (shown on a terminal only)."""
    return progress_bar(
        it, desc=f"parse {path.name}", unit=" lines", unit_scale=True, mininterval=2.0, disable=None
    )


def interactions_frame(users: list[str], items: list[str], ts: list[int], lines: list[int]) -> pl.DataFrame:
    """The interactions frame (:data:`INTERACTION_SCHEMA`) of parallel column lists."""
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": ts, "line": lines}, schema=INTERACTION_SCHEMA
    )


def as_id(obj: Mapping[str, Any], key: str) -> str:
    """The non-empty string (or integer) id ``obj[key]`` as a string; ValueError naming the field otherwise."""
    if key not in obj:
        raise ValueError(f"missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    value = str(value)
    if not value:
        raise ValueError(f"field '{key}' is empty")
    return value


def as_int(obj: Mapping[str, Any], key: str) -> int:
    """The integer ``obj[key]`` (not a bool) within int64; ValueError naming the field otherwise."""
    if key not in obj:
        raise ValueError(f"missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{key}' must be an integer, got {value!r}")
    return in_int64(value, key)


def in_int64(value: int, key: str) -> int:
    """``value`` when it fits the int64 ``ts`` column; ValueError naming the field otherwise."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"field '{key}' is out of range: {value} does not fit a 64-bit timestamp")
    return value
