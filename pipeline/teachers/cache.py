"""Content-hash -> vector cache that makes the embed stage incremental.

An item's key is ``sha256(fingerprint + content)``: its text or the digest of its image bytes, plus a fingerprint of the
model (weights digest) and of every preprocessing setting that changes the vector. A rerun after adding items
or changing the batch size computes only keys it has not seen. The cache stores the exact float32 vectors the
encoder returned, so a cached vector is bit-identical to the fresh one it replaces.

Layout: one folder per modality and fingerprint, holding append-only Parquet parts (``key`` 32-byte binary,
``vector`` fixed_size_list<float32>[dim], ``failure`` string or null); many small parts are compacted into one. The cache lives outside
DVC outputs (``embed.cache_dir``) and is disposable: an unreadable part is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io import json_digest, read_parquet, vector_array, vectors_from_column, write_parquet

log = logging.getLogger(__name__)


def content_key(fingerprint: str, content: bytes) -> bytes:
    """The 32-byte cache key of one item's content under one model fingerprint."""
    return hashlib.sha256(fingerprint.encode() + b"\0" + content).digest()


def fingerprint_of(spec: dict) -> str:
    """A hex digest of a JSON-able description of a model and its preprocessing (key order ignored)."""
    return json_digest(spec)


class VectorCache:
    """Exact float32 vectors (or a remembered failure) by content key, for one modality and model fingerprint.

    A failure is an input the encoder rejected (e.g. bytes that are not an image): it depends only on the
    content, so it is remembered too and a rerun does not decode it again.

    Args:
        root: Cache root for vectors (e.g. ``<embed.cache_dir>/vectors``).
        modality: ``text`` or ``image`` (names the folder).
        fingerprint: Model + preprocessing fingerprint (the folder is named by its first 16 hex digits).
        dim: Vector dimension; parts with another dimension are ignored.
        flush_every: Pending entries written as a new part once this many accumulate.
        max_parts: More parts than this are compacted into one on flush.
    """

    def __init__(
        self,
        root: Path,
        modality: str,
        fingerprint: str,
        dim: int,
        flush_every: int = 8192,
        max_parts: int = 16,
    ) -> None:
        self.dir = Path(root) / f"{modality}-{fingerprint[:16]}"
        self.dim = dim
        self.flush_every = flush_every
        self.max_parts = max_parts
        self._store: dict[bytes, np.ndarray | str] = {}
        self._pending: dict[bytes, np.ndarray | str] = {}
        self._load()

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []

    def _load(self) -> None:
        for part in self._parts():
            try:
                table = read_parquet(part)
                keys = table.column("key").to_pylist()
                vectors = vectors_from_column(table.column("vector"))
                failures = table.column("failure").to_pylist()
            except (ValueError, KeyError, AttributeError, pa.ArrowException) as err:
                log.warning("embed cache: skipping unreadable part %s (%s)", part, err)
                continue
            if vectors.shape[1] != self.dim or not len(keys) == len(vectors) == len(failures):
                log.warning(
                    "embed cache: skipping %s (dim %d, expected %d)", part, vectors.shape[1], self.dim
                )
                continue
            for k, v, f in zip(keys, vectors, failures, strict=True):
                self._store[k] = v if f is None else f
        if self._store:
            log.info("embed cache: %d entries in %s", len(self._store), self.dir)

    def __len__(self) -> int:
        return len(self._store) + len(self._pending)

    def __contains__(self, key: bytes) -> bool:
        return key in self._store or key in self._pending

    def get(self, key: bytes) -> np.ndarray | str | None:
        """The stored vector for ``key`` (read-only), the failure reason remembered for it, or None."""
        v = self._store.get(key)
        return v if v is not None else self._pending.get(key)

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Add vectors (float32, stored exactly); writes a part when enough are pending."""
        vectors = np.asarray(vectors)
        if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
            raise ValueError(
                f"expected float32 vectors of shape ({len(keys)}, {self.dim}), got {vectors.dtype} {vectors.shape}"
            )
        for k, v in zip(keys, vectors, strict=True):
            self._pending[k] = v.copy()
        if len(self._pending) >= self.flush_every:
            self.flush()

    def put_failure(self, key: bytes, reason: str) -> None:
        """Remember that the encoder rejected this content (e.g. not an image)."""
        self._pending[key] = reason

    def flush(self) -> None:
        """Write pending entries as one new part (atomically); compact when there are too many parts."""
        if not self._pending:
            return
        self._write_part(self._pending)
        self._store.update(self._pending)
        self._pending = {}
        parts = self._parts()
        if len(parts) > self.max_parts:
            keep = self._write_part(self._store)
            for part in parts:
                if part != keep:
                    part.unlink(missing_ok=True)
            log.info("embed cache: compacted %d parts into %s", len(parts), keep.name)

    def _write_part(self, entries: Mapping[bytes, np.ndarray | str]) -> Path:
        keys = sorted(entries)
        zero = np.zeros(self.dim, dtype=np.float32)
        vectors = np.stack([zero if isinstance(entries[k], str) else entries[k] for k in keys])
        failures = [entries[k] if isinstance(entries[k], str) else None for k in keys]
        table = pa.table(
            {
                "key": pa.array(keys, type=pa.binary(32)),
                "vector": vector_array(vectors),
                "failure": pa.array(failures, type=pa.string()),
            }
        )
        path = self.dir / f"part-{hashlib.sha256(b''.join(keys)).hexdigest()[:20]}.parquet"
        write_parquet(path, table, metadata={"dim": self.dim})
        return path
