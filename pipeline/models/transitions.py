"""The transition prior: how often item j directly follows item i in the training sequences, added to the scores.

``T[i, j] = c(i -> j) / sqrt(c(i ->) c(-> j))``, with ``c(i -> j)`` the number of times j is the next item after
i inside a training prefix (validation and test targets never count), ``c(i ->)`` the out-count of i and
``c(-> j)`` the in-count of j. Stored as CSR over rows 0..N (row 0, padding, is empty). After training, a user's
score of item j can gain ``w x sd x sum_k a_k T[x_{t-k}, j]`` (the first-order Markov part of FPMC and the
session-kNN methods), with ``a_k`` the recency prior's weights: :func:`add_transition_scores`.

:class:`TransitionPrior` gives the student the table (saved as buffers with its weights) and the term; the
weight ``w`` is chosen on validation after training (``pipeline.training.prior.set_transition_weight``). It is
not an inner product, so a recommender that ranks through an index re-scores the index's top-K together with the
transition candidates (``pipeline.recommend.topk.Recommender``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences


@dataclass(frozen=True)
class TransitionTable:
    """CSR rows 0..N of ``T``: ``indices[indptr[i]:indptr[i + 1]]`` are the items that follow i, with ``values``."""

    indptr: torch.Tensor  # (N + 2,) int64
    indices: torch.Tensor  # (nnz,) int64
    values: torch.Tensor  # (nnz,) float32

    @property
    def num_items(self) -> int:
        return int(self.indptr.shape[0]) - 2


def transition_table(seqs: Sequences, num_items: int, window: int = 1, decay: float = 1.0) -> TransitionTable:
    """The normalised transition counts of the training prefixes of ``seqs`` (items 1..``num_items``).

    ``window`` > 1 also counts the steps i -> j that are d = 2..window positions apart in a training prefix,
    each weighted ``decay ** (d - 1)``: what a user buys a few steps after i, not only next (the counts, the
    out- and in-counts all weighted alike). 1: the next item only.
    """
    n = num_items + 1
    user = np.repeat(np.arange(len(seqs.lengths)), seqs.lengths)
    pos = np.arange(len(seqs.flat)) - seqs.offsets[user]
    src, dst, weight = [], [], []
    for d in range(1, window + 1):
        # a step p -> p + d counts when both positions are training items of the same user
        at = np.flatnonzero(pos + d < seqs.train_end[user])
        if len(at) == 0:
            break
        src.append(seqs.flat[at])
        dst.append(seqs.flat[at + d])
        weight.append(np.full(len(at), decay ** (d - 1)))
    pairs = np.concatenate(src).astype(np.int64) * n + np.concatenate(dst) if src else np.zeros(0, np.int64)
    keys, where = np.unique(pairs, return_inverse=True)
    counts = np.bincount(where, weights=np.concatenate(weight) if weight else None, minlength=len(keys))
    rows, cols = keys // n, keys % n
    out_deg = np.bincount(rows, weights=counts, minlength=n)
    in_deg = np.bincount(cols, weights=counts, minlength=n)
    values = counts / np.sqrt(out_deg[rows] * in_deg[cols])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return TransitionTable(
        torch.from_numpy(indptr),
        torch.from_numpy(cols.astype(np.int64)),
        torch.from_numpy(values.astype(np.float32)),
    )


def transition_entries(
    table: TransitionTable, cols: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (user, item, weight) entries of ``scale[b] * sum_k mix[b, k] * T[cols[b, k], :]`` (repeated (user,
    item) pairs not summed). ``cols`` (B, n) recent item ids (0 = padding, an empty row), ``mix`` (B, n) their
    weights, ``scale`` (B,). The work is the number of table entries in the users' recent rows, not B x N."""
    starts, ends = table.indptr[cols], table.indptr[cols + 1]
    lengths = (ends - starts).reshape(-1)
    total = int(lengths.sum())
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=cols.device), lengths)
    offset = torch.arange(total, device=cols.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    entry = starts.reshape(-1)[owner] + offset
    weight = (scale[:, None] * mix).reshape(-1)[owner] * table.values[entry]
    return owner // cols.shape[1], table.indices[entry], weight


def add_transition_scores(
    scores: torch.Tensor, table: TransitionTable, cols: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``scores[b, j] += scale[b] * sum_k mix[b, k] * T[cols[b, k], j]`` in place (:func:`transition_entries`);
    returns ``scores``."""
    b, j, w = transition_entries(table, cols, mix, scale)
    scores.index_put_((b, j), w.to(scores.dtype), accumulate=True)
    return scores


class TransitionPrior:
    """The transition prior's part of :class:`~pipeline.models.Student` (a mixin: it needs ``cfg``,
    ``_recency`` and ``nn.Module``'s buffers)."""

    cfg: Any

    def _init_transitions(self) -> None:
        """Empty buffers of the config's table size, for ``load_state_dict`` to fill."""
        e = self.cfg.transition_entries
        if e > 0:
            n = self.cfg.num_items + 1
            self._set_transition_buffers(
                torch.zeros(n + 1, dtype=torch.int64), torch.zeros(e, dtype=torch.int64), torch.zeros(e)
            )

    def _set_transition_buffers(
        self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
    ) -> None:
        module: Any = self
        module.register_buffer("transition_indptr", indptr)
        module.register_buffer("transition_indices", indices)
        module.register_buffer("transition_values", values)

    def attach_transitions(self, table: TransitionTable) -> None:
        """Keep ``table`` with the model (saved with its weights); the prior's weight stays as it is."""
        if table.num_items != self.cfg.num_items:
            raise ValueError(f"transition table over {table.num_items} items, model has {self.cfg.num_items}")
        module: Any = self
        device = next(module.parameters()).device  # the model's device (CUDA when trained there)
        self._set_transition_buffers(
            table.indptr.to(device), table.indices.to(device), table.values.float().to(device)
        )
        self.cfg = dataclasses.replace(self.cfg, transition_entries=int(table.indices.numel()))

    def detach_transitions(self) -> None:
        """Drop the transition table (and the prior's weight) from the model."""
        buffers: Any = self._buffers  # type: ignore[attr-defined]
        for name in ("transition_indptr", "transition_indices", "transition_values"):
            buffers.pop(name, None)
        self.cfg = dataclasses.replace(self.cfg, transition_entries=0, transition_prior=0.0)

    @property
    def transitions(self) -> TransitionTable | None:
        """The saved transition table, or None."""
        if self.cfg.transition_entries <= 0:
            return None
        module: Any = self
        return TransitionTable(module.transition_indptr, module.transition_indices, module.transition_values)

    def add_transition_prior_(
        self, scores: torch.Tensor, recent: torch.Tensor, weight: float | None = None
    ) -> torch.Tensor:
        """Add the transition prior to full (B, N+1) ``scores`` of inputs ``recent`` (B, L) in place: w x the
        std of each user's scores over items 1..N x the recency-weighted transition rows of its recent items,
        with w the model's weight or ``weight`` when given. Nothing when the model has no table or w is 0."""
        table = self.transitions
        w = self.cfg.transition_prior if weight is None else weight
        if table is None or w <= 0:
            return scores
        scale = w * scores[:, 1:].float().std(1)
        module: Any = self
        return add_transition_scores(scores, table, *module._recency(recent), scale)
