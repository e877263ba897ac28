"""The last-item prior's parts that scoring and training share: the modality tables' unit rows, the recency mix
of a user's recent items' rows, and the training logits with the prior trained in (``cfg.prior_in_training``).

:class:`RecencyPrior` is a mixin of :class:`~pipeline.models.Student` (it needs ``cfg``, ``modality_tables``,
``_rows`` and ``logit_factors``); ``Student.item_side`` and ``Student.query_side`` build the scores from it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class RecencyPrior:
    """The last-item prior's unit rows, recency mix and training factors (a mixin of the student)."""

    cfg: Any
    modality_tables: nn.ModuleDict

    def unit_rows(self, ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per modality, the L2-normalised rows (float32) of its table for ``ids`` (any shape), or for the whole
        catalogue; padding (id 0) is a zero row. The prior's item side: a cosine is a product of two rows."""
        units = []
        for m in self.cfg.modalities:
            table = self.modality_tables[m]
            rows = table.weight if ids is None else self._rows(table, ids)
            u = nn.functional.normalize(rows.float(), dim=-1)
            pad = torch.arange(len(u), device=u.device) == 0 if ids is None else ids == 0
            units.append(u.masked_fill(pad[..., None], 0.0))
        return units

    def training_factors(
        self,
        hidden: torch.Tensor,
        inputs: torch.Tensor,
        keep: torch.Tensor,
        items: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sides of the training logits at the ``keep`` positions of hidden states (B, T, H) of
        left-padded ``inputs`` (B, T), against the rows ``items`` (the catalogue, or the step's ``ids`` with
        ``inputs`` in their numbering): :meth:`logit_factors`, and with ``cfg.prior_in_training`` = a > 0 the
        prior's blocks, so a logit is ``a_t.b_j + a * mean_m <q_m(t), u_m[j]>`` with ``q_m(t)`` the recency mix
        of the unit rows of the items up to t: what :meth:`query_side` scores with the post-hoc weight 0."""
        a, b = self.logit_factors(hidden[keep], items)
        if self.cfg.prior_in_training <= 0 or not self.cfg.modalities:
            return a, b
        units = self.unit_rows(ids)
        n = self._recency_span()
        padded = nn.functional.pad(inputs, (n - 1, 0))  # each position's last n inputs, left-padded
        scale = self.cfg.prior_in_training / len(units)
        mixed = [scale * q for q in self.recency_mix(padded.unfold(1, n, 1)[keep], units)]
        return (
            torch.cat([a, *(q.to(a.dtype) for q in mixed)], -1),
            torch.cat([b, *(u.to(b.dtype) for u in units)], -1),
        )

    def recency_mix(self, recent: torch.Tensor, units: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per table of ``units`` (rows indexed by item id), the recency-weighted mean (float32) of the rows of
        the items of ``recent`` (B, L) left-padded ids (:meth:`_recency`): the prior's user side, alike in
        training and in scoring. Only the B x n recent rows are gathered and cast."""
        cols, mix = self._recency(recent)
        return [torch.einsum("bn,bnd->bd", mix, u[cols].float()) for u in units]

    def _recency_span(self) -> int:
        """How many recent items the prior mixes: while ``prior_decay ** k >= 1e-4``."""
        decay = self.cfg.prior_decay
        return 1 if decay <= 0 else 1 + math.ceil(math.log(1e-4) / math.log(decay))

    def _recency(self, recent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last n columns of left-padded ids (B, L) and their weights (B, n): ``decay ** k`` for the item k
        steps back, 0 for padding, each row summing to 1 (n: :meth:`_recency_span`)."""
        decay = self.cfg.prior_decay
        n = self._recency_span()
        cols = recent[:, -min(n, recent.shape[1]) :]
        age = torch.arange(cols.shape[1] - 1, -1, -1, device=cols.device, dtype=torch.float32)
        mix = torch.pow(torch.full_like(age, decay), age) * (cols != 0)
        return cols, mix / mix.sum(1, keepdim=True).clamp_min(1e-12)
