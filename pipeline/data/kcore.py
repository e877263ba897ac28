"""Iterative k-core filtering of a user-item interaction list (numpy, O(passes x interactions))."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KCoreResult:
    """Outcome of :func:`kcore_filter`.

    Attributes:
        keep: boolean mask over the input interactions (True = survives).
        passes: filtering passes that removed something (0 when the input already is a k-core).
        users_dropped: users that had interactions before and have none after.
        items_dropped: items that had interactions before and have none after.
    """

    keep: np.ndarray
    passes: int
    users_dropped: int
    items_dropped: int

    @property
    def interactions_dropped(self) -> int:
        return int(self.keep.size - np.count_nonzero(self.keep))


def kcore_filter(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> KCoreResult:
    """Drop interactions until every remaining user has >= ``min_user`` and every item >= ``min_item``.

    Removing a sparse item can push a user below the threshold and vice versa, so passes repeat until a
    fixed point. Duplicate (user, item) pairs must be removed beforehand (each row counts once).

    Args:
        users: (M,) non-negative integer user codes.
        items: (M,) non-negative integer item codes.
        min_user: minimum interactions per user.
        min_item: minimum interactions per item.

    Returns:
        The survival mask and counts (see :class:`KCoreResult`).
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(
            f"users and items must be 1-D arrays of equal length, got {users.shape}, {items.shape}"
        )
    n = users.size
    if n == 0:
        return KCoreResult(np.zeros(0, dtype=bool), 0, 0, 0)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    users_before = np.count_nonzero(np.bincount(users, minlength=n_users))
    items_before = np.count_nonzero(np.bincount(items, minlength=n_items))

    index = np.arange(n)  # positions of the surviving rows; u, i shrink with it
    u, i = users, items
    passes = 0
    while u.size:
        ok = (np.bincount(u, minlength=n_users)[u] >= min_user) & (
            np.bincount(i, minlength=n_items)[i] >= min_item
        )
        if ok.all():
            break
        passes += 1
        index, u, i = index[ok], u[ok], i[ok]
    keep = np.zeros(n, dtype=bool)
    keep[index] = True
    users_after = np.count_nonzero(np.bincount(u, minlength=n_users)) if u.size else 0
    items_after = np.count_nonzero(np.bincount(i, minlength=n_items)) if i.size else 0
    return KCoreResult(keep, passes, int(users_before - users_after), int(items_before - items_after))
