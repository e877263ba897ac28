"""The post-hoc scoring choices of a trained student, made on validation once training is over: the last-item
prior's weight, whether it excludes the items of its input, and the transition prior's weight.

The trained student encodes each validation batch once; each candidate (weight w, exclude) scores it through
:meth:`Student.query_side` (its logits + w x their std x the modality tables' cosine to the input's recent
items), with the input's items at -inf when excluded, as :meth:`Student.user_scores` would. The candidate with
the best validation NDCG@10 wins; ties go to the smaller weight and to not excluding, so w = 0 and keeping the
items are the choice when nothing helps. Under history masking the history is out of the ranking already (all
but a target that repeats an item, which excluding would lose), so ``auto`` does not try it there.

Then the transition prior's weight, on top of those choices, the same way: each batch encoded and scored once,
the sparse transition term added for each candidate weight (:func:`transition_ranks`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from pipeline.evaluation.cases import EvalCases
from pipeline.evaluation.metrics import metrics_from_ranks, rank_targets
from pipeline.models import Student
from pipeline.models.transitions import TransitionTable
from pipeline.training.validation import SELECT_METRIC

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import EvalParams
    from pipeline.config.train import TrainParams
    from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

Choice = tuple[float, bool]  # (prior weight, exclude the input's items)
C = TypeVar("C", bound=Hashable)  # a candidate post-hoc setting


def _candidate_ranks(
    cases: EvalCases,
    candidates: Sequence[C],
    mask_history: bool,
    batch_size: int,
    device: torch.device,
    batch_scores: Callable[[torch.Tensor], Iterator[tuple[C, torch.Tensor]]],
) -> dict[C, np.ndarray]:
    """The (C,) validation ranks of each candidate: ``batch_scores(inputs)`` yields (candidate, (B, N+1)
    scores) for one batch of inputs, so the work every candidate shares is done once per batch."""
    n = len(cases)
    ranks = {c: np.empty(n, dtype=np.int64) for c in candidates}
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            lo, hi = int(cases.hist_indptr[s]), int(cases.hist_indptr[e])
            for c, scores in batch_scores(cases.inputs[s:e].to(device)):
                r = rank_targets(
                    scores,
                    cases.targets[s:e].to(device),
                    cases.hist_indptr[s : e + 1] - lo,
                    cases.hist_items[lo:hi],
                    mask_history,
                )
                ranks[c][s:e] = r.cpu().numpy()
    return ranks


def choose_prior_weight(
    model: Student,
    cases: EvalCases,
    weights: Sequence[float],
    ks: Sequence[int],
    mask_history: bool,
    batch_size: int,
    device: torch.device,
    exclude: Sequence[bool] = (False,),
) -> tuple[Choice, dict[Choice, dict[str, float]]]:
    """Validation metrics of ``model`` for each (weight, exclude) candidate; returns (the chosen candidate,
    metrics by candidate). ``exclude``: the exclusion settings to try.

    ``model`` is not changed (the caller stores the choice in its config).
    """
    candidates = [
        (float(w), bool(x)) for x in sorted(set(exclude)) for w in sorted({float(w) for w in weights})
    ]
    model.eval()
    with torch.inference_mode():
        items = model.item_representations()
        side = model.item_side(items, prior=any(w > 0 for w, _ in candidates))

    def batch_scores(inputs: torch.Tensor) -> Iterator[tuple[Choice, torch.Tensor]]:
        hidden, recent = model.user_states(inputs, items=items)
        # the logits are linear in w: two products serve every candidate (one without the prior's blocks)
        base = model.query_side(hidden, recent, side, weight=0.0) @ side.keys.T
        if side.cov is not None:
            per_w = model.query_side(hidden, recent, side, weight=1.0) @ side.keys.T - base
        for w, excluded in candidates:
            scores = base if side.cov is None else base + w * per_w
            if excluded:  # a copy, not in place: base serves the next candidate
                scores = scores.scatter(1, recent, float("-inf"))
            yield (w, excluded), scores

    ranks = _candidate_ranks(cases, candidates, mask_history, batch_size, device, batch_scores)
    metrics = {c: metrics_from_ranks(ranks[c], ks) for c in candidates}
    best = max(candidates, key=lambda c: (metrics[c][SELECT_METRIC], -c[0], not c[1]))
    return best, metrics


def set_prior_weight(
    model: Student,
    cases: EvalCases,
    train_params: TrainParams,
    eval_params: EvalParams,
    device: torch.device,
    tracker: Tracker | None = None,
) -> dict[str, float] | None:
    """Choose the prior's weight (from ``train.last_item_prior``; none when the model has no modality) and the
    exclusion (``train.exclude_seen``: auto = by validation when it can matter, i.e. without history masking;
    never; always) on ``cases`` (validation), store them in ``model.cfg``, log them to ``tracker`` when given; the
    choice's validation metrics, or None when there is nothing to choose (the model is left as it is)."""
    ev, weights = eval_params, list(train_params.last_item_prior)
    weights = weights if model.cfg.modalities and weights else [0.0]
    exclude = {"always": [True], "never": [False]}.get(train_params.exclude_seen, [False, True])
    if ev.mask_history and len(exclude) > 1:
        exclude = [False]  # auto: masking already removes the history, so keep the items and rank once
    if weights == [0.0] and exclude == [False]:
        return None  # nothing to choose
    (w, excluded), by = choose_prior_weight(
        model, cases, weights, ev.ks, ev.mask_history, ev.batch_size, device, exclude
    )
    model.cfg = dataclasses.replace(model.cfg, last_item_prior=w, exclude_seen=excluded)
    shown = ", ".join(f"{k:g}{' excluding' if x else ''}: {m[SELECT_METRIC]:.4f}" for (k, x), m in by.items())
    log.info(
        "last-item prior: weight %g%s (valid %s: %s)",
        w,
        ", the input's items excluded" if excluded else "",
        SELECT_METRIC,
        shown,
    )
    if tracker is not None:
        tracker.log_metrics(
            {
                "last_item_prior": w,
                "exclude_seen": float(excluded),
                **{f"prior_valid_{k}": v for k, v in by[(w, excluded)].items()},
            }
        )
    return by[(w, excluded)]


def transition_ranks(
    model: Student,
    cases: EvalCases,
    weights: Sequence[float],
    mask_history: bool,
    batch_size: int,
    device: torch.device,
) -> dict[float, np.ndarray]:
    """The validation ranks of ``model`` with each transition weight in ``weights`` (its other post-hoc choices
    as they are), in one pass: each batch is encoded and scored once; only the transition prior, a sparse
    term, and the ranking are repeated per weight. The scores are those of :meth:`Student.scorer` with the
    model's ``transition_prior`` set to each weight."""
    model.eval()
    with torch.inference_mode():
        items = model.item_representations()
        side = model.item_side(items)

    def batch_scores(inputs: torch.Tensor) -> Iterator[tuple[float, torch.Tensor]]:
        hidden, recent = model.user_states(inputs, items=items)
        base = model.query_side(hidden, recent, side) @ side.keys.T
        for w in weights:
            scores = model.add_transition_prior_(base.clone(), recent, weight=float(w))
            if model.cfg.exclude_seen:
                scores.scatter_(1, recent, float("-inf"))
            yield float(w), scores

    candidates = [float(w) for w in weights]
    return _candidate_ranks(cases, candidates, mask_history, batch_size, device, batch_scores)


def set_transition_weight(
    model: Student,
    cases: EvalCases,
    table: TransitionTable,
    weights: Sequence[float],
    eval_params: EvalParams,
    device: torch.device,
    tracker: Tracker | None = None,
) -> dict[str, float] | None:
    """Choose the transition prior's weight from ``weights`` on ``cases`` (validation), on top of the model's
    other post-hoc choices (:func:`transition_ranks`); keep ``table`` with the model when the weight is not 0.
    The choice's validation metrics, or None when there is nothing to choose."""
    if not weights or all(w == 0 for w in weights):
        return None
    ev = eval_params
    model.attach_transitions(table)
    ranks = transition_ranks(
        model, cases, sorted({float(w) for w in weights}), ev.mask_history, ev.batch_size, device
    )
    by = {w: metrics_from_ranks(r, ev.ks) for w, r in ranks.items()}
    best = max(by, key=lambda w: (by[w][SELECT_METRIC], -w))
    model.cfg = dataclasses.replace(model.cfg, transition_prior=best)
    if best == 0:
        model.detach_transitions()
    log.info(
        "transition prior: weight %g (valid %s: %s)",
        best,
        SELECT_METRIC,
        ", ".join(f"{w:g}: {m[SELECT_METRIC]:.4f}" for w, m in by.items()),
    )
    if tracker is not None:
        tracker.log_metrics(
            {"transition_prior": best, **{f"transition_valid_{k}": v for k, v in by[best].items()}}
        )
    return by[best]


def make_posthoc_choices(
    model: Student,
    cases: EvalCases,
    train_params: TrainParams,
    eval_params: EvalParams,
    device: torch.device,
    sequences_path: Path,
    tracker: Tracker | None = None,
) -> dict[str, float] | None:
    """Every choice made on validation after training: the last-item prior and the exclusion
    (:func:`set_prior_weight`), then the transition prior over ``sequences_path``'s training prefixes
    (:func:`set_transition_weight`); the last choice's validation metrics, or None when nothing was chosen."""
    chosen = set_prior_weight(model, cases, train_params, eval_params, device, tracker)
    if any(w > 0 for w in train_params.transition_prior):
        from pipeline.artifacts.sequences import read_sequences
        from pipeline.models.transitions import transition_table

        window, decay = train_params.transition_window, train_params.transition_decay
        table = transition_table(read_sequences(sequences_path), model.num_items, window, decay)
        weights = train_params.transition_prior
        chosen = set_transition_weight(model, cases, table, weights, eval_params, device, tracker) or chosen
    return chosen
