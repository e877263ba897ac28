"""Neighbour-of-neighbour refinement of approximate k-NN lists (the local join of NN-descent).

An inverted-file search misses a true neighbour when it lies in a cell the item does not probe. Items whose
neighbourhood is a thin patch cut into many cells (a catalogue of many small categories, docs/RESULTS.md) lose
half their true neighbours that way at nprobe 8, and doubling nprobe brings them back only slowly. But a
neighbour's own list, found from *its* probed cells, usually holds the missing ones: the neighbours of my
neighbours are likely my neighbours (Dong, Charikar and Li, "Efficient k-nearest neighbor graph construction
for generic similarity measures", WWW 2011).

One round: each item's candidates are its own k neighbours, a few reverse neighbours (items that list it,
one per rank for its first ``reverse`` ranks) and the k neighbours of each of its first ``width``
neighbours and of its reverse ones (duplicates and itself removed). The reverse neighbours reach items
that no list leads to by forward steps; without them, on many small patches the recall stalls at 0.94
instead of reaching 0.98 (docs/RESULTS.md). faiss scores the item against its
candidates and keeps the best k (``knn_inner_products_by_idx``: a gather and a dot product per candidate,
in C++ over the threads). An item's old neighbours are among its candidates, so a round never lowers any of
its k scores. The lists are updated in place, a block of rows after another, so later rows already join the
improved lists of earlier ones, as NN-descent does; the result is deterministic.

:func:`refine_to_target` runs rounds until the recall on a tuning sample (exact k-th scores known) reaches
``correlate.ann.target_recall`` or ``correlate.ann.refine_rounds`` rounds have run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from pipeline.config.inputs import AnnParams
from pipeline.ivf import best_of_candidates
from pipeline.progress import progress_bar
from pipeline.supervision.nprobe import rows_recall

log = logging.getLogger(__name__)

REFINE_BLOCK = 16_384  # rows whose candidates are built and scored together (bounds the candidate buffers)
_ABSENT = np.iinfo(np.int64).max  # sorts after every real label


def reverse_neighbours(labels: np.ndarray, ranks: int) -> torch.Tensor:
    """(n, ranks) int64: for each rank j < ``ranks``, an item that lists the row as its j-th neighbour (the
    last such item; -1 when none does). Items no one lists early are where forward joins cannot reach."""
    lab = torch.from_numpy(labels)
    n = len(lab)
    out = torch.full((n, ranks), -1, dtype=torch.int64)
    source = torch.arange(n)
    for j in range(min(ranks, lab.shape[1])):
        target = lab[:, j]
        listed = target >= 0
        out[:, j].scatter_reduce_(0, target[listed], source[listed], "amax", include_self=True)
    return out


def candidates(labels: torch.Tensor, rows: torch.Tensor, width: int, reverse: torch.Tensor) -> torch.Tensor:
    """(b, k + r + (width + r) x k) int64: each row's own neighbours, its reverse neighbours ``reverse``
    (n, r), and the lists of its first ``width`` neighbours and of its reverse ones; sorted, each label once,
    the row itself and absent labels (-1) dropped: -1 pads the end of each row."""
    own, back = labels[rows], reverse[rows]
    lenders = torch.cat([own[:, :width], back], 1)
    hops = labels[lenders.clamp(min=0)]  # (b, width + r, k); an absent lender's list is dropped
    hops = torch.where((lenders >= 0)[:, :, None], hops, -1)
    cand = torch.cat([own, back, hops.reshape(len(rows), -1)], 1).sort(dim=1).values
    drop = (cand < 0) | (cand == rows[:, None])
    drop[:, 1:] |= cand[:, 1:] == cand[:, :-1]
    cand = cand.masked_fill(drop, _ABSENT).sort(dim=1).values  # the kept labels first, in order
    return cand.masked_fill(cand == _ABSENT, -1)


def refine_round(
    x: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    width: int,
    reverse: int,
    block: int = REFINE_BLOCK,
    progress: bool = False,
) -> np.ndarray:
    """One round of refinement of every row's neighbours, in place; returns the (n,) bool complete flags.

    Args:
        x: (n, d) float32 C-contiguous search vectors (inner product = score).
        values, labels: (n, k) float32 scores and int64 labels (-1: no result) of each row's neighbours,
            ordered by score descending then label ascending; updated in place, in the same order.
        width: how many of each row's first neighbours lend it their lists.
        reverse: how many reverse neighbours (:func:`reverse_neighbours`, taken at the round's start) join
            the candidates and lend their lists.
        block: rows refined together.

    A row is complete when it has k neighbours other than itself; one with fewer candidates keeps -1
    labels (score -inf) at its end. Among candidates with equal scores at the k-th place, faiss keeps any.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)  # faiss reads the raw buffer: no copy when it already is
    n, k = labels.shape
    lab = torch.from_numpy(labels)
    back = reverse_neighbours(labels, reverse) if reverse else torch.full((n, 0), -1, dtype=torch.int64)
    complete = np.empty(n, dtype=bool)
    for lo in progress_bar(
        range(0, n, block), desc="refine", unit="block", disable=not progress, leave=False
    ):
        rows = torch.arange(lo, min(n, lo + block))
        cand = candidates(lab, rows, width, back).numpy()
        m = len(rows)
        # each row's best k among its candidates, scored against x (the scan stops at a row's first -1)
        v, lb = best_of_candidates(x[lo : lo + m], x, cand, k)
        v, lb = ordered(v, lb)
        values[lo : lo + m], labels[lo : lo + m] = v, lb
        complete[lo : lo + m] = (lb >= 0).all(1)
    return complete


def ordered(v: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows by score descending then label ascending, an absent result (label < 0) last as (-inf, -1)."""
    absent = lb < 0
    v = np.where(absent, -np.inf, v).astype(np.float32)
    idx = np.lexsort((np.where(absent, _ABSENT, lb), -v), axis=-1)
    return np.take_along_axis(v, idx, 1), np.take_along_axis(np.where(absent, -1, lb), idx, 1)


def refine_to_target(
    x: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    complete: np.ndarray,
    rows: np.ndarray,
    kth: np.ndarray,
    ann: AnnParams,
    progress: bool = False,
) -> dict[str, Any]:
    """Refinement rounds (in place) while the recall of the tuning ``rows`` (exact k-th scores ``kth``) is
    below ``ann.target_recall``, at most ``ann.refine_rounds``, each with ``ann.refine_width`` and
    ``ann.refine_reverse``; ``complete`` is updated too. Returns the rounds run, the recall before each
    round and after the last, and the seconds."""
    t0 = time.perf_counter()
    target = ann.target_recall if ann.target_recall is not None else 1.0
    recall = [round(float(rows_recall(x, labels[rows], rows, kth).mean()), 6)]
    while recall[-1] < target and len(recall) <= ann.refine_rounds:
        complete[:] = refine_round(x, values, labels, ann.refine_width, ann.refine_reverse, progress=progress)
        recall.append(round(float(rows_recall(x, labels[rows], rows, kth).mean()), 6))
    info = {"rounds": len(recall) - 1, "tuning_recall": recall, "seconds": round(time.perf_counter() - t0, 2)}
    if info["rounds"]:
        log.info(
            "refined the neighbours in %d round(s), %.1fs: recall on the tuning sample %s",
            info["rounds"],
            info["seconds"],
            " -> ".join(f"{r:.4f}" for r in recall),
        )
    return info
