"""The KDSR authors' student as a backbone: a session graph, one relation-aware graph attention layer over the ID
embeddings, a gate over the node's four vectors, and the sum of the last two nodes.

The authors build, per training sequence, a graph over its **unique** items; the relation of node u to node v is
``self`` (u = v), ``out`` (the transition u -> v occurs, v -> u does not), ``in`` (v -> u occurs, u -> v does not)
or ``both``; a consecutive repeat u -> u adds nothing. A graph attention layer (shared linear map W, one attention
vector a_r per relation, LeakyReLU 0.1, a learned per-relation scale c_r, softmax over the neighbours, attention
dropout) updates every node from the ID embeddings::

    z = W e_id,   score(u, v) = c_r · LeakyReLU(a_r · (z_u ⊙ z_v)),   g_u = Σ_v softmax_v(score(u, v)) z_v

(the element-wise product inside the score is the relation-aware local aggregator of session-graph models such
as GCE-GNN). A node's four vectors, its ID embedding, g_u and the image and text embeddings, are weighed by the
student's fusion gate; the node vectors go back to the sequence positions, and the sequence is represented by the
sum of its last ``last_n`` (2) positions.

**Causal form.** Our trainer predicts the next item at every position, so position t may use items at positions
<= t only. Position t is therefore given the graph G_t of its prefix ``seq[..t]``: :func:`prefix_relations`
makes, for each offset j < last_n, a position-level (L, L) relation matrix whose row t is the row of node
``seq[t-j]`` in G_t: position t attends to the positions s <= t that are the **last occurrence** of their item
within the prefix (one position per unique item, so a repeated item is one neighbour, as one node), with the
relation of the two items in G_t (transitions (k-1, k) with k <= t only). The hidden state at t is
``Σ_j fuse(node seq[t-j] of G_t)``. At the last position of a sequence, G_t is the authors' graph of the whole
sequence, and the hidden state equals theirs exactly: the last two nodes' rows of the unique-item graph, in any
node order (tests/test_session_graph.py compares with a per-sequence reference). At an earlier position t it
equals what the authors' model gives the prefix ``seq[..t]`` as a sequence of its own. Everything is batched
tensor algebra: no per-sequence Python loop, no position embeddings, and extra left padding changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NONE, SELF, OUT, IN, BOTH = range(5)  # relation codes; 0: not a neighbour
RELATIONS = ("self", "out", "in", "both")  # codes 1..4, one attention vector and one scale each


def _shift_rows(x: torch.Tensor, j: int) -> torch.Tensor:
    """``x`` moved down by ``j`` along dim 1 (row t holds row t-j), zeros in the first ``j`` rows."""
    if j == 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [j, 0]
    return nn.functional.pad(x, pad)[:, : x.shape[1]]


def prefix_relations(seq: torch.Tensor, last_n: int) -> torch.Tensor:
    """Relation codes (B, last_n, L, L) of left-padded item sequences ``seq`` (B, L), 0 = padding.

    ``[b, j, t, s]`` is the relation (:data:`SELF`, :data:`OUT`, :data:`IN`, :data:`BOTH`) of the item at
    position t-j to the item at position s in the session graph of the prefix ``seq[b, ..t]``, where s <= t is
    the last occurrence of its item within that prefix; :data:`NONE` (0) for every other s, and for whole rows
    where t-j is padding or before the window.
    """
    B, L = seq.shape
    real = seq != 0
    same = (seq.unsqueeze(2) == seq.unsqueeze(1)) & real.unsqueeze(2) & real.unsqueeze(1)  # (B, L, L)
    pos = torch.arange(L, device=seq.device)
    upto = pos.unsqueeze(0) <= pos.unsqueeze(1)  # [t, s]: s <= t
    # s represents its item in prefix t when no later position u in (s, t] holds the same item
    later = same & (pos.unsqueeze(0) > pos.unsqueeze(1))  # [s, u]: u > s, same item
    repeated_by = torch.cumsum(later.to(torch.int32), dim=2)  # [s, t]: repeats of item(s) in (s, t]
    rep = (repeated_by == 0).transpose(1, 2) & upto & real.unsqueeze(1)  # [t, s]
    same_f = same.float()
    # [k, s]: item(k-1) == item(s), i.e. the transition (k-1 -> k) leaves item(s)
    prev_same = _shift_rows(same_f, 1)
    codes = []
    for j in range(last_n):
        query = _shift_rows(same, j)  # [t, k]: item(k) == item(t-j)
        in_prefix = query & upto  # k <= t
        # out: a transition (k-1 -> k), k <= t, from item(t-j) to item(s); in: from item(s) to item(t-j)
        leaves_query = _shift_rows(query.transpose(1, 2), 1).transpose(1, 2) & upto  # [t, k]: item(k-1)
        out = torch.bmm(leaves_query.float(), same_f) > 0
        into = torch.bmm(in_prefix.float(), prev_same) > 0
        code = torch.where(out & into, BOTH, torch.where(out, OUT, torch.where(into, IN, NONE)))
        code = torch.where(query, SELF, code)
        codes.append(code.masked_fill(~rep, NONE))
    return torch.stack(codes, 1)


class RelationalGraphAttention(nn.Module):
    """One relation-aware graph attention layer over the session graph (see the module docstring)."""

    def __init__(self, hidden: int, attention_dropout: float, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden, bias=False)  # the shared map W
        self.attention = nn.Parameter(torch.randn(len(RELATIONS), hidden) * hidden**-0.5)  # a_r
        self.scale = nn.Parameter(torch.ones(len(RELATIONS)))  # c_r
        self.negative_slope = negative_slope
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, H) the vectors at the positions, ``relations`` (B, J, L, L) from :func:`prefix_relations`
        -> (B, J, L, H): row ``[:, j, t]`` is the updated vector of the node of position t-j in G_t (zero where
        that row has no neighbour)."""
        z = self.linear(x)  # (B, L, H)
        out = []
        for j in range(relations.shape[1]):
            code = relations[:, j]  # (B, L, L)
            query = _shift_rows(z, j)  # row t: the node of position t-j
            # every relation's score of every pair, then the pair's own relation picked: (B, R, L, L)
            scores = torch.einsum("bth,rh,bsh->brts", query, self.attention, z)
            which = (code - 1).clamp(min=0)
            e = scores.gather(1, which.unsqueeze(1)).squeeze(1)
            e = nn.functional.leaky_relu(e, self.negative_slope) * self.scale[which]
            linked = code != NONE
            has_any = linked.any(-1, keepdim=True)
            e = e.masked_fill(~linked, float("-inf")).masked_fill(~has_any, 0.0)  # no all -inf row (NaN)
            alpha = torch.softmax(e, dim=-1).masked_fill(~linked, 0.0)
            out.append(torch.bmm(self.dropout(alpha), z))
        return torch.stack(out, 1)


class SessionGraph(nn.Module):
    """The authors' session-graph student as a backbone (see the module docstring).

    Unlike the other backbones it needs the parts of each item, not their fusion: :meth:`forward` takes the
    ID embeddings and the mapped modality embeddings at every position, and the student's own ``combine``
    (its fusion gate), which it applies to [ID, graph, *modalities] of each node.
    """

    takes_parts = True  # Student.encode passes (parts, seq, combine)

    def __init__(self, hidden: int, dropout: float, attention_dropout: float, last_n: int) -> None:
        super().__init__()
        self.last_n = last_n
        self.graph = RelationalGraphAttention(hidden, attention_dropout)
        self.dropout = nn.Dropout(dropout)  # on each fused node vector (the authors' 0.4)

    def forward(
        self,
        parts: list[torch.Tensor],
        seq: torch.Tensor,
        combine: Callable[[list[torch.Tensor]], torch.Tensor],
    ) -> torch.Tensor:
        """``parts`` [ID, *modalities], each (B, L, H) at the positions of ``seq`` (B, L, left-padded) ->
        hidden states (B, L, H), zero at padding."""
        relations = prefix_relations(seq, self.last_n)
        graph = self.graph(parts[0], relations)  # (B, J, L, H)
        real = (seq != 0).unsqueeze(-1)
        hidden = torch.zeros_like(parts[0])
        for j in range(self.last_n):
            shifted = [_shift_rows(p, j) for p in parts]
            node = self.dropout(combine([shifted[0], graph[:, j], *shifted[1:]]))
            hidden = hidden + node.masked_fill(~_shift_rows(real, j), 0.0)
        return hidden.masked_fill(~real, 0.0)
