"""The last-item prior's weight, chosen on validation after training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.evaluation.cases import EvalCases
from pipeline.models import Student, StudentConfig
from pipeline.training.prior import choose_prior_weight


def test_the_weight_that_ranks_the_table_neighbour_first_wins_and_ties_go_to_the_smaller() -> None:
    torch.manual_seed(0)
    cfg = StudentConfig(
        prior_decay=0.0,  # the last item alone
        num_items=30,
        hidden=16,
        layers=1,
        heads=2,
        dropout=0.0,
        max_len=6,
        modalities=("text",),
        modality_dim=8,
        num_codes=0,
    )
    model = Student(cfg, {"text": torch.randn(31, 8)}).eval()
    unit = torch.nn.functional.normalize(model.modality_tables["text"].weight.detach(), dim=-1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    cos[:, 0] = -2
    last = torch.arange(1, 31)
    inputs = torch.zeros(30, 6, dtype=torch.long)
    inputs[:, -2], inputs[:, -1] = (last % 30) + 1, last
    targets = cos[last].argmax(1)  # each case's target: the last item's nearest table neighbour
    history = [[int(inputs[c, -2]), int(last[c])] for c in range(30)]
    cases = EvalCases(
        users=np.arange(30),
        inputs=inputs,
        targets=targets,
        hist_indptr=np.arange(0, 61, 2),
        hist_items=np.array([i for h in history for i in h]),
    )
    kw = dict(ks=[1, 10], mask_history=True, batch_size=7, device=torch.device("cpu"))
    (w, excluded), by = choose_prior_weight(model, cases, [0.0, 1000.0, 2000.0], **kw)
    assert by[(1000.0, False)]["ndcg_at_10"] == 1.0 and by[(2000.0, False)]["ndcg_at_10"] == 1.0
    assert by[(0.0, False)]["ndcg_at_10"] < 1.0 and by[(0.0, False)]["hr_at_1"] < 0.5
    assert (w, excluded) == (1000.0, False)  # the best, and the smaller of the two that tie
    assert model.cfg.last_item_prior == 0.0  # the caller stores the weight
    (w, _), _ = choose_prior_weight(model, cases, [0.0], **kw)
    assert w == 0.0


def test_a_negative_prior_weight_is_refused_naming_the_key(base_params) -> None:
    from pipeline.config import ConfigError, with_overrides

    assert with_overrides(base_params, {"train.last_item_prior": []}).train.last_item_prior == []
    with pytest.raises(ConfigError, match=r"train\.last_item_prior.*\[0, 100\]"):
        with_overrides(base_params, {"train.last_item_prior": [0, -1]})


def _case_student(**kw) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(num_items=12, hidden=8, layers=1, heads=2, dropout=0.0, max_len=4, num_codes=0, **kw)
    return Student(cfg).eval()


def test_excluding_the_input_is_chosen_only_where_it_can_matter_and_helps(base_params) -> None:
    """Every target is the item its user saw last: excluding the input must lose it; with unseen targets
    excluding can only move them up; under masking it is never tried."""
    from pipeline.config import with_overrides
    from pipeline.tracking import Tracker
    from pipeline.training.prior import set_prior_weight

    model = _case_student()
    inputs = torch.tensor([[0, 0, 2, 5], [0, 3, 4, 7], [0, 0, 0, 9]])
    targets = inputs[:, -1].clone()
    hist = [[2, 5], [3, 4, 7], [9]]
    cases = EvalCases(
        users=np.arange(3),
        inputs=inputs,
        targets=targets,
        hist_indptr=np.cumsum([0] + [len(h) for h in hist]),
        hist_items=np.array([i for h in hist for i in h]),
    )
    kw = dict(ks=[1, 10, 12], mask_history=False, batch_size=2, device=torch.device("cpu"))
    choice, by = choose_prior_weight(model, cases, [0.0], exclude=(False, True), **kw)
    assert (
        by[(0.0, True)]["hr_at_12"] == 0.0
    )  # an excluded item is never recommended, even at the catalogue's size
    assert by[(0.0, False)]["hr_at_12"] == 1.0
    assert choice == (0.0, False)  # its targets are the seen items: excluding them loses every one
    unseen = torch.tensor([1, 1, 1])
    cases = dataclasses.replace(cases, targets=unseen)
    (_, excluded), by = choose_prior_weight(model, cases, [0.0], exclude=(False, True), **kw)
    for m in ("hr_at_1", "ndcg_at_12"):
        assert by[(0.0, True)][m] >= by[(0.0, False)][m]
    assert excluded == (by[(0.0, True)]["ndcg_at_10"] > by[(0.0, False)]["ndcg_at_10"])
    params = with_overrides(base_params, {"train.last_item_prior": [], "train.exclude_seen": "auto"})
    masked = with_overrides(base_params, {"eval.mask_history": True}).eval
    assert (
        set_prior_weight(model, cases, params.train, masked, torch.device("cpu"), Tracker(None, None)) is None
    )
    unmasked = with_overrides(base_params, {"eval.mask_history": False}).eval
    got = set_prior_weight(model, cases, params.train, unmasked, torch.device("cpu"), Tracker(None, None))
    assert got is not None and model.cfg.exclude_seen == excluded
