"""The last-item prior's weight, chosen on validation once training is over.

The trained student encodes each validation batch once; each candidate weight w scores it through
:meth:`Student.query_side` (its logits + w x their std x the modality tables' cosine to the input's last item).
The weight with the best validation NDCG@10 wins (the smallest on a tie, so 0 = no prior when nothing helps).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.evaluation.cases import EvalCases
from pipeline.evaluation.metrics import metrics_from_ranks, rank_targets
from pipeline.models import Student
from pipeline.training.validation import SELECT_METRIC

if TYPE_CHECKING:
    from pipeline.config import EvalParams
    from pipeline.tracking import Tracker

log = logging.getLogger(__name__)


def choose_prior_weight(
    model: Student,
    cases: EvalCases,
    weights: Sequence[float],
    ks: Sequence[int],
    mask_history: bool,
    batch_size: int,
    device: torch.device,
) -> tuple[float, dict[float, dict[str, float]]]:
    """Validation metrics of ``model`` for each prior weight; returns (the chosen weight, metrics by weight).

    ``model`` is not changed (the caller stores the chosen weight in its config).
    """
    candidates = sorted({float(w) for w in weights})
    n = len(cases)
    ranks = {w: np.empty(n, dtype=np.int64) for w in candidates}
    model.eval()
    with torch.inference_mode():
        items = model.item_representations()
        side = model.item_side(items, prior=True)
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            hidden, last = model.user_states(cases.inputs[s:e].to(device), items=items)
            lo, hi = int(cases.hist_indptr[s]), int(cases.hist_indptr[e])
            for w in candidates:
                r = rank_targets(
                    model.query_side(hidden, last, side, weight=w) @ side.keys.T,
                    cases.targets[s:e].to(device),
                    cases.hist_indptr[s : e + 1] - lo,
                    cases.hist_items[lo:hi],
                    mask_history,
                )
                ranks[w][s:e] = r.cpu().numpy()
    metrics = {w: metrics_from_ranks(ranks[w], ks) for w in candidates}
    best = max(candidates, key=lambda w: (metrics[w][SELECT_METRIC], -w))
    return best, metrics


def set_prior_weight(
    model: Student,
    cases: EvalCases,
    weights: Sequence[float],
    eval_params: EvalParams,
    device: torch.device,
    tracker: Tracker,
) -> dict[str, float]:
    """Choose the weight on ``cases`` (validation), store it in ``model.cfg``, log it; the chosen weight's
    validation metrics."""
    ev = eval_params
    w, by_weight = choose_prior_weight(model, cases, weights, ev.ks, ev.mask_history, ev.batch_size, device)
    model.cfg = dataclasses.replace(model.cfg, last_item_prior=w)
    shown = ", ".join(f"{k:g}: {m[SELECT_METRIC]:.4f}" for k, m in by_weight.items())
    log.info("last-item prior: weight %g (valid %s by weight: %s)", w, SELECT_METRIC, shown)
    tracker.log_metrics({"last_item_prior": w, **{f"prior_valid_{k}": v for k, v in by_weight[w].items()}})
    return by_weight[w]
