"""Sequence encoders behind one interface: ``forward(x, pad_mask) -> hidden``.

Both take already-embedded items ``x`` (B, L, H) with LEFT padding (the most recent item is at index L-1) and a
boolean ``pad_mask`` (B, L), True at padding, and return hidden states (B, L, H) where position t depends only on
positions <= t. The student builds item embeddings and scores; the backbone only mixes a sequence.
"""

from __future__ import annotations

import torch
from torch import nn


def _causal_key_mask(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) boolean attention mask, True = may not attend: later positions and padding keys, except that
    every position may see itself (a padded query row would otherwise attend to nothing and give NaN)."""
    L = pad_mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=pad_mask.device).triu(1)
    attn_mask = causal.unsqueeze(0) | pad_mask.unsqueeze(1)
    return attn_mask & ~torch.eye(L, dtype=torch.bool, device=pad_mask.device).unsqueeze(0)


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
        attn_mask = _causal_key_mask(pad_mask)
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


class CausalFrequencyMix(nn.Module):
    """BSARec's frequency rescaler made causal: ``low + beta² · (x - low)``, then residual and LayerNorm.

    BSARec (Shin et al., AAAI 2024) splits the sequence with an FFT into a low-frequency part (the first few
    Fourier components) and the high-frequency rest, and re-weights the rest by a learned per-dimension
    ``beta²``: self-attention acts as a low-pass filter, and this layer gives back the fine, item-to-item
    detail it smooths away. An FFT over the whole window lets position t see positions after t, which is
    harmless when only the last position is trained but leaks the targets when every position is (as here).
    So the low-pass part at position t is the mean of the real items at positions <= t within ``window``
    (``window`` 0: every earlier item, the causal counterpart of keeping only the lowest frequencies of a
    short sequence), and the high-pass part is the item minus that mean.
    """

    def __init__(self, hidden: int, window: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.sqrt_beta = nn.Parameter(torch.randn(1, 1, hidden))  # BSARec's initialisation
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        valid = (~pad_mask).unsqueeze(-1).float()  # (B, L, 1)
        total = torch.cumsum(x.float() * valid, 1)  # float32 running sums, whatever the autocast
        count = torch.cumsum(valid, 1)
        if self.window > 0:  # subtract the sums of the positions that left the window
            L = x.shape[1]
            total = total - nn.functional.pad(total, (0, 0, self.window, 0))[:, :L]
            count = count - nn.functional.pad(count, (0, 0, self.window, 0))[:, :L]
        low = (total / count.clamp(min=1.0)).to(x.dtype)
        mixed = low + self.sqrt_beta**2 * (x - low)
        return self.norm(self.dropout(mixed) + x)


class BSARecLayer(nn.Module):
    """One BSARec block: ``alpha`` · frequency mix + (1 − ``alpha``) · self-attention (each with its own residual
    and post-LayerNorm, as in BSARec), then a 4x-wide GELU feed-forward with residual and LayerNorm."""

    def __init__(self, hidden: int, heads: int, dropout: float, alpha: float, window: int) -> None:
        super().__init__()
        self.alpha = alpha
        self.frequency = CausalFrequencyMix(hidden, window, dropout)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.ffn_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, x, x, attn_mask=attn_mask, need_weights=False)[0]
        gsp = self.attention_norm(x + self.dropout(a))
        h = self.alpha * self.frequency(x, pad_mask) + (1.0 - self.alpha) * gsp
        return self.ffn_norm(h + self.dropout(self.ffn(h)))


class BSARec(nn.Module):
    """BSARec (Shin et al., AAAI 2024, "beyond self-attention"), causal: SASRec's attention mixed with a
    frequency rescaler (:class:`CausalFrequencyMix`) in every layer; post-LN blocks, embeddings through
    LayerNorm + dropout as in the authors' model; learned positions counted from the most recent item, as in
    :class:`SASRec`, so the output does not depend on left padding."""

    def __init__(
        self, hidden: int, layers: int, heads: int, dropout: float, max_len: int, alpha: float, window: int
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.heads = heads
        self.positions = nn.Embedding(max_len, hidden)
        self.input_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(BSARecLayer(hidden, heads, dropout, alpha, window) for _ in range(layers))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        pos = torch.arange(L - 1, -1, -1, device=x.device)
        x = self.dropout(self.input_norm(x + self.positions(pos)))
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        attn_mask = _causal_key_mask(pad_mask).repeat_interleave(self.heads, dim=0)
        for layer in self.layers:
            x = layer(x, attn_mask, pad_mask)
        return x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
