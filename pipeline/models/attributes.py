"""Item attributes in the student (``train.attributes``): one learned embedding per attribute (a brand, a
category), shared by every item that holds it, and an item's mean of them added to its ID embedding. A rarely
bought item so starts from what its brand and categories learned from the other items.

:class:`ItemAttributes` is a mixin of :class:`~pipeline.models.Student` (it needs ``cfg``); the attribute
ids of every item travel with the weights as the ``attribute_ids`` buffer, so a saved model needs no
catalogue to score.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ItemAttributes:
    """The attribute embeddings and each item's attribute ids (a mixin of the student)."""

    cfg: Any
    attribute_emb: nn.EmbeddingBag | None
    attribute_ids: torch.Tensor

    def _init_attributes(self, attributes: torch.Tensor | None) -> None:
        """With ``cfg.num_attributes`` > 0: the (N+1, A) buffer of each item's attribute ids (0: padding),
        ``attributes`` or zeros (filled when saved weights are loaded), and one learned row per attribute,
        started like the ID rows."""
        cfg = self.cfg
        if cfg.num_attributes == 0:
            self.attribute_emb = None
            return
        shape = (cfg.num_items + 1, cfg.attribute_width)
        if attributes is not None and tuple(attributes.shape) != shape:
            raise ValueError(f"attribute ids have shape {tuple(attributes.shape)}, expected {shape}")
        ids = torch.zeros(shape, dtype=torch.long) if attributes is None else attributes.long()
        self.register_buffer("attribute_ids", ids)  # type: ignore[attr-defined]
        self.attribute_emb = nn.EmbeddingBag(cfg.num_attributes + 1, cfg.hidden, mode="mean", padding_idx=0)
        nn.init.normal_(self.attribute_emb.weight, std=cfg.id_init_scale * cfg.hidden**-0.5)
        with torch.no_grad():
            self.attribute_emb.weight[0].zero_()

    def attribute_means(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        """The mean attribute embedding of ``ids`` (any shape; zero for an item without attributes), or of
        the whole catalogue when ``ids`` is None; None when the model has no attributes."""
        if self.attribute_emb is None:
            return None
        if ids is None:
            return self.attribute_emb(self.attribute_ids)
        return self.attribute_emb(self.attribute_ids[ids.reshape(-1)]).reshape(*ids.shape, -1)
