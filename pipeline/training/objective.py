"""The loss of a training step: the next-item CE and the distillation terms (KD pairs of a batch, teacher
targets), weighted.

Kept apart from the loop so the loop reads at a glance, and so the diagnostics and ``benchmarks/bench_step.py``
evaluate the same terms as training.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pipeline.config import KDParams, ParamsView, TrainParams
from pipeline.models import Student
from pipeline.supervision.scores import TeacherCorrelation
from pipeline.training.batches import (
    catalogue_pairs,
    future_targets,
    neighbour_pairs,
    position_weight,
    sequence_pairs,
    within_sequence_pairs,
)
from pipeline.training.distributed import DistInfo, rank_rows
from pipeline.training.losses import (
    NegativeSampler,
    code_loss,
    frobenius_holistic_loss,
    holistic_loss,
    next_item_loss,
)

if TYPE_CHECKING:
    from pipeline.training.setup import Training


@dataclass
class LossTerms:
    """The unweighted loss terms of one step: the next-item CE and, per modality, the holistic and code
    distillation terms (a modality is absent from ``holistic`` / ``code`` when that term's weight is 0)."""

    ce: torch.Tensor
    holistic: dict[str, torch.Tensor] = field(default_factory=dict)
    code: dict[str, torch.Tensor] = field(default_factory=dict)

    def weighted_kd(self, kd: KDParams) -> Iterator[tuple[str, float, torch.Tensor]]:
        """``(column name, weight, term)`` of each distillation term, modality by modality (holistic, code)."""
        for m in dict.fromkeys([*self.holistic, *self.code]):
            if m in self.holistic:
                yield f"hol_{m}", kd.holistic_weight, self.holistic[m]
            if m in self.code:
                yield f"code_{m}", kd.code_weight, self.code[m]

    def total(self, kd: KDParams) -> torch.Tensor:
        """The step's loss: ``ce + sum_m (holistic_weight * holistic[m] + code_weight * code[m])``."""
        return sum((w * term for _, w, term in self.weighted_kd(kd)), start=self.ce)

    def columns(self, kd: KDParams) -> dict[str, torch.Tensor]:
        """The terms by their train_curve.csv column: ``ce``, ``hol_<m>``, ``code_<m>``."""
        return {"ce": self.ce, **{name: term for name, _, term in self.weighted_kd(kd)}}

    def weights(self, kd: KDParams) -> dict[str, float]:
        """The weight of each distillation column (the CE weighs 1)."""
        return {name: w for name, w, _ in self.weighted_kd(kd)}


def _share(term: torch.Tensor, n_here: int, n_all: int, dist_info: DistInfo) -> torch.Tensor:
    """A rank's mean loss over its ``n_here`` of the batch's ``n_all`` pairs, weighted by ``n_here / n_all``
    so the ranks' shares sum to the single-process mean (``term`` as is in one process)."""
    if not dist_info.distributed:
        return term
    return term * (n_here / n_all) if n_all else term * 0.0


def kd_terms(
    model: Student,
    teachers: dict[str, TeacherCorrelation],
    seq: torch.Tensor,
    kd: KDParams,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    dist_info: DistInfo,
    neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    items: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Unweighted distillation terms of one batch: ``(holistic, code)``, each modality -> term.

    Args:
        model: the student.
        teachers: per modality, the teacher correlations and codebook.
        seq: (B, T+1) the whole batch (every rank passes the whole batch, so every rank consumes
            ``generator`` alike and cuts the same pairs; each then takes its share).
        kd: the ``train.kd`` params (weights, ``holistic_loss``, ``max_pairs``, ``neighbour_pairs``,
            ``random_pairs``, ``tau``).
        score_fn: ξ for pairs, ``score_fn(a, b) -> (P,)``.
        generator: the epoch's CPU generator.
        dist_info: the DDP set-up (one process: everything is this rank's).
        neighbours: per modality, the dense teacher top-k lists for ``kd.neighbour_pairs``.
        items: the step's ``model.item_representations()``, reused by the ``item`` projection.

    With ``holistic_loss: frobenius`` the pairs are per sequence (:func:`sequence_pairs`) and a rank's share
    is its sequences ``rank::world_size``; with ``mse`` they are the batch's unique pairs and a rank's share
    is every world_size-th pair. Teacher codes are (P,) for a k-means codebook and (P, D) for a vq one; both
    are sliced along the pairs (dim 0) alike.
    """
    holistic: dict[str, torch.Tensor] = {}
    code: dict[str, torch.Tensor] = {}
    per_sequence = kd.holistic_loss == "frobenius"
    if per_sequence:
        seq_i, seq_j, rows, weight = sequence_pairs(seq, kd.max_pairs, generator)
    else:
        seq_i, seq_j = within_sequence_pairs(seq, kd.max_pairs, generator)
    if kd.random_pairs > 0:
        ci, cj, crows = catalogue_pairs(seq, kd.random_pairs, model.num_items, generator)
        seq_i, seq_j = torch.cat([seq_i, ci]), torch.cat([seq_j, cj])
        if per_sequence:
            rows, weight = (
                torch.cat([rows, crows]),
                torch.cat([weight, torch.ones_like(ci, dtype=weight.dtype)]),
            )
    want_codes = kd.code_weight > 0 and model.cfg.num_codes > 0
    for m in teachers:
        pi, pj = seq_i, seq_j
        if neighbours and m in neighbours:
            ni, nj = neighbour_pairs(seq, *neighbours[m], kd.neighbour_pairs, generator)
            pi, pj = torch.cat([pi, ni]), torch.cat([pj, nj])
        t_scores, t_codes, ok = teachers[m](pi, pj)
        if per_sequence:
            pr = rows[ok]
            n_rows = int(torch.unique(pr).numel())  # sequences with at least one pair
            mine = pr % dist_info.world_size == dist_info.rank if dist_info.distributed else slice(None)
            i, j, t_scores, t_codes, pr, pw = (x[ok][mine] for x in (pi, pj, t_scores, t_codes, rows, weight))
            n_pairs = int(ok.sum())
        else:
            i, j, t_scores, t_codes = (rank_rows(x[ok], dist_info) for x in (pi, pj, t_scores, t_codes))
            n_pairs = int(ok.sum()) if dist_info.distributed else len(i)
        if kd.holistic_weight > 0:
            s = model.holistic_student_scores(m, i, j, score_fn, items)
            if per_sequence:
                holistic[m] = frobenius_holistic_loss(s, t_scores, kd.tau, pr, pw, n_rows)
            else:
                holistic[m] = _share(holistic_loss(s, t_scores, kd.tau), len(i), n_pairs, dist_info)
        if want_codes:
            cl = code_loss(model.code_logits(m, i, j), t_codes)
            code[m] = _share(cl, len(i), n_pairs, dist_info)
    return holistic, code


#: id of a run's training-windows tensor -> (a weak reference to it, its negative samplers by params); a
#: tensor cannot key a WeakKeyDictionary (its ``==`` is elementwise)
_SAMPLERS: dict[int, tuple[weakref.ref, dict[tuple, NegativeSampler]]] = {}


def negative_sampler(t: Training, train: TrainParams | ParamsView) -> NegativeSampler:
    """The run's :class:`NegativeSampler`, built once from the training targets' counts (``t.windows``)."""
    for k in [k for k, (ref, _) in _SAMPLERS.items() if ref() is None]:  # runs that are gone
        del _SAMPLERS[k]
    ref, cache = _SAMPLERS.get(id(t.windows), (None, {}))
    if ref is None or ref() is not t.windows:
        cache = {}
        _SAMPLERS[id(t.windows)] = (weakref.ref(t.windows), cache)
    key = (train.negatives, train.num_negatives, float(train.negative_alpha), t.model.num_items)
    if key not in cache:
        targets = t.windows[:, 1:].reshape(-1)
        counts = torch.bincount(targets.cpu(), minlength=t.model.num_items + 1)
        cache[key] = NegativeSampler(counts, train.negatives, train.num_negatives, train.negative_alpha)
    return cache[key]


def batch_loss(
    t: Training,
    train: TrainParams | ParamsView,
    seq: torch.Tensor,
    generator: torch.Generator,
    dist_info: DistInfo,
) -> LossTerms:
    """The unweighted loss terms of one step (``.total(train.kd)`` is the loss).

    ``seq`` (B, T+1) is the whole batch; under DDP this rank scores its rows (:func:`rank_rows`) and the
    distillation terms their share. Call it under the step's autocast.

    With ``train.loss: sampled_softmax`` the negatives are drawn from ``generator`` for the whole batch (so
    every DDP rank scores against the same sample, and the ranks' shares add up to the single-process
    loss), and the step computes the item representations of the ids it uses only (inputs, targets,
    candidates; the distillation pairs theirs): neither the CE nor the distillation terms then grow with the
    catalogue (nor, with ``train.embedding_updates`` sparse, does the optimiser's step on the tables). With
    ``train.future_targets`` (full softmax only) each position's label is soft: its next item and the few
    after it (:func:`future_targets`); ``train.label_smoothing`` spreads a share of it over the catalogue.
    """
    model = t.model
    part = rank_rows(seq, dist_info)  # this rank's rows (all of them in one process)
    inputs, targets = part[:, :-1], part[:, 1:]
    keep = targets != 0
    items: torch.Tensor | None = None
    if train.loss == "sampled_softmax":
        cand, log_e = negative_sampler(t, train).sample(generator, seq[:, 1:])
        cand, log_e = cand.to(seq.device), log_e.to(seq.device)
        zero = seq.new_zeros(1)  # padding first, so a remapped id is 0 exactly where the input is padding
        ids, inv = torch.unique(torch.cat([zero, part.reshape(-1), cand]), return_inverse=True)
        n_seq = 1 + part.numel()
        inv_seq, inv_cand = inv[1:n_seq].reshape(part.shape), inv[n_seq:]
        if len(part):
            rows = model.output_vectors(ids)  # (K, H): the representations of the step's ids only
            table = model.input_table(rows)
            hidden = t.fwd_model.encode(inputs if table is None else inv_seq[:, :-1], table)
            ce = next_item_loss(
                *model.training_factors(hidden, inv_seq[:, :-1], keep, rows, ids),
                inv_seq[:, 1:][keep],
                (inv_cand, log_e if train.logq_correction else None),
            )
        else:  # a batch with fewer rows than ranks leaves this rank none
            ce = torch.zeros((), dtype=torch.float32, device=seq.device)
    else:
        items = model.item_representations()  # (N+1, H): what scores the catalogue
        if len(part):
            hidden = t.fwd_model.encode(inputs, model.input_table(items))  # (B, T, H)
            label, weights = targets[keep], None
            if train.future_targets > 0:  # a soft label: the next item and the few after it
                label, weights = future_targets(
                    targets, keep, train.future_targets, train.future_weight, train.future_decay
                )
            ce = next_item_loss(
                *model.training_factors(hidden, inputs, keep, items),
                label,
                weights=weights,
                smoothing=train.label_smoothing,
            )
        else:  # a batch with fewer rows than ranks leaves this rank none
            ce = items.new_zeros((), dtype=torch.float32)
    # every position weighs the same, whatever the length bucket of its batch; under DDP a rank's positions
    # are its share, and the ranks' gradients sum to the whole batch's
    terms = LossTerms(ce * position_weight(keep.sum(), t.mean_targets))
    if t.kd_on:
        terms.holistic, terms.code = kd_terms(
            model, t.teachers, seq, train.kd, t.score_fn, generator, dist_info, t.neighbours, items
        )
    return terms
