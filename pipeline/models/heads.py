"""The dissected-correlation code heads of the student: a pair's code predicted from |m_i - m_j|."""

from __future__ import annotations

import torch
from torch import nn


class CodeHead(nn.Module):
    """Predicts the dissected-correlation code of a pair from |m_i - m_j| (2-layer MLP)."""

    def __init__(self, dim: int, num_codes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_codes))

    def forward(self, mi: torch.Tensor, mj: torch.Tensor) -> torch.Tensor:
        return self.net((mi - mj).abs())  # (P, K)


class SubVectorCodeHeads(nn.Module):
    """One code head per sub-vector (vq codebook): head d predicts sub-vector d's level from slice d of
    |m_i - m_j|, a 2-layer MLP ``Linear(s, s) -> ReLU -> Linear(s, K)`` with s = dim / D (the k-means head's
    shape on a slice).

    Why D heads on slices rather than a shared trunk on the whole |m_i - m_j| with a Linear to D x K: sub-vector
    d's code is a function of the teacher's slice d alone, and the table starts at the teacher vectors, so
    slice d of the table is where that code's information lives. Separate heads on separate slices are "one
    head per sub-vector" literally: each code is predicted, and each code loss flows, only through its own
    slice, which keeps the dissected structure in the table instead of letting a shared trunk read any code
    from anywhere. The D heads run as batched matmuls (``baddbmm``), the same numbers as D ``nn.Linear`` pairs
    (and initialised as they would be).

    Args:
        dim: the modality dimension d; ``groups`` must divide it.
        groups: D, the number of sub-vectors.
        num_codes: K, the levels of each sub-vector.
    """

    def __init__(self, dim: int, groups: int, num_codes: int) -> None:
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"code_groups ({groups}) must divide the modality dimension ({dim})")
        self.groups, s = groups, dim // groups
        self.weight1 = nn.Parameter(torch.empty(groups, s, s))  # (D, in, out)
        self.weight2 = nn.Parameter(torch.empty(groups, s, num_codes))
        # biases flat (1-D), so the optimiser groups them with the other biases (no weight decay)
        self.bias1 = nn.Parameter(torch.empty(groups * s))
        self.bias2 = nn.Parameter(torch.empty(groups * num_codes))
        for p in self.parameters():  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = s
            nn.init.uniform_(p, -(s**-0.5), s**-0.5)

    def forward(self, mi: torch.Tensor, mj: torch.Tensor) -> torch.Tensor:
        x = (mi - mj).abs().reshape(mi.shape[0], self.groups, -1).transpose(0, 1)  # (D, P, s)
        h = torch.relu(torch.baddbmm(self.bias1.view(self.groups, 1, -1), x, self.weight1))  # (D, P, s)
        out = torch.baddbmm(self.bias2.view(self.groups, 1, -1), h, self.weight2)  # (D, P, K)
        return out.transpose(0, 1)  # (P, D, K)


def kd_projection(kind: str, dim: int) -> nn.Module | None:
    """P of the holistic score ξ(P m_i, P m_j) for ``train.kd.projection`` ``kind``: an identity-initialised
    linear map, the authors' two random linear layers, or None (``none`` and ``item`` use no map)."""
    if kind == "identity":
        proj = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(proj.weight)  # start at the teacher's own correlations
        return proj
    if kind == "random":  # the authors' code: two randomly initialised linear layers
        return nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim))
    return None
