"""Evaluation cases: one per held-out target, with the model input window and the full history to mask.

Built from ``data/processed/sequences.parquet`` (:func:`load_eval_cases`) or from in-memory sequences
(:func:`build_eval_cases`); the ranking and the metrics are in :mod:`pipeline.evaluation.metrics`. Only
torch and numpy are imported at module level, so it runs where polars and mlflow are absent (the GPU machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences, check_sequences, read_sequences

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
def cases_from_sequences(
    seqs: Sequences, part: Part, max_len: int, rows: np.ndarray | None = None
) -> EvalCases:
    """One evaluation case per held-out ``part`` target of CSR sequences (users = ``seqs.users``).

    ``rows`` (row positions) keeps only those users' targets (default: every user's); the checks below still
    cover every row, and only the kept users' cases are built.

    Raises:
        ValueError: a bad ``part`` or ``max_len``, inconsistent split boundaries, a padding id (0) in a
            sequence, or a target with no item before it.
    """
    if part not in ("valid", "test"):
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    flat, offsets, train_end, valid_end, users = (
        seqs.flat,
        seqs.offsets,
        seqs.train_end,
        seqs.valid_end,
        seqs.users,
    )
    n_users = len(offsets) - 1
    lengths = np.diff(offsets)
    for name, arr in (("train_end", train_end), ("valid_end", valid_end), ("users", users)):
        if len(arr) != n_users:
            raise ValueError(f"{name} has {len(arr)} entries but there are {n_users} sequences")
    check_sequences(flat, offsets, train_end, valid_end)

    start, stop = (train_end, valid_end) if part == "valid" else (valid_end, lengths)
    per_user = stop - start  # targets per user
    first_item = np.flatnonzero((per_user > 0) & (start < 1))  # a user's first target is at `start`
    if len(first_item):
        r = int(first_item[0])
        raise ValueError(f"sequence at row {r}: a {part} target is its first item (no items before it)")
    if rows is not None:
        keep = np.zeros(n_users, dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = True
        per_user = np.where(keep, per_user, 0)
    n_cases = int(per_user.sum())
    case_user_row = np.repeat(np.arange(n_users, dtype=np.int64), per_user)  # (C,)
    case_first = np.repeat(np.cumsum(per_user) - per_user, per_user)
    pos = np.repeat(start, per_user) + (np.arange(n_cases, dtype=np.int64) - case_first)  # (C,) position
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
    return cases_from_sequences(Sequences.from_lists(items, train_end, valid_end, users), part, max_len)


def load_eval_cases(sequences_path: Path, part: Part, max_len: int) -> EvalCases:
    """Read ``data/processed/sequences.parquet`` and build the ``part`` cases (users = its ``user`` column).

    Raises:
        FileNotFoundError: the file is missing.
        DataError: a required column is missing or the split boundaries are inconsistent.
    """
    from pipeline.errors import DataError

    seqs = read_sequences(sequences_path)
    try:
        return cases_from_sequences(seqs, part, max_len)
    except ValueError as err:
        raise DataError(f"{sequences_path}: {err}") from None
