"""Per-item vector files: ``data/embeddings/<m>.parquet`` (the teacher's vectors) and
``data/supervision/teacher_<m>.parquet`` (the reduced ones) share one format, written and read here.

Columns ``item`` int32 1..N in order, ``vector`` fixed_size_list<float32>[d], ``missing`` bool (the item had
no usable input); the writer's metadata (model, dim, missing_policy, ...) is returned with the vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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
        return excluded_items(self.missing, self.metadata)


def excluded_items(missing: np.ndarray, metadata: dict[str, Any]) -> np.ndarray:
    """(N,) bool: the missing items when the file's ``missing_policy`` was ``exclude``, else none."""
    if metadata.get("missing_policy") == "exclude":
        return missing
    return np.zeros(len(missing), dtype=bool)


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


@dataclass(frozen=True)
class VectorFile:
    """A checked vector file whose vectors are not read yet: its size, flags and metadata, and the vectors
    block by block (:meth:`blocks`), so a pass over a large file holds one block, not the (N, d) array."""

    path: Path
    rows: int
    dim: int
    missing: np.ndarray  # (N,) bool
    metadata: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    @property
    def excluded(self) -> np.ndarray:
        """(N,) bool: as :attr:`ItemVectors.excluded`."""
        return excluded_items(self.missing, self.metadata)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, (n, d) float32 block)`` in row order, at most 65,536 rows each.

        Raises:
            DataError: the file cannot be decoded, or a vector is NaN or infinite (naming the file and item).
        """
        from pipeline.errors import DataError
        from pipeline.io import iter_vector_column

        try:
            for start, block in iter_vector_column(self.path, "vector", self.rows, self.dim):
                finite = np.isfinite(block).all(1)
                if not finite.all():
                    bad = start + int(np.flatnonzero(~finite)[0]) + 1
                    raise DataError(f"{self.path}: item {bad} has a NaN or infinite vector")
                yield start, block
        except ValueError as err:
            raise DataError(str(err)) from None

    def read(self) -> ItemVectors:
        """All the vectors as one (N, d) float32 array, filled block by block."""
        vectors = np.empty((self.rows, self.dim), dtype=np.float32)
        for start, block in self.blocks():
            vectors[start : start + len(block)] = block
        return ItemVectors(vectors, self.missing, self.metadata)


def open_item_vectors(path: Path) -> VectorFile:
    """Check a vector file and read all but its vectors (:class:`VectorFile`; ``read()`` reads them).

    A file without ``missing`` (written by hand) counts every item as present, with a warning.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, a missing column, ``item`` not 1..N in order, or ``vector`` not a fixed-size
            list (each message names the file); a NaN/infinite vector is reported when the blocks are read.
    """
    import pyarrow as pa

    from pipeline.errors import DataError
    from pipeline.io import parquet_metadata, parquet_schema

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
    if has_missing:
        missing = table.column("missing").to_numpy(zero_copy_only=False).astype(bool)
    else:
        log.warning("%s: no 'missing' column: treating every item as present", path)
        missing = np.zeros(table.num_rows, dtype=bool)
    return VectorFile(path, table.num_rows, vtype.list_size, missing, parquet_metadata(path))


def read_item_vectors(path: Path) -> ItemVectors:
    """Read and check a vector file (:func:`open_item_vectors`, then all its vectors).

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, a missing column, ``item`` not 1..N in order, ``vector`` not a fixed-size
            list, or a NaN/infinite vector (each message names the file).
    """
    return open_item_vectors(path).read()
