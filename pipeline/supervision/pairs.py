"""Item pairs to fit the correlation codebook on: co-occurring pairs from TRAINING sequences plus random pairs.

Only ``items[:train_end]`` of each user is read, so no validation or test interaction can shape the codebook.
Random pairs are drawn among the items that occur in some training sequence, for the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.arrays import sorted_unique
from pipeline.artifacts import Sequences, read_sequences
from pipeline.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingItemSets:
    """The set of distinct items in each user's training sequence, as a CSR layout.

    ``items[offsets[u]:offsets[u + 1]]`` are the sorted distinct training items of the u-th user (row order).
    """

    items: np.ndarray  # (total,) int64
    offsets: np.ndarray  # (users + 1,) int64

    @property
    def sizes(self) -> np.ndarray:
        """Distinct training items per user."""
        return np.diff(self.offsets)


def training_item_sets(
    sequences: list[list[int]] | Sequences,
    train_end: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    source: str = "sequences",
) -> TrainingItemSets:
    """Distinct items of ``items[:train_end]`` per user, dropping excluded items.

    Args:
        sequences: the CSR sequences (as read from sequences.parquet), or a list of per-user item lists
            together with ``train_end``.
        train_end: (U,) training prefix lengths when ``sequences`` is a list.
        excluded: optional (N + 1,) bool mask indexed by item id.
        source: the file name used in error messages.

    Returns:
        The per-user distinct training items.
    """
    if not isinstance(sequences, Sequences):
        if train_end is None:
            raise ValueError("train_end is required when sequences is a list")
        sequences = Sequences.from_lists(sequences, train_end, train_end)
    ends, values, lengths = sequences.train_end, sequences.flat, sequences.lengths
    if len(ends) != len(lengths):
        raise DataError(f"{source}: {len(ends)} train_end values for {len(lengths)} sequences")
    bad = np.flatnonzero((ends < 0) | (ends > lengths))
    if len(bad):
        u = int(bad[0])
        raise DataError(f"{source}: row {u}: train_end={int(ends[u])} outside 0..{int(lengths[u])}")
    if len(values) and values.min() < 1:
        raise DataError(f"{source}: item ids must be >= 1 (0 is padding), found {int(values.min())}")
    keep = sequences.in_training
    user, item = sequences.rows[keep], values[keep]
    if excluded is not None and len(item):
        if item.max() >= len(excluded):
            raise DataError(
                f"{source}: item id {int(item.max())} beyond the catalogue of {len(excluded) - 1}"
            )
        ok = ~excluded[item]
        user, item = user[ok], item[ok]
    stride = int(item.max()) + 1 if len(item) else 1
    key = sorted_unique(user * stride + item)  # sorted by (user, item), duplicates removed
    uniq_user, uniq_item = key // stride, key % stride
    counts = np.bincount(uniq_user, minlength=len(lengths))
    return TrainingItemSets(uniq_item, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def sample_pairs(
    sets: TrainingItemSets,
    n_pairs: int,
    random_fraction: float,
    seed: int,
) -> tuple[np.ndarray, int]:
    """Sample pairs of distinct items: co-occurring in a training sequence, plus a share of random pairs.

    Co-occurring pairs are drawn uniformly over all (user, unordered pair of distinct training items)
    occurrences, with replacement: a user is drawn with weight n_u (n_u - 1) / 2, then two distinct items of
    theirs. Random pairs are two distinct items drawn uniformly from the items of any training sequence.

    Args:
        sets: per-user distinct training items (see :func:`training_item_sets`).
        n_pairs: total pairs.
        random_fraction: share of random pairs, rounded to a count.
        seed: numpy seed; equal inputs give equal pairs.

    Returns:
        (P, 2) int64 item pairs (co-occurring ones first) and the number of co-occurring pairs.
    """
    rng = np.random.default_rng(seed)
    n_random = int(round(random_fraction * n_pairs))
    sizes = sets.sizes
    weights = sizes * (sizes - 1) // 2
    total = int(weights.sum())
    if total == 0:
        log.warning(
            "no training sequence has two distinct usable items: the codebook sample is all random pairs"
        )
        n_random = n_pairs
    n_co = n_pairs - n_random
    parts = []
    if n_co:
        cum = np.cumsum(weights)
        users = np.searchsorted(cum, rng.integers(0, total, size=n_co), side="right")
        n_u = sizes[users]
        a = (rng.random(n_co) * n_u).astype(np.int64)
        b = (rng.random(n_co) * (n_u - 1)).astype(np.int64)
        b += b >= a  # distinct positions
        base = sets.offsets[users]
        parts.append(np.stack([sets.items[base + a], sets.items[base + b]], axis=1))
    if n_random:
        pool = np.flatnonzero(np.bincount(sets.items))  # the distinct items, ascending (ids are small)
        if len(pool) < 2:
            raise DataError("fewer than two usable items occur in training sequences: cannot fit a codebook")
        a = rng.integers(0, len(pool), size=n_random)
        b = rng.integers(0, len(pool) - 1, size=n_random)
        b += b >= a
        parts.append(np.stack([pool[a], pool[b]], axis=1))
    return np.concatenate(parts).astype(np.int64), n_co


def read_training_item_sets(
    path: Path, num_items: int, excluded: np.ndarray | None = None
) -> TrainingItemSets:
    """Read sequences.parquet and return its per-user distinct training items, checking ids against N."""
    seqs = read_sequences(path)
    if seqs.num_items > num_items:
        raise DataError(
            f"{path}: item id {seqs.num_items} is beyond the {num_items} items of the embeddings "
            f"(rerun ingest and embed together)"
        )
    return training_item_sets(seqs, excluded=excluded, source=str(path))
