"""The loss of a training step: the next-item CE and the distillation terms (KD pairs of a batch, teacher
targets), weighted.

Kept apart from the loop so the loop reads at a glance, and so the diagnostics and ``benchmarks/bench_step.py``
evaluate the same terms as training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from pipeline.config import KDParams, ParamsView, TrainParams
from pipeline.models import Student
from pipeline.supervision.scores import TeacherCorrelation
from pipeline.training.batches import (
    catalogue_pairs,
    neighbour_pairs,
    position_weight,
    sequence_pairs,
    within_sequence_pairs,
)
from pipeline.training.distributed import DistInfo, rank_rows
from pipeline.training.losses import code_loss, frobenius_holistic_loss, holistic_loss, next_item_loss

if TYPE_CHECKING:
    from pipeline.training.setup import Training


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
) -> dict[str, torch.Tensor]:
    """Unweighted distillation terms ``hol_<m>`` and ``code_<m>`` of one batch, per modality.

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
    terms: dict[str, torch.Tensor] = {}
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
                terms[f"hol_{m}"] = frobenius_holistic_loss(s, t_scores, kd.tau, pr, pw, n_rows)
            else:
                terms[f"hol_{m}"] = _share(holistic_loss(s, t_scores, kd.tau), len(i), n_pairs, dist_info)
        if want_codes:
            cl = code_loss(model.code_logits(m, i, j), t_codes)
            terms[f"code_{m}"] = _share(cl, len(i), n_pairs, dist_info)
    return terms


def kd_weight(name: str, kd: KDParams) -> float:
    """The weight of a term named by :func:`kd_terms` (``hol_<m>`` or ``code_<m>``)."""
    return kd.holistic_weight if name.startswith("hol_") else kd.code_weight


def batch_loss(
    t: Training,
    train: TrainParams | ParamsView,
    seq: torch.Tensor,
    generator: torch.Generator,
    dist_info: DistInfo,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of one step and its unweighted terms (``ce``, ``hol_<m>``, ``code_<m>``).

    ``seq`` (B, T+1) is the whole batch; under DDP this rank scores its rows (:func:`rank_rows`) and the
    distillation terms their share. Call it under the step's autocast.
    """
    model = t.model
    part = rank_rows(seq, dist_info)  # this rank's rows (all of them in one process)
    inputs, targets = part[:, :-1], part[:, 1:]
    items = model.item_representations()  # (N+1, H): what scores the catalogue
    keep = targets != 0
    if len(part):
        hidden = t.fwd_model.encode(inputs, model.input_table(items))  # (B, T, H)
        negatives = train.num_negatives if train.loss == "sampled_softmax" else 0
        ce = next_item_loss(*model.logit_factors(hidden[keep], items), targets[keep], negatives)
    else:  # a batch with fewer rows than ranks leaves this rank none
        ce = items.new_zeros((), dtype=torch.float32)
    # every position weighs the same, whatever the length bucket of its batch; under DDP a rank's positions
    # are its share, and the ranks' gradients sum to the whole batch's
    terms = {"ce": ce * position_weight(keep.sum(), t.mean_targets)}
    loss = terms["ce"]
    if t.kd_on:
        kd = kd_terms(model, t.teachers, seq, train.kd, t.score_fn, generator, dist_info, t.neighbours, items)
        terms.update(kd)
        for name, term in kd.items():
            loss = loss + kd_weight(name, train.kd) * term
    return loss, terms
