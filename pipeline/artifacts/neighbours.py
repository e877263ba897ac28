"""``data/supervision/topk_<m>.parquet``: each item's holistic top-k teacher neighbours, written and read here.

Columns ``item`` int32 1..N in order, ``neighbors`` list<int32> (item ids, best first) and ``scores``
list<float32>; an excluded item has empty lists. The reduced teacher vectors beside it are an
:mod:`pipeline.artifacts.vectors` file and the codebook a :mod:`pipeline.supervision.codebooks` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def write_neighbours(
    path: Path, values: np.ndarray, indices: np.ndarray, excluded: np.ndarray, metadata: dict[str, Any]
) -> None:
    """Write the (N, k) top-k ``values`` and 0-based ``indices`` of items 1..N; ``excluded`` rows get none."""
    import pyarrow as pa

    from pipeline.io import write_parquet

    n, k = values.shape
    counts = np.where(excluded, 0, k).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    keep = ~excluded
    neighbours = (indices[keep] + 1).astype(np.int32).reshape(-1)
    scores = values[keep].astype(np.float32).reshape(-1)
    table = pa.table(
        {
            "item": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "neighbors": pa.ListArray.from_arrays(offsets, pa.array(neighbours, type=pa.int32())),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores, type=pa.float32())),
        }
    )
    write_parquet(path, table, metadata=metadata)


def read_neighbours(path: Path, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbour lists as dense tensors.

    Args:
        path: the file the correlate stage wrote (or any subset of its rows, in any order).
        num_items: N; rows of items the file does not list get no neighbours.

    Returns:
        neighbours (N + 1, k) int64 (0 past an item's count) and counts (N + 1,) int64; row 0 (padding)
        and excluded items have count 0.

    Raises:
        DataError: a missing column, or an item or neighbour id outside 1..N.
    """
    import torch

    from pipeline.errors import DataError
    from pipeline.io import read_parquet

    path = Path(path)
    table = read_parquet(path)
    for col in ("item", "neighbors"):
        if col not in table.column_names:
            raise DataError(f"{path}: missing column {col!r} (found {table.column_names})")
    items = table.column("item").to_numpy().astype(np.int64)
    lists = table.column("neighbors").combine_chunks()
    flat = lists.flatten().to_numpy().astype(np.int64)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    for name, ids in (("item", items), ("neighbors", flat)):
        if ids.size and (ids.min() < 1 or ids.max() > num_items):
            raise DataError(f"{path}: {name} ids must lie in 1..{num_items}, found {ids.min()}..{ids.max()}")
    k = int(lengths.max()) if lengths.size else 0
    neighbours = np.zeros((num_items + 1, max(k, 1)), dtype=np.int64)
    counts = np.zeros(num_items + 1, dtype=np.int64)
    counts[items] = lengths
    rows = np.repeat(items, lengths)
    cols = np.arange(flat.size) - np.repeat(offsets[:-1], lengths)
    neighbours[rows, cols] = flat
    return torch.from_numpy(neighbours), torch.from_numpy(counts)
