"""Full-ranking evaluation: evaluation cases, target ranks, HR/NDCG/MRR (DESIGN §5).

One metrics module for the trainer's validation and the evaluate stage alike. Only torch and numpy are
imported at module level, so it runs where polars and mlflow are absent (the GPU machine).

Protocol: every target is ranked against the whole catalogue (no sampled negatives). The rank of a target is
the number of items scoring strictly higher plus the number of *other* items scoring equal to it (ties count
against the target, so a constant-score model scores ~0, not 1). Column 0 (padding) is never ranked and,
with ``mask_history``, items already in the user's history before the target are removed, except the
target itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

log = logging.getLogger(__name__)

Part = Literal["valid", "test"]


@dataclass(frozen=True)
class EvalCases:
    """One case per held-out target: the user, the model input, the target and the full history.

    Attributes:
        users: (C,) int64 user of each case (the ``user`` column when read from sequences.parquet,
            otherwise the row position of the user's sequence).
        inputs: (C, max_len) int64, the last ``max_len`` items before the target, left-padded with 0, so
            ``inputs[:, -1]`` is the most recent item.
        targets: (C,) int64 target item of each case.
        hist_indptr: (C+1,) int64 CSR row pointer over ``hist_items``.
        hist_items: (nnz,) int64, ALL items before each target (not truncated to max_len), for masking.
    """

    users: np.ndarray
    inputs: torch.Tensor
    targets: torch.Tensor
    hist_indptr: np.ndarray
    hist_items: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


# --------------------------------------------------------------------------------------------- cases
def _flatten_sequences(items: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user item arrays -> (flat values int64, offsets (U+1,) int64)."""
    lengths = np.fromiter((len(s) for s in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] == 0:
        return np.zeros(0, dtype=np.int64), offsets
    flat = np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in items])
    return flat, offsets


def _cases_from_flat(
    flat: np.ndarray,
    offsets: np.ndarray,
    train_end: np.ndarray,
    valid_end: np.ndarray,
    part: Part,
    max_len: int,
    users: np.ndarray,
) -> EvalCases:
    """Vectorised core of :func:`build_eval_cases` on a CSR (flat values, offsets) view of the sequences."""
    if part not in ("valid", "test"):
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n_users = len(offsets) - 1
    lengths = np.diff(offsets)
    train_end = np.asarray(train_end, dtype=np.int64).reshape(-1)
    valid_end = np.asarray(valid_end, dtype=np.int64).reshape(-1)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    for name, arr in (("train_end", train_end), ("valid_end", valid_end), ("users", users)):
        if len(arr) != n_users:
            raise ValueError(f"{name} has {len(arr)} entries but there are {n_users} sequences")
    bad = np.flatnonzero((train_end < 0) | (train_end > valid_end) | (valid_end > lengths))
    if len(bad):
        r = int(bad[0])
        raise ValueError(
            f"sequence at row {r}: need 0 <= train_end <= valid_end <= len(items), got train_end="
            f"{train_end[r]}, valid_end={valid_end[r]}, len={lengths[r]} ({len(bad)} bad row(s))"
        )
    if len(flat) and flat.min() < 1:
        r = int(np.searchsorted(offsets, int(np.argmax(flat < 1)), side="right") - 1)
        raise ValueError(f"sequence at row {r}: item ids must be >= 1 (0 is padding)")

    start, stop = (train_end, valid_end) if part == "valid" else (valid_end, lengths)
    per_user = stop - start  # targets per user
    n_cases = int(per_user.sum())
    case_user_row = np.repeat(np.arange(n_users, dtype=np.int64), per_user)  # (C,)
    case_first = np.repeat(np.cumsum(per_user) - per_user, per_user)
    pos = np.repeat(start, per_user) + (np.arange(n_cases, dtype=np.int64) - case_first)  # (C,) position
    if n_cases and pos.min() < 1:
        r = int(case_user_row[int(np.argmin(pos))])
        raise ValueError(f"sequence at row {r}: a {part} target is its first item (no items before it)")
    base = offsets[:-1][case_user_row]  # (C,) flat index of each case's first item
    targets = flat[base + pos] if n_cases else np.zeros(0, dtype=np.int64)
    inputs, hist_indptr, hist_items = history_windows(flat, base, pos, max_len)
    return EvalCases(
        users=users[case_user_row],
        inputs=inputs,
        targets=torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)),
        hist_indptr=hist_indptr,
        hist_items=hist_items,
    )


def history_windows(
    flat: np.ndarray, base: np.ndarray, pos: np.ndarray, max_len: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Model inputs and full histories of C cases whose history is ``flat[base_c : base_c + pos_c]``.

    The one place that turns histories into model inputs, for evaluation cases (history = the items before
    a target) and recommendations (history = the whole sequence) alike.

    Returns:
        ``(inputs, hist_indptr, hist_items)``: inputs (C, max_len) int64, the last ``max_len`` history items
        left-padded with 0 (``inputs[:, -1]`` is the most recent); the whole history of each case in CSR form
        (hist_indptr (C+1,) int64 from 0, hist_items (nnz,) int64), for masking.
    """
    base = np.asarray(base, dtype=np.int64).reshape(-1)
    pos = np.asarray(pos, dtype=np.int64).reshape(-1)
    n_cases = len(pos)
    # left-padded inputs: column j holds the item at position pos - max_len + j (0 where that is < 0)
    rel = pos[:, None] - max_len + np.arange(max_len, dtype=np.int64)[None, :]  # (C, L)
    inputs = np.where(rel >= 0, flat[np.clip(base[:, None] + rel, 0, None)] if len(flat) else 0, 0)

    # CSR history: case c owns flat[base_c : base_c + pos_c]
    hist_indptr = np.zeros(n_cases + 1, dtype=np.int64)
    np.cumsum(pos, out=hist_indptr[1:])
    nnz = int(hist_indptr[-1])
    within = np.arange(nnz, dtype=np.int64) - np.repeat(hist_indptr[:-1], pos)
    hist_items = flat[np.repeat(base, pos) + within] if nnz else np.zeros(0, dtype=np.int64)
    return (
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)).reshape(n_cases, max_len),
        hist_indptr,
        np.ascontiguousarray(hist_items, dtype=np.int64),
    )


def build_eval_cases(
    items: Sequence[np.ndarray],
    train_end: Sequence[int] | np.ndarray,
    valid_end: Sequence[int] | np.ndarray,
    part: Part,
    max_len: int,
    users: Sequence[int] | np.ndarray | None = None,
) -> EvalCases:
    """Build one evaluation case per held-out target.

    Args:
        items: per-user chronological item arrays (the full sequences, held-out items included).
        train_end: per-user end of the training part.
        valid_end: per-user end of the validation part.
        part: ``"valid"`` (targets ``items[train_end:valid_end]``) or ``"test"`` (``items[valid_end:]``).
        max_len: model input length; each input holds the last ``max_len`` items before its target.
        users: per-user id stored in :attr:`EvalCases.users` (default: the row position 0..U-1).

    Returns:
        The cases, users in row order and targets in chronological order within a user.

    Raises:
        ValueError: inconsistent split boundaries, a padding id (0) in a sequence, or a target with no
            item before it.
    """
    flat, offsets = _flatten_sequences(items)
    if users is None:
        users = np.arange(len(items), dtype=np.int64)
    return _cases_from_flat(
        flat, offsets, np.asarray(train_end), np.asarray(valid_end), part, max_len, np.asarray(users)
    )


class SequenceTable(NamedTuple):
    """The columns of ``data/processed/sequences.parquet`` that evaluation needs, one entry per user."""

    users: np.ndarray  # (U,) int64 user ids
    items: list[np.ndarray]  # per-user int64 chronological items (held-out items included)
    train_end: np.ndarray  # (U,) int64
    valid_end: np.ndarray  # (U,) int64


def read_sequences(sequences_path: Path) -> SequenceTable:
    """Read ``user``, ``items``, ``train_end``, ``valid_end`` from ``data/processed/sequences.parquet``.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: not Parquet, or a required column is missing or malformed.
    """
    import pyarrow as pa  # noqa: PLC0415 - keep module imports to torch + numpy

    from pipeline.errors import DataError  # noqa: PLC0415
    from pipeline.io import read_parquet  # noqa: PLC0415

    sequences_path = Path(sequences_path)
    try:
        table = read_parquet(sequences_path)
    except ValueError as err:
        raise DataError(str(err)) from None
    required = ["user", "items", "train_end", "valid_end"]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"{sequences_path}: missing column(s) {missing} (has {table.column_names})")
    col = table.column("items").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise DataError(f"{sequences_path}: column 'items' must be a list of ints, got {col.type}")
    for name in required:
        nulls = table.column(name).null_count
        if nulls:
            raise DataError(f"{sequences_path}: column {name!r} has {nulls} null row(s)")
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = values[offsets[0] : offsets[-1]]
    items = np.split(flat, offsets[1:-1] - offsets[0])
    return SequenceTable(
        users=table.column("user").to_numpy().astype(np.int64),
        items=items,
        train_end=table.column("train_end").to_numpy().astype(np.int64),
        valid_end=table.column("valid_end").to_numpy().astype(np.int64),
    )


def load_eval_cases(sequences_path: Path, part: Part, max_len: int) -> EvalCases:
    """Read ``data/processed/sequences.parquet`` and build the ``part`` cases (users = its ``user`` column).

    Raises:
        FileNotFoundError: the file is missing.
        DataError: a required column is missing or the split boundaries are inconsistent.
    """
    from pipeline.errors import DataError  # noqa: PLC0415

    seqs = read_sequences(sequences_path)
    try:
        return build_eval_cases(seqs.items, seqs.train_end, seqs.valid_end, part, max_len, users=seqs.users)
    except ValueError as err:
        raise DataError(f"{sequences_path}: {err}") from None


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
        (B,) int64 ranks on ``scores.device``: #items scoring strictly higher + #other items scoring equal.

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

    s = scores.to(dtype=torch.float32, copy=True)  # (B, N+1), never modify the caller's tensor
    rows = torch.arange(s.shape[0], device=device)
    target_score = s[rows, targets]  # (B,)
    if mask_history:
        mask_scores_(s, hist_indptr, hist_items)
        s[rows, targets] = target_score  # a repeated target stays rankable
    else:
        mask_scores_(s)
    # strictly higher + other items equal == (#items >= target score) - the target itself
    return (s >= target_score[:, None]).sum(dim=1) - 1


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
    indptr = torch.as_tensor(hist_indptr, dtype=torch.long, device=device)
    cols = torch.as_tensor(hist_items, dtype=torch.long, device=device)
    if indptr.numel() != scores.shape[0] + 1 or int(indptr[-1]) != cols.numel():
        raise ValueError(
            f"hist_indptr ({indptr.numel()}) / hist_items ({cols.numel()}) do not describe {scores.shape[0]} cases"
        )
    rows = torch.arange(scores.shape[0], device=device)
    hist_rows = torch.repeat_interleave(rows, torch.diff(indptr))  # (nnz,)
    scores.index_put_((hist_rows, cols), torch.tensor(float("-inf"), device=device, dtype=scores.dtype))
    return scores


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
        from pipeline.progress import progress_bar  # noqa: PLC0415

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
def popularity_scores(
    items: Sequence[np.ndarray],
    train_end: Sequence[int] | np.ndarray,
    num_items: int,
) -> torch.Tensor:
    """(N+1,) float32 interaction counts of each item in the training parts (column 0 stays 0).

    Used as the popularity baseline: every user gets these scores, so it is the floor a model must beat.
    """
    train_end = np.asarray(train_end, dtype=np.int64).reshape(-1)
    if len(train_end) != len(items):
        raise ValueError(f"train_end has {len(train_end)} entries but there are {len(items)} sequences")
    parts = [np.asarray(s, dtype=np.int64)[: int(t)] for s, t in zip(items, train_end, strict=True)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > num_items):
        raise ValueError(f"item ids must be in 1..{num_items}, found {flat.min()}..{flat.max()}")
    counts = np.bincount(flat, minlength=num_items + 1).astype(np.float32)
    counts[0] = 0.0
    return torch.from_numpy(counts)
