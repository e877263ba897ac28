"""The last-item prior's weight, chosen on validation after training."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluation.cases import EvalCases
from pipeline.models import Student, StudentConfig
from pipeline.training.prior import choose_prior_weight


def test_the_weight_that_ranks_the_table_neighbour_first_wins_and_ties_go_to_the_smaller() -> None:
    torch.manual_seed(0)
    cfg = StudentConfig(
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
    w, by_weight = choose_prior_weight(model, cases, [0.0, 1000.0, 2000.0], **kw)
    assert by_weight[1000.0]["ndcg_at_10"] == 1.0 and by_weight[2000.0]["ndcg_at_10"] == 1.0
    assert by_weight[0.0]["ndcg_at_10"] < 1.0 and by_weight[0.0]["hr_at_1"] < 0.5
    assert w == 1000.0  # the best, and the smaller of the two that tie
    assert model.cfg.last_item_prior == 0.0  # the caller stores the weight
    w, _ = choose_prior_weight(model, cases, [0.0], **kw)
    assert w == 0.0


def test_a_negative_prior_weight_is_refused_naming_the_key(base_params) -> None:
    import pytest

    from pipeline.config import ConfigError, with_overrides

    assert with_overrides(base_params, {"train.last_item_prior": []}).train.last_item_prior == []
    with pytest.raises(ConfigError, match=r"train\.last_item_prior.*\[0, 100\]"):
        with_overrides(base_params, {"train.last_item_prior": [0, -1]})
