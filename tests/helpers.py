"""Small builders shared by several test files (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from pipeline.io import write_parquet


def write_sequences(
    path: Path,
    items: Sequence[Sequence[int]],
    train_end: Sequence[int] | None = None,
    valid_end: Sequence[int] | None = None,
) -> None:
    """Write a sequences.parquet in the ingest contract; boundaries default to leave-one-out."""
    n = [len(s) for s in items]
    write_parquet(
        path,
        pa.table(
            {
                "user": pa.array(range(1, len(items) + 1), pa.int32()),
                "user_id": pa.array([f"u{i}" for i in range(len(items))], pa.string()),
                "items": pa.array([list(s) for s in items], pa.list_(pa.int32())),
                "train_end": pa.array(train_end if train_end is not None else [k - 2 for k in n], pa.int32()),
                "valid_end": pa.array(valid_end if valid_end is not None else [k - 1 for k in n], pa.int32()),
            }
        ),
    )
