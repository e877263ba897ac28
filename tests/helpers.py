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


def write_items(path: Path, n_items: int) -> list[str]:
    """Write an items.parquet in the ingest contract (``item`` 1..N, ``item_id`` ``B000000001``..., ``text``)."""
    ids = [f"B{i:09d}" for i in range(1, n_items + 1)]
    write_parquet(
        path,
        pa.table(
            {
                "item": pa.array(range(1, n_items + 1), pa.int32()),
                "item_id": pa.array(ids, pa.string()),
                "text": pa.array([f"thing {i} | brand{i % 3}" for i in range(1, n_items + 1)], pa.string()),
                "image": pa.array([None] * n_items, pa.string()),
            }
        ),
    )
    return ids


def write_tiny_recommender(
    root: Path, n_items: int = 30, n_users: int = 23, max_len: int = 8
) -> list[list[int]]:
    """A project folder with ``models/`` (a seeded, untrained SASRec student: distinct scores, no ties),
    ``data/processed/items.parquet`` and ``data/processed/sequences.parquet``; returns the sequences.

    Some sequences are longer than ``max_len``, so masking must reach beyond the model's input window.
    """
    import numpy as np
    import torch

    from pipeline.models import Student, StudentConfig, save_student

    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=n_items, hidden=16, layers=1, heads=1, dropout=0.0, max_len=max_len, num_codes=0
    )
    save_student(Student(cfg).eval(), root / "models")
    write_items(root / "data" / "processed" / "items.parquet", n_items)
    rng = np.random.default_rng(0)
    seqs = [
        [int(x) for x in rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(3, 15)), replace=False)]
        for _ in range(n_users)
    ]
    write_sequences(root / "data" / "processed" / "sequences.parquet", seqs)
    return seqs
