"""The student: item representations (ID + modality tables), a backbone, full-catalogue scores, KD heads.

Item ids are dense 1..N with 0 = padding. Every modality has a trainable table ``m`` (N+1, d) initialised from
the reduced teacher vectors; it is fused with the ID embedding into the item representation that both feeds the
backbone and scores the catalogue (tied input/output embeddings). The distillation heads read ``m`` directly:
a projection ``P`` for the holistic score ξ(P m_i, P m_j), and a 2-layer MLP that predicts the dissected
correlation code from |m_i - m_j|.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.backbones import GRU4Rec, SASRec


@dataclass(frozen=True)
class StudentConfig:
    """Everything needed to rebuild a student; stored as JSON next to its weights."""

    num_items: int  # N (ids 1..N; the tables have N+1 rows)
    backbone: str = "sasrec"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5
    max_len: int = 50
    modalities: tuple[str, ...] = ()
    modality_dim: int = 128
    fusion: str = "sum"
    num_codes: int = 50  # K of the dissected-correlation codebook (0: no code head)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown student config keys: {sorted(unknown)}")
        d = dict(d)
        d["modalities"] = tuple(d.get("modalities", ()))
        return cls(**d)


class CodeHead(nn.Module):
    """Predicts the dissected-correlation code of a pair from |m_i - m_j| (2-layer MLP)."""

    def __init__(self, dim: int, num_codes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_codes))

    def forward(self, mi: torch.Tensor, mj: torch.Tensor) -> torch.Tensor:
        return self.net((mi - mj).abs())  # (P, K)


class Student(nn.Module):
    """Sequential recommender with modality tables; interface ``encode`` / ``item_representations`` /
    ``full_scores`` / ``user_scores``."""

    def __init__(self, cfg: StudentConfig, teacher_vectors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        n, h = cfg.num_items + 1, cfg.hidden
        self.item_emb = nn.Embedding(n, h, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=h**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.modality_tables = nn.ModuleDict()
        self.modality_proj = nn.ModuleDict()
        self.kd_proj = nn.ModuleDict()
        self.code_heads = nn.ModuleDict()
        for m in cfg.modalities:
            table = nn.Embedding(n, cfg.modality_dim, padding_idx=0)
            if teacher_vectors is not None:
                t = teacher_vectors[m]
                if tuple(t.shape) != (n, cfg.modality_dim):
                    raise ValueError(
                        f"teacher vectors for {m} have shape {tuple(t.shape)}, "
                        f"expected {(n, cfg.modality_dim)}"
                    )
                with torch.no_grad():
                    table.weight.copy_(t)
                    table.weight[0].zero_()
            self.modality_tables[m] = table
            self.modality_proj[m] = nn.Sequential(
                nn.LayerNorm(cfg.modality_dim), nn.Linear(cfg.modality_dim, h)
            )
            self.kd_proj[m] = nn.Linear(cfg.modality_dim, cfg.modality_dim, bias=False)
            nn.init.eye_(self.kd_proj[m].weight)  # start at the teacher's own correlations
            if cfg.num_codes > 0:
                self.code_heads[m] = CodeHead(cfg.modality_dim, cfg.num_codes)
        n_parts = 1 + len(cfg.modalities)
        if cfg.fusion == "concat":
            self.fuse = nn.Linear(h * n_parts, h)
        elif cfg.fusion == "gate":
            self.gate = nn.Linear(h, 1)
        elif cfg.fusion != "sum":
            raise ValueError(f"unknown fusion {cfg.fusion!r} (sum | gate | concat)")
        if cfg.backbone == "sasrec":
            self.backbone: nn.Module = SASRec(h, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        elif cfg.backbone == "gru4rec":
            self.backbone = GRU4Rec(h, cfg.layers, cfg.dropout, cfg.max_len)
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r} (sasrec | gru4rec)")

    @property
    def num_items(self) -> int:
        return self.cfg.num_items

    @property
    def max_len(self) -> int:
        return self.cfg.max_len

    # ------------------------------------------------------------------ item side
    def _fuse(self, ids: torch.Tensor | None) -> torch.Tensor:
        """Fused representations of ``ids`` (any shape) or of the whole catalogue when ``ids`` is None."""

        def lookup(emb: nn.Embedding) -> torch.Tensor:
            return emb.weight if ids is None else emb(ids)

        parts = [lookup(self.item_emb)]
        for m in self.cfg.modalities:
            parts.append(self.modality_proj[m](lookup(self.modality_tables[m])))
        if len(parts) == 1:
            out = parts[0]
        elif self.cfg.fusion == "sum":
            out = torch.stack(parts, 0).sum(0)
        elif self.cfg.fusion == "concat":
            out = self.fuse(torch.cat(parts, -1))
        else:  # gate: softmax over the parts, per item (the paper's fusion)
            stacked = torch.stack(parts, -2)  # (..., P, H)
            w = torch.softmax(self.gate(stacked), dim=-2)  # (..., P, 1)
            out = (w * stacked).sum(-2)
        return out

    def item_representations(self) -> torch.Tensor:
        """(N+1, H) representations of every item; row 0 (padding) is never ranked by the evaluator."""
        return self._fuse(None)

    # ------------------------------------------------------------------ sequence side
    def encode(self, seq: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, H) of a left-padded item sequence (B, L); input dropout is the backbone's.

        ``items`` (N+1, H) may be passed to reuse one :meth:`item_representations` call per step.
        """
        pad = seq == 0
        x = items[seq] if items is not None else self._fuse(seq)  # (B, L, H)
        return self.backbone(x, pad)

    def full_scores(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item: (..., H) -> (..., N+1), one matmul against the whole catalogue."""
        items = self.item_representations() if items is None else items
        return hidden @ items.T

    def user_scores(self, seq: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Next-item scores (B, N+1) for left-padded inputs (B, L): the hidden state at the last position.

        Rows are encoded in chunks of similar length with all-padding columns dropped; exact, because the
        encoders do not depend on left padding, and several times faster on short-sequence data.
        """
        items = self.item_representations()
        seq = seq[:, -self.cfg.max_len :]
        order = torch.argsort((seq != 0).sum(1), stable=True)
        h = items.new_empty(seq.shape[0], items.shape[1])
        for rows in order.split(chunk):
            sub = seq[rows]
            longest = max(1, int((sub != 0).sum(1).max()))
            h[rows] = self.encode(sub[:, -longest:], items)[:, -1]
        return self.full_scores(h, items)

    # ------------------------------------------------------------------ distillation heads
    def modality_vectors(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        """The trainable modality embeddings m_i of ``ids``."""
        return self.modality_tables[modality](ids)

    def holistic_student_scores(
        self, modality: str, i: torch.Tensor, j: torch.Tensor, score_fn
    ) -> torch.Tensor:
        """s(i, j) = ξ(P m_i, P m_j) for pairs of ids, with ξ given as ``score_fn(a, b) -> (P,)``."""
        p = self.kd_proj[modality]
        return score_fn(p(self.modality_vectors(modality, i)), p(self.modality_vectors(modality, j)))

    def code_logits(self, modality: str, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """(P, K) logits of the dissected-correlation code of each pair."""
        return self.code_heads[modality](
            self.modality_vectors(modality, i), self.modality_vectors(modality, j)
        )
