"""Per-item vector files: ``data/embeddings/<m>.parquet`` (the teacher's vectors) and
``data/supervision/teacher_<m>.parquet`` (the reduced ones) share one format, written and read here.

Columns ``item`` int32 1..N in order, ``vector`` fixed_size_list<float32>[d], ``missing`` bool (the item had
no usable input); the writer's metadata (model, dim, missing_policy, ...) is returned with the vectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts.items import read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemVectors:
    """One vector per item: row i belongs to item i + 1."""

    vectors: np.ndarray  # (N, d) float32
    missing: np.ndarray  # (N,) bool
    metadata: dict[str, Any]  # the file's key-value metadata, JSON-decoded

    @property
    def excluded(self) -> np.ndarray:
        """(N,) bool: the items distillation skips (the missing ones, when the policy was ``exclude``)."""
        if self.metadata.get("missing_policy") == "exclude":
            return self.missing
        return np.zeros(len(self.missing), dtype=bool)


def write_item_vectors(
    path: Path, vectors: np.ndarray, missing: np.ndarray, metadata: dict[str, Any]
) -> None:
    """Write (N, d) ``vectors`` for items 1..N with their ``missing`` flags, atomically and deterministically."""
    import pyarrow as pa

    from pipeline.io import write_parquet

    n = len(vectors)
    columns = {
        "item": pa.array(np.arange(1, n + 1, dtype=np.int32), type=pa.int32()),
        "vector": np.asarray(vectors, dtype=np.float32),  # -> fixed_size_list<float32>[d]
        "missing": pa.array(np.asarray(missing, dtype=bool), type=pa.bool_()),
    }
    write_parquet(path, columns, metadata=metadata)


def read_item_vectors(path: Path) -> ItemVectors:
    """Read and check a vector file.

    A file without ``missing`` (written by hand) counts every item as present, with a warning.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, a missing column, ``item`` not 1..N in order, ``vector`` not a fixed-size
            list, or a NaN/infinite vector (each message names the file).
    """
    import pyarrow as pa

    from pipeline.errors import DataError
    from pipeline.io import parquet_metadata, parquet_schema, read_vector_column

    path = Path(path)
    try:
        schema = parquet_schema(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    has_missing = "missing" in schema.names
    table = read_table(path, ("item", "vector"), ("item", "missing") if has_missing else ("item",))
    vtype = schema.field("vector").type  # present: read_table checked it
    if not pa.types.is_fixed_size_list(vtype) or not (
        pa.types.is_floating(vtype.value_type) or pa.types.is_integer(vtype.value_type)
    ):
        raise DataError(f"{path}: column 'vector' must be fixed_size_list<float32>, got {vtype}")
    try:  # decoded straight into the array, never as a whole Arrow column beside it
        vectors = read_vector_column(path, "vector", table.num_rows, vtype.list_size)
    except ValueError as err:
        raise DataError(str(err)) from None
    finite = np.isfinite(vectors).all(1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0]) + 1
        raise DataError(f"{path}: item {bad} has a NaN or infinite vector")
    if has_missing:
        missing = table.column("missing").to_numpy(zero_copy_only=False).astype(bool)
    else:
        log.warning("%s: no 'missing' column: treating every item as present", path)
        missing = np.zeros(len(vectors), dtype=bool)
    return ItemVectors(vectors, missing, parquet_metadata(path))
