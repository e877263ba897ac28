"""The optimiser: AdamW, or AdamW beside torch's SparseAdam for the embedding tables (``train.embedding_updates``).

With a sampled softmax a step touches the rows of its own items only (inputs, targets, negatives, distillation
pairs), yet dense AdamW reads and writes every row of the ID embeddings and of each modality table at every
step: on a catalogue of a million items that is most of the step. In the sparse mode the student looks those
rows up with sparse gradients (:attr:`pipeline.models.Student.sparse_grads`), and :class:`SplitAdam` steps
them with ``torch.optim.SparseAdam`` (lazy Adam: a row's moments and value change only in the steps whose
batch uses it) and every other parameter with AdamW, as before. A row used in every step is updated exactly as
by AdamW; a row the batch does not use stays put, where AdamW would still move it by its decaying momentum, and
it comes back with the moments it left with.
The tables carry no weight decay in either mode (:func:`~pipeline.training.schedule.build_param_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from pipeline.config import ParamsView, TrainParams
from pipeline.training.schedule import build_param_groups

#: ``embedding_updates: auto`` turns sparse from this many items (with a sampled softmax); below it a dense
#: step costs about the same (benchmarks/bench_step.py, docs/RESULTS.md)
SPARSE_FROM_ITEMS = 100_000

BETAS = (0.9, 0.98)


def sparse_updates(train: TrainParams | ParamsView, num_items: int) -> bool:
    """Whether the tables are updated sparsely: ``train.embedding_updates``, ``auto`` resolved for ``num_items``."""
    mode = train.embedding_updates
    if mode == "auto":
        return train.loss == "sampled_softmax" and num_items >= SPARSE_FROM_ITEMS
    return mode == "sparse"


def table_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The embedding tables a sparse step updates row by row: the ID embeddings and every modality table."""
    tables = [model.item_emb.weight]
    tables += [t.weight for t in model.modality_tables.values()]
    return [p for p in tables if p.requires_grad]


class SplitAdam:
    """AdamW on the dense parameters and ``torch.optim.SparseAdam`` on ``sparse`` (the embedding tables).

    It behaves as one optimiser to the loop, the LR scheduler and the checkpoints: ``param_groups`` lists both
    parts' groups (each keeps its ``name`` and ``lr_scale``, so the schedule sets them alike), and the state
    dict is ``{"dense": ..., "sparse": ...}``, each part's own.
    """

    def __init__(self, groups: list[dict[str, Any]], sparse: Iterable[torch.nn.Parameter], lr: float) -> None:
        sparse_ids = {id(p) for p in sparse}
        dense_groups, sparse_groups = [], []
        for g in groups:
            rows = [p for p in g["params"] if id(p) in sparse_ids]
            rest = [p for p in g["params"] if id(p) not in sparse_ids]
            if rows and g["weight_decay"]:
                raise ValueError(f"parameter group {g['name']!r} decays embedding tables; SparseAdam cannot")
            meta = {k: v for k, v in g.items() if k not in ("params", "weight_decay")}
            if rest:
                dense_groups.append({**meta, "params": rest, "weight_decay": g["weight_decay"]})
            if rows:
                sparse_groups.append({**meta, "params": rows})
        self.parts: dict[str, torch.optim.Optimizer] = {
            "dense": torch.optim.AdamW(dense_groups, lr=lr, betas=BETAS),
            "sparse": torch.optim.SparseAdam(sparse_groups, lr=lr, betas=BETAS),
        }

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.parts.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])


def build_optimizer(model: torch.nn.Module, train: TrainParams | ParamsView, num_items: int):
    """The run's optimiser (AdamW, or :class:`SplitAdam` when :func:`sparse_updates`), and the model switched
    to sparse table gradients to match."""
    groups = build_param_groups(model, train.weight_decay)
    sparse = sparse_updates(train, num_items)
    model.sparse_grads = sparse
    if not sparse:
        return torch.optim.AdamW(groups, lr=train.lr, betas=BETAS)
    return SplitAdam(groups, table_parameters(model), train.lr)
