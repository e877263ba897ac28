"""How many ivf cells each item must scan for a target recall, measured before the scan.

The recall of an ivf search at a given ``nprobe`` depends on the vectors' local geometry far more than on
their number: at the default nprobe 8, 10 M generated items whose clusters are dense 5-dimensional patches
keep recall@20 1.0, while isotropic noise (10 M) or many sparse patches (already at 1 M) fall to about 0.5
(docs/RESULTS.md). So the stage does not trust a fixed nprobe: on a seeded tuning sample it computes, for
every nprobe up to ``correlate.ann.max_nprobe`` (and nlist), exactly what the scan would find, the top-k
among the members of each sample item's probed cells, and keeps the least that reaches
``correlate.ann.target_recall`` with two standard errors to spare. The cost is an exact search for the sample (about a tenth of the
full scan's work at 1 M and 10 M items) and the sample's own cells; the full scan then runs once, at the
chosen nprobe. The recall written to stats.json is measured afterwards on another sample, so the choice does
not grade itself. With the refinement on (``correlate.ann.refine_rounds``), the ladder also stops where a
doubling closes less than a fifth of the gap (``STALL``), and the refinement takes it from there.
"""

from __future__ import annotations

import numpy as np

STALL = 0.2  # with refinement on, a doubling of nprobe must close a fifth of the recall gap to be kept
SPARE = 2.0  # the chosen nprobe's tuning recall must clear the target by this many standard errors
RECALL_TOLERANCE = 1e-5  # float32 rounding of the exact scores (the reported recall, ann.py, uses it too)


def cells_recall(
    x: np.ndarray,
    probes: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    rows: np.ndarray,
    kth: np.ndarray,
    k: int,
) -> np.ndarray:
    """Recall@k that the scan would reach for each of ``rows`` at each nprobe 1..P: (len(rows), P) float64,
    column p - 1 for the rows' first p probed cells ``probes`` (len(rows), P, nearest first). A row's
    candidates are the members of those cells, itself excluded; a candidate counts when its score reaches
    the row's exact k-th best score ``kth`` (so the found top-k hold min(k, such candidates) of them).

    ``order``/``starts``: the items grouped by cell, cell c's members ``order[starts[c]:starts[c + 1]]``.
    """
    found = np.zeros((len(rows), probes.shape[1]), dtype=np.float64)
    for i, (row, cells) in enumerate(zip(rows, probes, strict=True)):
        bar = kth[i] - RECALL_TOLERANCE * max(1.0, abs(float(kth[i])))
        for j, c in enumerate(cells):
            if c >= 0:
                members = order[starts[c] : starts[c + 1]]
                found[i, j] = int((((x[members] @ x[row]) >= bar) & (members != row)).sum())
    return np.minimum(k, found.cumsum(axis=1)) / k


def rows_recall(x: np.ndarray, labels: np.ndarray, rows: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """(len(rows),) float64: each row's recall@k of its neighbours ``labels`` (len(rows), k; -1: none), a
    neighbour counting as found when its score reaches the row's exact k-th best score ``kth`` (within
    float32 rounding, so items with equal vectors, whose exact order is arbitrary, do not lower it)."""
    kth = kth.astype(np.float64)
    found = np.einsum("rkd,rd->rk", x[labels.clip(min=0)].astype(np.float64), x[rows].astype(np.float64))
    tol = RECALL_TOLERANCE * np.maximum(1.0, np.abs(kth))
    return ((found >= (kth - tol)[:, None]) & (labels >= 0)).sum(1) / labels.shape[1]


def choose_nprobe(
    x: np.ndarray,
    quantizer: object,
    order: np.ndarray,
    starts: np.ndarray,
    rows: np.ndarray,
    kth: np.ndarray,
    k: int,
    nprobe: int,
    limit: int,
    target: float,
    stall: float | None = None,
) -> tuple[int, dict[int, float]]:
    """The least nprobe from ``nprobe`` up to ``limit`` whose mean :func:`cells_recall` on ``rows`` reaches
    ``target`` with ``SPARE`` standard errors to spare (the recall reported is measured on another sample),
    else ``limit``; and the mean recall at each one tried (the doublings nprobe, 2 x nprobe, ..., the limit,
    and the chosen one).

    ``stall``: walking the doublings, stop at the first that closes less than this share of the gap to a
    recall of 1, and keep the nprobe before it (it doubled the scan for little). The missing neighbours
    are then spread over many cells, and the refinement (:mod:`pipeline.supervision.refine`) recovers them
    for less. Where the target is reached, the chosen nprobe is the least that reaches it, which may lie
    between two doublings (the recall at every nprobe comes from one pass over the sample's cells).

    ``quantizer``: the faiss index of the cell centroids; ``order``/``starts``: the items grouped by cell, as
    in :func:`cells_recall` (the scan's own grouping, passed in rather than sorted again).
    """
    ladder = []
    p = nprobe
    while p < limit:
        ladder.append(p)
        p *= 2
    ladder.append(limit)
    probes = quantizer.search(x[rows], limit)[1]  # type: ignore[attr-defined]  # nearest cells first
    per_row = cells_recall(x, probes, order, starts, rows, kth, k)
    curve = per_row.mean(axis=0)
    spread = per_row.std(axis=0, ddof=1) / np.sqrt(len(per_row)) if len(per_row) > 1 else 0.0 * curve
    reached = curve - SPARE * spread >= target
    tried: dict[int, float] = {}
    previous = None
    for p in ladder:
        tried[p] = round(float(curve[p - 1]), 6)
        if reached[p - 1]:
            least = next(q for q in range(previous or nprobe, p + 1) if reached[q - 1])
            tried[least] = round(float(curve[least - 1]), 6)
            return least, dict(sorted(tried.items()))
        if stall is not None and previous is not None and _stalled(tried[previous], tried[p], stall):
            return previous, tried
        previous = p
    return limit, tried


def _stalled(before: float, after: float, stall: float) -> bool:
    """A doubling that closed less than ``stall`` of the gap to a recall of 1."""
    return after - before < stall * (1.0 - before)
