"""``data/processed/sequences.parquet`` as a CSR record: the one reader of the sequences artefact.

Only numpy is imported at module level (pyarrow on reading), so it loads where polars and mlflow are absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED = ("user", "items", "train_end", "valid_end")


@dataclass(frozen=True)
class Sequences:
    """Per-user chronological item sequences in CSR form, with their split boundaries.

    ``flat[offsets[u]:offsets[u + 1]]`` are the items of the u-th user (row order, held-out items included);
    ``[:train_end[u]]`` of them are training items, ``[train_end[u]:valid_end[u]]`` validation targets and
    ``[valid_end[u]:]`` test targets.
    """

    users: np.ndarray  # (U,) int64 user ids
    flat: np.ndarray  # (total,) int64 item ids
    offsets: np.ndarray  # (U+1,) int64, from 0
    train_end: np.ndarray  # (U,) int64
    valid_end: np.ndarray  # (U,) int64

    @classmethod
    def from_lists(
        cls,
        items: Sequence[np.ndarray] | Sequence[Sequence[int]],
        train_end: Sequence[int] | np.ndarray,
        valid_end: Sequence[int] | np.ndarray,
        users: Sequence[int] | np.ndarray | None = None,
    ) -> Sequences:
        """From per-user item arrays (users default to the row position 0..U-1); nothing is validated."""
        lengths = np.fromiter((len(s) for s in items), dtype=np.int64, count=len(items))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] == 0:
            flat = np.zeros(0, dtype=np.int64)
        else:
            flat = np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in items])
        if users is None:
            users = np.arange(len(items), dtype=np.int64)
        return cls(
            users=np.asarray(users, dtype=np.int64).reshape(-1),
            flat=flat,
            offsets=offsets,
            train_end=np.asarray(train_end, dtype=np.int64).reshape(-1),
            valid_end=np.asarray(valid_end, dtype=np.int64).reshape(-1),
        )

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(U,) int64 items per user."""
        return np.diff(self.offsets)

    @property
    def num_items(self) -> int:
        """The largest item id (ids are 1..N), 0 when there are no items."""
        return int(self.flat.max()) if len(self.flat) else 0

    @property
    def rows(self) -> np.ndarray:
        """(total,) int64: the row (user position) of each entry of ``flat``."""
        return np.repeat(np.arange(self.num_users, dtype=np.int64), self.lengths)

    @property
    def in_training(self) -> np.ndarray:
        """(total,) bool: the entries of ``flat`` in their user's training prefix (``[:train_end]``)."""
        rows = self.rows
        position = np.arange(len(self.flat), dtype=np.int64) - self.offsets[:-1][rows]
        return position < self.train_end[rows]

    def items_of(self, u: int) -> np.ndarray:
        """The items of the u-th user (row position), a view."""
        return self.flat[self.offsets[u] : self.offsets[u + 1]]


def check_sequences(
    flat: np.ndarray, offsets: np.ndarray, train_end: np.ndarray, valid_end: np.ndarray
) -> None:
    """Raise ValueError unless 0 <= train_end <= valid_end <= len(items) and every item id is >= 1."""
    lengths = np.diff(offsets)
    bad = np.flatnonzero((train_end < 0) | (train_end > valid_end) | (valid_end > lengths))
    if len(bad):
        r = int(bad[0])
        raise ValueError(
            f"sequence at row {r}: need 0 <= train_end <= valid_end <= len(items), got train_end="
            f"{train_end[r]}, valid_end={valid_end[r]}, len={lengths[r]} ({len(bad)} bad row(s))"
        )
    if len(flat) and flat.min() < 1:
        r = int(np.searchsorted(offsets, int(np.argmax(flat < 1)), side="right") - 1)
        raise ValueError(f"sequence at row {r}: item ids must be >= 1 (0 is padding)")


def check_sequences_schema(path: Path, schema: Any, required: Sequence[str] = REQUIRED) -> None:
    """Raise DataError naming ``path`` unless its Arrow ``schema`` has the ``required`` columns, ``items`` a
    list of integers and the others integers (what :func:`read_sequences` and the streaming readers share)."""
    import pyarrow as pa

    from pipeline.errors import DataError

    missing = [c for c in required if c not in schema.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (has {schema.names})")
    for name in required:
        typ = schema.field(name).type
        if name == "items":
            ok = (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_integer(
                typ.value_type
            )
            if not ok:
                raise DataError(f"{path}: column 'items' must be a list of ints, got {typ}")
        elif not pa.types.is_integer(typ):
            raise DataError(f"{path}: column {name!r} must be integers, got {typ}")


def read_sequences(path: Path) -> Sequences:
    """Read and validate ``user``, ``items``, ``train_end``, ``valid_end`` of ``data/processed/sequences.parquet``.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, a required column is missing or malformed, inconsistent split boundaries, or
            an item id below 1 (each message names the file).
    """

    from pipeline.errors import DataError
    from pipeline.io import read_parquet

    path = Path(path)
    try:
        table = read_parquet(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    check_sequences_schema(path, table.schema)
    col = table.column("items").combine_chunks()
    for name in REQUIRED:
        nulls = table.column(name).null_count
        if nulls:
            raise DataError(f"{path}: column {name!r} has {nulls} null row(s)")
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    seqs = Sequences(
        users=table.column("user").to_numpy().astype(np.int64),
        flat=values[offsets[0] : offsets[-1]],
        offsets=offsets - offsets[0],
        train_end=table.column("train_end").to_numpy().astype(np.int64),
        valid_end=table.column("valid_end").to_numpy().astype(np.int64),
    )
    try:
        check_sequences(seqs.flat, seqs.offsets, seqs.train_end, seqs.valid_end)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    return seqs
