"""Validation during training: the NaN guard on the model's scores, and metrics sharded over DDP ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.evaluation.cases import EvalCases
from pipeline.evaluation.metrics import evaluate_scorer, metrics_from_ranks
from pipeline.training.distributed import DistInfo, all_gather_concat, shard_bounds

if TYPE_CHECKING:
    from pipeline.config import EvalParams

#: the validation metric that selects the best epoch (and the last-item prior's weight)
SELECT_METRIC = "ndcg_at_10"

Scorer = Callable[[torch.Tensor], torch.Tensor]  # (B, L) item ids -> (B, N + 1) scores


def _slice_cases(cases: EvalCases, start: int, end: int) -> EvalCases:
    """Cases ``start:end`` (history pointers rebased)."""
    lo, hi = int(cases.hist_indptr[start]), int(cases.hist_indptr[end])
    return EvalCases(
        users=cases.users[start:end],
        inputs=cases.inputs[start:end],
        targets=cases.targets[start:end],
        hist_indptr=cases.hist_indptr[start : end + 1] - lo,
        hist_items=cases.hist_items[lo:hi],
    )


def nan_guard(scorer: Scorer, epoch: int, lr: float) -> Scorer:
    """``scorer`` that stops training with the "lower train.lr" message when the model's scores are NaN
    (weights blown up by a too large rate while the epoch's loss was still finite)."""

    def scores(inputs: torch.Tensor) -> torch.Tensor:
        out = scorer(inputs)
        if torch.isnan(out).any():
            raise PipelineError(
                f"training diverged at epoch {epoch} (the model's scores are NaN); lower train.lr (now {lr})"
            )
        return out

    return scores


def evaluate_sharded(
    scorer: Scorer, cases: EvalCases, eval_params: EvalParams, device: torch.device, dist_info: DistInfo
) -> dict[str, float]:
    """Validation metrics with each rank ranking a contiguous 1/world of the cases.

    The integer ranks are gathered in case order, so every rank computes the same metrics as one process
    (and takes the same early-stopping decision without further communication).
    """
    bounds = shard_bounds(len(cases), dist_info.world_size)
    start, end = bounds[dist_info.rank], bounds[dist_info.rank + 1]
    mine = np.zeros(0, dtype=np.int64)
    if end > start:
        _, mine = evaluate_scorer(
            scorer,
            _slice_cases(cases, start, end),
            eval_params.ks,
            eval_params.mask_history,
            eval_params.batch_size,
            device,
        )
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    ranks = all_gather_concat(torch.from_numpy(mine).to(device), sizes)
    return metrics_from_ranks(ranks, eval_params.ks)
