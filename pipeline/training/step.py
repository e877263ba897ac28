"""One optimisation step: forward under the step's autocast, the loss terms, backward, the DDP gradient sum,
the optimiser (AdamW; SparseAdam on the tables with ``train.embedding_updates`` sparse). The training loop
and ``benchmarks/bench_step.py`` both call :func:`train_step`, so the benchmark times what training runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pipeline.config import ParamsView, TrainParams
from pipeline.training.batches import trim_left_padding
from pipeline.training.diagnostics import table_gradient_norms
from pipeline.training.distributed import DistInfo, all_reduce_gradients
from pipeline.training.objective import LossTerms, batch_loss
from pipeline.training.optim import table_parameters

if TYPE_CHECKING:
    from pipeline.training.setup import Training


@dataclass
class Step:
    """What a step leaves: the weighted loss, its unweighted terms, and (when asked) the gradient norms of
    each term on the modality tables (:func:`table_gradient_norms`)."""

    loss: torch.Tensor
    terms: LossTerms
    grad_norms: dict[str, float] = field(default_factory=dict)


def train_step(
    t: Training,
    train: TrainParams | ParamsView,
    idx: torch.Tensor,
    generator: torch.Generator,
    dist_info: DistInfo,
    grad_norms: bool = False,
) -> Step:
    """Train on the batch of training windows ``idx`` (the whole batch; under DDP each rank its share).

    ``generator`` is the epoch's CPU generator (pairs, negatives); ``grad_norms`` also measures each term's
    gradient on the modality tables before the step (the diagnostics' ``grad_*`` columns).
    """
    seq = trim_left_padding(t.windows[idx.to(t.windows.device)])  # (B, T+1)
    with torch.autocast(t.windows.device.type, dtype=torch.bfloat16, enabled=t.autocast):
        terms = batch_loss(t, train, seq, generator, dist_info)
        loss = terms.total(train.kd)
    step = Step(loss, terms)
    if grad_norms:
        step.grad_norms = table_gradient_norms(t.model, terms.columns(train.kd), terms.weights(train.kd))
    t.optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # always in one process; a rank with an empty share has no graph
        loss.backward()
    if dist_info.distributed:
        # the shares sum to the whole batch's gradient (the tables' rows too, when their gradients are sparse)
        sparse = table_parameters(t.model) if t.model.sparse_grads else ()
        all_reduce_gradients(t.model.parameters(), sparse)
    t.optimizer.step()
    return step
