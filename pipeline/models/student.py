"""The student: item representations (ID + modality tables), a backbone, full-catalogue scores, KD heads.

Item ids are dense 1..N with 0 = padding. The ID side adds the item's mean attribute embedding when the catalogue
has attributes (:class:`~pipeline.models.attributes.ItemAttributes`). Every modality has a trainable table ``m`` (N+1, d) initialised from
the reduced teacher vectors; it is mapped to the hidden size H and fused with the ID embedding. Two wirings:

- ``output="fused"`` (tied): the fused representation both feeds the backbone and scores the catalogue, so
  every full-softmax step sends a gradient to every row of every modality table.
- ``output="id"`` (the paper's): the fused representation feeds the backbone only; the catalogue is scored
  with the ID embeddings alone, so a modality row gets gradient only when its item is in the batch.
- ``output="id_teacher"``: as ``id`` on the input side; the catalogue is scored with the ID embedding plus
  ``LayerNorm -> Linear(d, H)`` of the **frozen** teacher vectors (a buffer, never trained): the text knowledge
  of ``fused`` for every item without a table that drifts; the trainable tables live on the input side only.

Fusions (:data:`FUSIONS`): ``sum``, ``gate`` and ``concat`` map each table through ``LayerNorm -> Linear``;
``paper_gate`` (the paper's) maps it through a bias-free ``Linear(d, H)`` with no normalisation, so the
table's scale (and so its learning rate) reaches the backbone, and weighs the parts with a softmax over the
scores of one shared MLP (``Linear(H, H) -> ReLU -> Linear(H, 1)``, no bias on the last layer). The backbone's input dropout follows.

The last-item prior (``cfg.last_item_prior`` = w > 0, chosen on validation after training): a user's logits
gain ``w * std_j(logit_j) * mean_m <q_m, u_m[j]>``, with ``u_m`` the L2-normalised rows of the modality table
``m`` and ``q_m = sum_k a_k u_m[x_{t-k}]`` the recency-weighted mean of the input's items (``a_k`` proportional
to ``cfg.prior_decay ** k``; decay 0 = the last item alone, its cosine), so items close to the ones just seen
in the distilled geometry move up; the std puts w on the scale of each user's own logits. It is one more inner
product (:meth:`item_side`, :meth:`query_side`), so an index over the item side ranks with it. Training never
uses w. With ``cfg.prior_in_training`` = a > 0 the same cosine term, at the fixed scale a (no std), is also part
of the training logits (:meth:`training_factors`, each position mixing the items up to it) and of every score,
so the network learns what the cosine to the recent items leaves unexplained; w is then chosen on top of it.
With ``cfg.exclude_seen`` the items of the input are never recommended (:meth:`user_scores`).

The distillation heads read ``m`` directly: the holistic score ξ(P m_i, P m_j) with ``P`` per
``kd_projection`` (:data:`KD_PROJECTIONS`: ``identity``-initialised linear map, the authors' two ``random``
linear layers, ``none`` = the table itself, or ``item`` = the items' output embeddings), and a 2-layer MLP
that predicts the dissected correlation code from |m_i - m_j|: one K-way head for a k-means codebook
(:class:`CodeHead`), or, for a vq codebook, one per sub-vector, each on its slice (:class:`SubVectorCodeHeads`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from pipeline.config.train import KDProjection, Output, Scoring
from pipeline.models.attributes import ItemAttributes
from pipeline.models.backbones import BSARec, GRU4Rec, SASRec
from pipeline.models.config import StudentConfig
from pipeline.models.fusion import FUSIONS
from pipeline.models.heads import CodeHead, SubVectorCodeHeads, kd_projection
from pipeline.models.recency import RecencyPrior
from pipeline.models.session_graph import SessionGraph
from pipeline.models.transitions import TransitionPrior

OUTPUTS: tuple[str, ...] = get_args(Output)
KD_PROJECTIONS: tuple[str, ...] = get_args(KDProjection)


BACKBONES: dict[str, Callable[[StudentConfig], nn.Module]] = {
    "sasrec": lambda c: SASRec(c.hidden, c.layers, c.heads, c.dropout, c.max_len),
    "gru4rec": lambda c: GRU4Rec(c.hidden, c.layers, c.dropout, c.max_len),
    "bsarec": lambda c: BSARec(
        c.hidden, c.layers, c.heads, c.dropout, c.max_len, c.bsarec_alpha, c.bsarec_window
    ),
    "session_graph": lambda c: SessionGraph(
        c.hidden, c.dropout, c.session_graph_attention_dropout, c.session_graph_last_n
    ),
}
SCORINGS: tuple[str, ...] = get_args(Scoring)


@dataclass(frozen=True)
class ItemSide:
    """The catalogue side of a student's logits (:meth:`Student.item_side`).

    Attributes:
        keys: (N+1, D) rows; a user's scores are ``Student.query_side(...) @ keys.T``.
        cov: (H, H) covariance of the item rows 1..N when ``keys`` carry the last-item prior's blocks, else None.
    """

    keys: torch.Tensor
    cov: torch.Tensor | None


class Student(ItemAttributes, RecencyPrior, TransitionPrior, nn.Module):
    """Sequential recommender with modality tables; interface ``encode`` / ``item_representations`` /
    ``full_scores`` / ``user_scores``.

    ``sparse_grads`` (a training setting, not saved): look the ID embeddings and modality tables up with
    sparse gradients, for an optimiser that updates only the rows a step uses (``train.embedding_updates``).
    """

    sparse_grads: bool = False

    def __init__(
        self,
        cfg: StudentConfig,
        teacher_vectors: dict[str, torch.Tensor] | None = None,
        attributes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        n, h = cfg.num_items + 1, cfg.hidden
        for name, value, allowed in (
            ("fusion", cfg.fusion, tuple(FUSIONS)),
            ("backbone", cfg.backbone, tuple(BACKBONES)),
            ("output", cfg.output, OUTPUTS),
            ("kd_projection", cfg.kd_projection, KD_PROJECTIONS),
            ("scoring", cfg.scoring, SCORINGS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r} ({' | '.join(allowed)})")
        if cfg.backbone == "session_graph" and cfg.fusion == "concat":
            raise ValueError(
                "fusion 'concat' does not work with backbone 'session_graph' (sum | gate | paper_gate)"
            )
        fusion = FUSIONS[cfg.fusion]
        self.item_emb = nn.Embedding(n, h, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.id_init_scale * h**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self._init_attributes(attributes)
        self.modality_tables = nn.ModuleDict()
        self.modality_proj = nn.ModuleDict()
        self.kd_proj = nn.ModuleDict()
        self.code_heads = nn.ModuleDict()
        self.output_proj = nn.ModuleDict()  # output="id_teacher": frozen teacher vectors -> H
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
            self.modality_proj[m] = fusion.to_hidden(cfg.modality_dim, h)
            proj = kd_projection(cfg.kd_projection, cfg.modality_dim)
            if proj is not None:
                self.kd_proj[m] = proj
            if cfg.num_codes > 0 and cfg.code_groups > 0:
                self.code_heads[m] = SubVectorCodeHeads(cfg.modality_dim, cfg.code_groups, cfg.num_codes)
            elif cfg.num_codes > 0:
                self.code_heads[m] = CodeHead(cfg.modality_dim, cfg.num_codes)
            if cfg.output == "id_teacher":
                frozen = torch.zeros(n, cfg.modality_dim)
                if teacher_vectors is not None:
                    frozen.copy_(teacher_vectors[m])
                    frozen[0].zero_()
                self.register_buffer(f"frozen_teacher_{m}", frozen)  # saved with the weights, never trained
                self.output_proj[m] = nn.Sequential(
                    nn.LayerNorm(cfg.modality_dim), nn.Linear(cfg.modality_dim, h)
                )
        n_parts = 1 + len(cfg.modalities) + (cfg.backbone == "session_graph")  # + the graph's part
        for name, module in fusion.modules(h, n_parts).items():
            self.add_module(name, module)
        self.backbone: nn.Module = BACKBONES[cfg.backbone](cfg)
        self._init_transitions()  # the transition prior's buffers, when the config has a table

    @property
    def num_items(self) -> int:
        return self.cfg.num_items

    @property
    def max_len(self) -> int:
        return self.cfg.max_len

    # ------------------------------------------------------------------ item side
    def _id_part(self, ids: torch.Tensor | None) -> torch.Tensor:
        """The ID side of ``ids`` (any shape), or of the whole catalogue: the ID embedding, plus the mean of
        the item's attribute embeddings when the model has attributes (zero for an item without any)."""
        out = self.item_emb.weight if ids is None else self._rows(self.item_emb, ids)
        means = self.attribute_means(ids)
        return out if means is None else out + means

    def _parts(self, ids: torch.Tensor | None) -> list[torch.Tensor]:
        """[ID side (:meth:`_id_part`), *mapped modality embeddings] of ``ids`` (any shape), or of the whole
        catalogue."""

        def lookup(emb: nn.Embedding) -> torch.Tensor:
            return emb.weight if ids is None else self._rows(emb, ids)

        parts = [self._id_part(ids)]
        for m in self.cfg.modalities:
            parts.append(self.modality_proj[m](lookup(self.modality_tables[m])))
        return parts

    def _rows(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """``emb(ids)``, with a sparse gradient when :attr:`sparse_grads`."""
        return nn.functional.embedding(ids, emb.weight, emb.padding_idx, sparse=self.sparse_grads)

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The fusion of ``parts`` (the first alone when it is the only one)."""
        return parts[0] if len(parts) == 1 else FUSIONS[self.cfg.fusion].combine(self, parts)

    def _fuse(self, ids: torch.Tensor | None) -> torch.Tensor:
        """Fused representations of ``ids`` (any shape) or of the whole catalogue when ``ids`` is None."""
        return self._combine(self._parts(ids))

    @property
    def tied(self) -> bool:
        """True when the fused representations also score the catalogue (``output="fused"``)."""
        return self.cfg.output == "fused"

    def item_representations(self) -> torch.Tensor:
        """(N+1, H) output embeddings that score the catalogue: the fused representations (tied), the ID
        embeddings (``output="id"``) or those plus the projected frozen teacher vectors (``id_teacher``); row 0
        (padding) is never ranked by the evaluator."""
        return self.output_vectors(None)

    def output_vectors(self, ids: torch.Tensor | None) -> torch.Tensor:
        """The rows of :meth:`item_representations` for ``ids`` (any shape), computed for those ids only; the
        whole catalogue when ``ids`` is None."""
        if self.tied:
            return self._fuse(ids)
        out = self._id_part(ids)
        for m in self.output_proj:
            frozen = getattr(self, f"frozen_teacher_{m}")
            out = out + self.output_proj[m](frozen if ids is None else frozen[ids])
        return out

    def input_table(self, items: torch.Tensor) -> torch.Tensor | None:
        """The (N+1, H) table :meth:`encode` may reuse: ``items`` when tied, else None (fuse per batch); None
        too for a backbone that reads the unfused parts (``session_graph``), which looks its ids up itself."""
        takes_parts = getattr(self.backbone, "takes_parts", False)
        return items if self.tied and not takes_parts else None

    # ------------------------------------------------------------------ sequence side
    def encode(self, seq: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, H) of a left-padded item sequence (B, L); input dropout is the backbone's.

        ``items`` (N+1, H), the fused representations of every item, may be passed to reuse one
        :meth:`item_representations` call per step of a tied model (see :meth:`input_table`). A backbone that
        ``takes_parts`` (``session_graph``) gets the unfused parts and the fusion instead, and ignores ``items``.
        """
        if getattr(self.backbone, "takes_parts", False):
            return self.backbone(self._parts(seq), seq, self._combine)
        pad = seq == 0
        x = items[seq] if items is not None else self._fuse(seq)  # (B, L, H)
        return self.backbone(x, pad)

    def logit_factors(self, hidden: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sides whose product ``a @ b.T`` are the logits: ``(hidden, items)`` for ``scoring="dot"``;
        for ``"cos"`` both rows L2-normalised and the hidden side divided by the temperature, so a logit is
        cos(h, e) / temperature (the padding row, all zeros, stays zero). The training loss and every scorer
        go through here, so they rank alike."""
        return self._user_factor(hidden), self._item_factor(items)

    def _user_factor(self, hidden: torch.Tensor) -> torch.Tensor:
        """The user side of :meth:`logit_factors`."""
        if self.cfg.scoring == "dot":
            return hidden
        return (nn.functional.normalize(hidden.float(), dim=-1) / self.cfg.temperature).to(hidden.dtype)

    def _item_factor(self, items: torch.Tensor) -> torch.Tensor:
        """The item side of :meth:`logit_factors`."""
        if self.cfg.scoring == "dot":
            return items
        return nn.functional.normalize(items.float(), dim=-1).to(items.dtype)

    def full_scores(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item: (..., H) -> (..., N+1), one matmul against the whole catalogue."""
        items = self.item_representations() if items is None else items
        h, e = self.logit_factors(hidden, items)
        return h @ e.T

    def user_states(
        self, seq: torch.Tensor, chunk: int = 256, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state at the last position of left-padded inputs (B, L), and the inputs' window (their
        last ``max_len`` items, (B, min(L, max_len))), for :meth:`query_side`.

        Rows are encoded in chunks of similar length with all-padding columns dropped; exact, because the
        encoders do not depend on left padding, and several times faster on short-sequence data. ``items``:
        :meth:`item_representations` computed once by a caller that scores many batches with fixed weights
        (a served model), instead of at every call.
        """
        items = self.item_representations() if items is None else items
        table = self.input_table(items)
        seq = seq[:, -self.cfg.max_len :]
        order = torch.argsort((seq != 0).sum(1), stable=True)
        h = items.new_empty(seq.shape[0], items.shape[1])
        for rows in order.split(chunk):
            sub = seq[rows]
            longest = max(1, int((sub != 0).sum(1).max()))
            h[rows] = self.encode(sub[:, -longest:], table)[:, -1]
        return h, seq

    def item_side(self, items: torch.Tensor, prior: bool | None = None) -> ItemSide:
        """The catalogue side of the logits for ``items`` (:meth:`item_representations`): :meth:`logit_factors`'
        item rows, plus, with the last-item prior (``prior``, default: when the model's weight is not 0; always
        with ``cfg.prior_in_training``), one block per modality of the L2-normalised table (:meth:`unit_rows`)
        and the covariance that scales the post-hoc weight."""
        keys = self._item_factor(items)
        posthoc = self.cfg.last_item_prior > 0 if prior is None else prior
        if not (posthoc or self.cfg.prior_in_training > 0) or not self.cfg.modalities:
            return ItemSide(keys, None)
        rows = keys[1:].float()
        centred = rows - rows.mean(0)
        cov = centred.T @ centred / max(1, rows.shape[0] - 1)
        return ItemSide(torch.cat([keys.float(), *self.unit_rows()], -1).to(keys.dtype), cov)

    def query_side(
        self, hidden: torch.Tensor, recent: torch.Tensor, side: ItemSide, weight: float | None = None
    ) -> torch.Tensor:
        """The user side (B, D) of the logits, so that ``query_side(...) @ side.keys.T`` are the scores.

        :meth:`logit_factors`' user rows ``a``; with the prior blocks, each modality's block is
        ``(p + w * s) / M * q`` with ``p`` the trained-in scale (``cfg.prior_in_training``), ``s = sqrt(a^T Cov
        a)``, the std of the user's logits over items 1..N, and ``q`` the recency-weighted mean of the unit rows
        of ``recent`` ((B, L) left-padded ids, or (B,) last items; :meth:`recency_mix`), so a logit is
        ``a.b_j + (p + w * std) * mean_m <q_m, u_m[j]>`` (``weight``: default the model's).
        """
        a = self._user_factor(hidden)
        if side.cov is None:
            return a
        w = self.cfg.last_item_prior if weight is None else weight
        std = ((a.float() @ side.cov) * a.float()).sum(-1).clamp_min(0).sqrt()  # (B,)
        scale = ((self.cfg.prior_in_training + w * std) / len(self.cfg.modalities))[:, None]
        h, d = a.shape[-1], self.cfg.modality_dim
        units = [side.keys[:, h + k * d : h + (k + 1) * d] for k in range(len(self.cfg.modalities))]
        blocks = [scale * q for q in self.recency_mix(recent.reshape(len(a), -1), units)]
        return torch.cat([a.float(), *blocks], -1).to(a.dtype)

    def user_scores(
        self, seq: torch.Tensor, chunk: int = 256, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-item scores (B, N+1) of left-padded inputs (B, L): :meth:`user_states` scored through
        :meth:`query_side` and :meth:`item_side` (the last-item prior included when the model has one), with
        the input's items at ``-inf`` when the model excludes them (``cfg.exclude_seen``)."""
        return self.scorer(chunk, items)(seq)

    def scorer(
        self, chunk: int = 256, items: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`user_scores` with the catalogue side (the item representations, the prior's blocks and
        covariance) computed once, for callers that score many batches with fixed weights (validation,
        evaluation; on Beauty that side is about 5 % of the time of a 1,024-user batch)."""
        items = self.item_representations() if items is None else items
        side = self.item_side(items)

        def scores(seq: torch.Tensor) -> torch.Tensor:
            hidden, recent = self.user_states(seq, chunk, items)
            out = self.query_side(hidden, recent, side) @ side.keys.T
            self.add_transition_prior_(out, recent)
            if self.cfg.exclude_seen:
                out.scatter_(1, recent, float("-inf"))  # column 0 (padding) is never ranked anyway
            return out

        return scores

    # ------------------------------------------------------------------ distillation heads
    def modality_vectors(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        """The trainable modality embeddings m_i of ``ids``."""
        return self._rows(self.modality_tables[modality], ids)

    def holistic_student_scores(
        self,
        modality: str,
        i: torch.Tensor,
        j: torch.Tensor,
        score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s(i, j) = ξ(P m_i, P m_j) for pairs of ids, with ξ given as ``score_fn(a, b) -> (P,)``.

        With ``kd_projection="item"`` the student side is the items' output embeddings (the rows of
        :meth:`item_representations` that score the catalogue), whatever the modality: distillation then
        shapes the representation that ranks, not a table behind a free map. ``items``, the step's
        :meth:`item_representations` when the caller has them, are then indexed instead of computing the rows
        of ``i`` and ``j`` again (the same values; cheaper when the pairs name more ids than the catalogue has).
        """
        if self.cfg.kd_projection == "item":
            if items is not None:
                return score_fn(items[i], items[j])
            return score_fn(self.output_vectors(i), self.output_vectors(j))
        a, b = self.modality_vectors(modality, i), self.modality_vectors(modality, j)
        if modality in self.kd_proj:
            p = self.kd_proj[modality]
            a, b = p(a), p(b)
        return score_fn(a, b)

    def code_logits(self, modality: str, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Logits of the dissected-correlation code of each pair: (P, K), or (P, D, K) with ``code_groups``
        D (one code per sub-vector)."""
        return self.code_heads[modality](
            self.modality_vectors(modality, i), self.modality_vectors(modality, j)
        )
