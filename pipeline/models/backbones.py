"""Sequence encoders behind one interface: ``forward(x, pad_mask) -> hidden``.

Both take already-embedded items ``x`` (B, L, H) with LEFT padding (the most recent item is at index L-1) and a
boolean ``pad_mask`` (B, L), True at padding, and return hidden states (B, L, H) where position t depends only on
positions <= t. The student builds item embeddings and scores; the backbone only mixes a sequence.
"""

from __future__ import annotations

import torch
from torch import nn


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), pre-LN variant.

    Positions are learned and counted from the most recent item (index L-1 of a left-padded window), which is
    the original SASRec convention; it makes the encoder invariant to extra left padding, so a batch can be
    trimmed to its longest sequence.
    """

    def __init__(self, hidden: int, layers: int, heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.positions = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden,
            nhead=heads,
            dim_feedforward=hidden,  # the original SASRec's point-wise FFN width
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        # distance from the most recent item: L-1 ... 0, so position ids do not depend on left padding
        pos = torch.arange(L - 1, -1, -1, device=x.device)
        x = x * (H**0.5) + self.positions(pos)  # (B, L, H)
        x = self.dropout(x)  # the only dropout on the input (the student adds none)
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        # a padded query row would attend to nothing (NaN); let every position see itself
        key_mask = pad_mask.clone()
        attn_mask = causal.unsqueeze(0) | key_mask.unsqueeze(1)  # (B, L, L)
        attn_mask = attn_mask & ~torch.eye(L, dtype=torch.bool, device=x.device).unsqueeze(0)
        attn_mask = attn_mask.repeat_interleave(self.encoder.layers[0].self_attn.num_heads, dim=0)
        h = self.encoder(x, mask=attn_mask)
        h = self.output_norm(h)
        return h.masked_fill(pad_mask.unsqueeze(-1), 0.0)


class GRU4Rec(nn.Module):
    """GRU over the item sequence (Hidasi et al. 2016), in the same interface as :class:`SASRec`.

    Left padding is skipped by packing, so the hidden state of a real position never depends on padding.
    """

    def __init__(self, hidden: int, layers: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            hidden, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        lengths = (~pad_mask).sum(1)  # (B,)
        # move each sequence to the left edge (right padding) so packing sees real items first
        idx = torch.arange(L, device=x.device).unsqueeze(0) + (L - lengths).unsqueeze(1)  # (B, L)
        idx = idx.clamp(max=L - 1)
        x_right = torch.gather(self.dropout(x), 1, idx.unsqueeze(-1).expand(B, L, H))
        packed = nn.utils.rnn.pack_padded_sequence(
            x_right, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)  # right padded
        # move back to left padding
        back = torch.arange(L, device=x.device).unsqueeze(0) - (L - lengths).unsqueeze(1)
        back = back.clamp(min=0)
        h = torch.gather(out, 1, back.unsqueeze(-1).expand(B, L, H))
        h = self.output_norm(h)
        return h.masked_fill(pad_mask.unsqueeze(-1), 0.0)
