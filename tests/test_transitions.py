"""The transition prior's table and scores: known answers on a hand-made catalogue."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences
from pipeline.training.transitions import add_transition_scores, transition_table


def _seqs() -> Sequences:
    # user 0: 1 2 3 | valid 4 | test 1 ; user 1: 1 2 | 3 | 4 ; user 2: 2 3 1 | 2 | 4
    return Sequences.from_lists(
        [[1, 2, 3, 4, 1], [1, 2, 3, 4], [2, 3, 1, 2, 4]], train_end=[3, 2, 3], valid_end=[4, 3, 4]
    )


def test_table_counts_training_steps_only_and_normalises_by_the_degrees() -> None:
    t = transition_table(_seqs(), num_items=4)
    dense = torch.zeros(5, 5)
    for i in range(5):
        for e in range(int(t.indptr[i]), int(t.indptr[i + 1])):
            dense[i, t.indices[e]] = t.values[e]
    # training steps: 1->2 (users 0, 1), 2->3 (users 0, 2), 3->1 (user 2); 3->4, 4->1, 2->4 are held out
    c = {(1, 2): 2, (2, 3): 2, (3, 1): 1}
    out = {1: 2, 2: 2, 3: 1}
    into = {2: 2, 3: 2, 1: 1}
    expected = torch.zeros(5, 5)
    for (i, j), n in c.items():
        expected[i, j] = n / np.sqrt(out[i] * into[j])
    torch.testing.assert_close(dense, expected)
    assert t.num_items == 4 and t.indptr.tolist() == [0, 0, 1, 2, 3, 3]


def test_scores_add_the_recency_weighted_rows_scaled_per_user() -> None:
    t = transition_table(_seqs(), num_items=4)
    scores = torch.zeros(2, 5)
    cols = torch.tensor([[0, 1, 2], [3, 3, 0]])  # padding, repeated items
    mix = torch.tensor([[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]])
    add_transition_scores(scores, t, cols, mix, torch.tensor([2.0, 4.0]))
    expected = torch.zeros(2, 5)
    expected[0, 2] = 2.0 * 0.25 * 1.0  # T[1, 2] = 2 / sqrt(2 * 2)
    expected[0, 3] = 2.0 * 0.75 * 1.0  # T[2, 3] = 2 / sqrt(2 * 2)
    expected[1, 1] = 4.0 * (0.5 + 0.5) * 1.0  # T[3, 1] = 1 / sqrt(1 * 1), twice
    torch.testing.assert_close(scores, expected)
    empty = torch.zeros(1, 5)
    add_transition_scores(empty, t, torch.tensor([[0, 4]]), torch.tensor([[0.5, 0.5]]), torch.ones(1))
    assert empty.abs().sum() == 0  # item 4 is never followed in training
