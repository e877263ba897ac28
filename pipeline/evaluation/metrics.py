"""Full-ranking evaluation: target ranks, HR/NDCG/MRR, the popularity baseline (docs/DESIGN.md: Evaluation).

One metrics module for the trainer's validation and the evaluate stage alike. Only torch and numpy are
imported at module level, so it runs where polars and mlflow are absent (the GPU machine).

Protocol: every target is ranked against the whole catalogue (no sampled negatives). The rank of a target is
the number of items scoring strictly higher plus the number of *other* items scoring equal to it (ties count
against the target, so a constant-score model scores ~0, not 1). Column 0 (padding) is never ranked and,
with ``mask_history``, items already in the user's history before the target are removed, except the
target itself. The evaluation cases are built in :mod:`pipeline.evaluation.cases`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences
from pipeline.evaluation.cases import EvalCases

log = logging.getLogger(__name__)

__all__ = [
    "evaluate_scorer",
    "mask_scores_",
    "metrics_from_ranks",
    "popularity_scores",
    "rank_targets",
]


# --------------------------------------------------------------------------------------------- ranking
def rank_targets(
    scores: torch.Tensor,
    targets: torch.Tensor,
    hist_indptr: np.ndarray | torch.Tensor,
    hist_items: np.ndarray | torch.Tensor,
    mask_history: bool,
) -> torch.Tensor:
    """0-based rank of each target among all items (ties counted against the target).

    Args:
        scores: (B, N+1) scores over the catalogue; column 0 is padding and never ranked. Not modified.
        targets: (B,) target items in 1..N.
        hist_indptr: (B+1,) CSR pointer over ``hist_items`` for these B cases, starting at 0.
        hist_items: the items before each target; masked when ``mask_history`` (except the target).
        mask_history: remove history items from the ranking.

    Returns:
        (B,) int64 ranks on ``scores.device``: #items scoring strictly higher + #other items scoring equal;
        N for a target scoring -inf.

    Raises:
        ValueError: NaN in ``scores``, a shape mismatch, or a target outside 1..N.
    """
    if scores.ndim != 2 or targets.ndim != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores (B, N+1) and targets (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    device = scores.device
    targets = targets.to(device=device, dtype=torch.long)
    n_cols = scores.shape[1]
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) >= n_cols):
        raise ValueError(f"targets must be item ids in 1..{n_cols - 1}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: the model produced invalid outputs")

    # The scores are neither copied nor masked: the rank counts the items 1..N scoring at least the target's
    # score, less the target itself and, under masking, less the user's distinct history items that do.
    rows = torch.arange(scores.shape[0], device=device)
    target_score = scores[rows, targets]  # (B,)
    ranks = _count_at_least(scores[:, 1:], target_score) - 1
    if mask_history:
        hist_rows, cols = _history_entries(scores.shape[0], hist_indptr, hist_items, device)
        # each (case, item) once; the target stays rankable when it repeats a history item; never padding
        keep = (cols != targets[hist_rows]) & (cols > 0)
        pairs = torch.unique(hist_rows[keep] * n_cols + cols[keep])
        hist_rows, cols = pairs // n_cols, pairs % n_cols
        above = scores[hist_rows, cols] >= target_score[hist_rows]
        ranks -= torch.bincount(hist_rows[above], minlength=scores.shape[0])
    # a target at -inf (a model that excludes it) is never recommended: it ranks N, past every list
    return ranks.masked_fill_(target_score == float("-inf"), n_cols - 1)


def _count_at_least(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """(B,) int64: how many entries of each row of ``scores`` (B, M) are >= the row's ``threshold``.

    The comparisons are summed as bytes: first 64-wide lanes over blocks of at most 255 x 64 columns
    (uint8 cannot overflow there), then each block's lanes. About 5x faster on a CPU than ``.sum(1)`` of the
    boolean matrix, which widens every entry to int64 (1,024 x 12,101 scores: 25 against 132 ms on one thread
    of the development VM).
    """
    b, m = scores.shape
    lanes, block = 64, 255 * 64
    out = torch.zeros(b, dtype=torch.int64, device=scores.device)
    t = threshold[:, None]
    whole = m - m % lanes
    for start in range(0, whole, block):
        end = min(start + block, whole)
        hits = (scores[:, start:end] >= t).view(torch.uint8).view(b, -1, lanes)
        out += hits.sum(1, dtype=torch.uint8).sum(1, dtype=torch.int64)
    if whole < m:
        out += (scores[:, whole:] >= t).sum(1)
    return out


def mask_scores_(
    scores: torch.Tensor,
    hist_indptr: np.ndarray | torch.Tensor | None = None,
    hist_items: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """In place: ``-inf`` at column 0 (padding) and, when a history is given, at each row's history items.

    The one masking rule of evaluation and recommendation alike (a masked item is never ranked).

    Args:
        scores: (B, N+1) float scores, modified in place and returned.
        hist_indptr: (B+1,) CSR pointer over ``hist_items`` starting at 0, or None (padding only).
        hist_items: the items to mask, row ``b`` owning ``hist_items[hist_indptr[b]:hist_indptr[b+1]]``.

    Raises:
        ValueError: the CSR arrays do not describe B rows.
    """
    device = scores.device
    scores[:, 0] = float("-inf")
    if hist_indptr is None:
        return scores
    hist_rows, cols = _history_entries(scores.shape[0], hist_indptr, hist_items, device)
    scores.index_put_((hist_rows, cols), torch.tensor(float("-inf"), device=device, dtype=scores.dtype))
    return scores


def _history_entries(
    n_rows: int,
    hist_indptr: np.ndarray | torch.Tensor,
    hist_items: np.ndarray | torch.Tensor,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR histories of ``n_rows`` cases as (row, item) entries, both (nnz,) int64 on ``device``.

    Raises:
        ValueError: the CSR arrays do not describe ``n_rows`` rows.
    """
    indptr = torch.as_tensor(hist_indptr, dtype=torch.long, device=device)
    cols = torch.as_tensor(hist_items, dtype=torch.long, device=device)
    if indptr.numel() != n_rows + 1 or int(indptr[-1]) != cols.numel():
        raise ValueError(
            f"hist_indptr ({indptr.numel()}) / hist_items ({cols.numel()}) do not describe {n_rows} cases"
        )
    rows = torch.arange(n_rows, device=device)
    return torch.repeat_interleave(rows, torch.diff(indptr)), cols


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k (one relevant item per case) from 0-based ranks.

    HR@k = mean(rank < k); NDCG@k = mean(1/log2(rank+2) if rank < k else 0);
    MRR@k = mean(1/(rank+1) if rank < k else 0). Keys like ``ndcg_at_10``; values are float64 means.

    Raises:
        ValueError: no ranks, or a k < 1.
    """
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no ranks to compute metrics from (empty evaluation set)")
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hit = r < k
        out[f"hr_at_{k}"] = float(hit.mean())
        out[f"ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
        out[f"mrr_at_{k}"] = float(np.where(hit, 1.0 / (r + 1.0), 0.0).mean())
    return out


def evaluate_scorer(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    cases: EvalCases,
    ks: Sequence[int],
    mask_history: bool,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """Rank every case's target with ``score_fn`` and compute the metrics.

    Cases are scored and ranked ``batch_size`` at a time, so peak memory is batch_size x (N+1) floats times a
    small constant (the scores and :func:`rank_targets`' byte comparisons of one block), whatever the
    number of cases: nothing of shape (cases, N) is ever built; only the (C,) ranks are kept.

    Args:
        score_fn: maps a (B, max_len) int64 batch of inputs on ``device`` to (B, N+1) scores.
        cases: the evaluation cases.
        ks: cut-offs.
        mask_history: mask items already in the user's history.
        batch_size: cases per call of ``score_fn``.
        device: where inputs are sent and ranks are computed.
        progress: show progress (a bar on a terminal, plain log lines otherwise).

    Returns:
        (metrics, ranks) with ranks a (C,) int64 array in case order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    n = len(cases)
    ranks = np.empty(n, dtype=np.int64)
    starts = range(0, n, batch_size)
    if progress:
        from pipeline.progress import progress_bar

        starts = progress_bar(starts, desc="evaluate", unit="batch", total=(n + batch_size - 1) // batch_size)
    with torch.inference_mode():
        for s in starts:
            e = min(s + batch_size, n)
            inputs = cases.inputs[s:e].to(device, non_blocking=True)
            scores = score_fn(inputs)
            lo, hi = int(cases.hist_indptr[s]), int(cases.hist_indptr[e])
            batch_ranks = rank_targets(
                scores,
                cases.targets[s:e],
                cases.hist_indptr[s : e + 1] - lo,
                cases.hist_items[lo:hi],
                mask_history,
            )
            ranks[s:e] = batch_ranks.cpu().numpy()
    return metrics_from_ranks(ranks, ks), ranks


# --------------------------------------------------------------------------------------------- baseline
def popularity_scores(seqs: Sequences, num_items: int) -> torch.Tensor:
    """(N+1,) float32 interaction counts of each item in the training parts (column 0 stays 0).

    Used as the popularity baseline: every user gets these scores, so it is the floor a model must beat.
    """
    flat = seqs.flat[seqs.in_training]
    if flat.size and (flat.min() < 0 or flat.max() > num_items):
        raise ValueError(f"item ids must be in 1..{num_items}, found {flat.min()}..{flat.max()}")
    counts = np.bincount(flat, minlength=num_items + 1).astype(np.float32)
    counts[0] = 0.0
    return torch.from_numpy(counts)
