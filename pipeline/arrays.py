"""Array helpers that numpy's own functions make slow at scale."""

from __future__ import annotations

import numpy as np


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` (the sorted distinct values) of a 1-D array, by one sort.

    numpy 2.4's ``np.unique`` without ``return_*`` options hashes integer arrays: on 30 M random int64 keys it
    took 79 s against 0.9 s for this (2-core AMD EPYC, beside other work), and the 10^8 (user, item) keys of
    a 10 M-item catalogue held the correlate stage for minutes with several GB more.
    """
    out = np.sort(np.asarray(values).reshape(-1))
    if len(out) < 2:
        return out
    keep = np.empty(len(out), dtype=bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]
