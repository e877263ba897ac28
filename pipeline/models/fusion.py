"""The student's fusions: how each ``train.fusion`` maps a modality row into the hidden size and combines the
parts (the ID embedding and one mapped row per modality) into one item representation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: the student (pipeline.models.student.Student) whose fusion modules ``combine`` reads
Student = Any


def _norm_linear(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden))


def _sum_parts(model: Student, parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(parts, 0).sum(0)


def _concat_parts(model: Student, parts: list[torch.Tensor]) -> torch.Tensor:
    return model.fuse(torch.cat(parts, -1))


def _gate_parts(model: Student, parts: list[torch.Tensor]) -> torch.Tensor:
    """Softmax over the parts' gate scores, per item."""
    stacked = torch.stack(parts, -2)  # (..., P, H)
    w = torch.softmax(model.gate(stacked), dim=-2)  # (..., P, 1)
    return (w * stacked).sum(-2)


def _paper_gate(hidden: int, n_parts: int) -> dict[str, nn.Module]:
    # no bias on the score: a constant shared by the parts cancels in the softmax (its gradient is 0 up to
    # rounding, which Adam would blow up into lr-sized steps)
    return {"gate": nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))}


@dataclass(frozen=True)
class Fusion:
    """How one ``fusion`` setting maps a modality row into the hidden size and combines the parts.

    ``modules(hidden, n_parts)`` names the fusion's own modules, registered on the student under those
    attribute names (so saved weights keep their keys); ``combine(student, parts)`` uses them.
    """

    to_hidden: Callable[[int, int], nn.Module]  # (modality dim, hidden) -> the map of a table row
    modules: Callable[[int, int], dict[str, nn.Module]]
    combine: Callable[[Student, list[torch.Tensor]], torch.Tensor]


FUSIONS: dict[str, Fusion] = {
    "sum": Fusion(_norm_linear, lambda h, n: {}, _sum_parts),
    "gate": Fusion(_norm_linear, lambda h, n: {"gate": nn.Linear(h, 1)}, _gate_parts),
    "concat": Fusion(_norm_linear, lambda h, n: {"fuse": nn.Linear(h * n, h)}, _concat_parts),
    "paper_gate": Fusion(lambda d, h: nn.Linear(d, h, bias=False), _paper_gate, _gate_parts),
}
