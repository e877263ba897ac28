"""Per-user chronological split boundaries (``train_end``, ``valid_end``) of the data contract.

For a sequence of length n: training part = items[:train_end], validation targets =
items[train_end:valid_end], test targets = items[valid_end:]; every target is predicted from all items
before it.
"""

from __future__ import annotations

import numpy as np

# Shortest sequence that can be split: one training item, one validation target, one test target.
MIN_SEQUENCE_LENGTH = 3


def _lengths(lengths: np.ndarray) -> np.ndarray:
    n = np.asarray(lengths, dtype=np.int64)
    if n.size and n.min() < MIN_SEQUENCE_LENGTH:
        raise ValueError(
            f"every sequence needs at least {MIN_SEQUENCE_LENGTH} items to be split, got {n.min()}"
        )
    return n


def leave_one_out_split(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last item is the test target, the one before it the validation target.

    Returns:
        (train_end, valid_end) as int32 arrays: n - 2 and n - 1.
    """
    n = _lengths(lengths)
    return (n - 2).astype(np.int32), (n - 1).astype(np.int32)


def ratio_split(lengths: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last round(test_fraction * n) items are test targets (at least 1, rounding halves up), the single
    item before them the validation target; at least one item is always left for training.

    Returns:
        (train_end, valid_end) as int32 arrays.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = _lengths(lengths)
    n_test = np.floor(test_fraction * n + 0.5).astype(np.int64)
    n_test = np.clip(n_test, 1, n - 2)
    valid_end = n - n_test
    return (valid_end - 1).astype(np.int32), valid_end.astype(np.int32)


def split_boundaries(
    lengths: np.ndarray, split: str, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on ``data.split``: ``loo`` or ``ratio``."""
    if split == "loo":
        return leave_one_out_split(lengths)
    if split == "ratio":
        return ratio_split(lengths, test_fraction)
    raise ValueError(f"unknown split {split!r} (expected 'loo' or 'ratio')")
