"""The transition prior's table and scores: known answers on a hand-made catalogue."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences
from pipeline.models.transitions import add_transition_scores, transition_table


def _seqs() -> Sequences:
    # user 0: 1 2 3 | valid 4 | test 1 ; user 1: 1 2 | 3 | 4 ; user 2: 2 3 1 | 2 | 4
    return Sequences.from_lists(
        [[1, 2, 3, 4, 1], [1, 2, 3, 4], [2, 3, 1, 2, 4]], train_end=[3, 2, 3], valid_end=[4, 3, 4]
    )


def _random_rows(
    n: int, users: int, lengths: tuple[int, int], seed: int
) -> tuple[list[list[int]], Sequences]:
    """``users`` random histories over items 1..n and their leave-one-out split."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, n + 1, size=int(rng.integers(*lengths))).tolist() for _ in range(users)]
    seqs = Sequences.from_lists(
        rows, train_end=[len(r) - 2 for r in rows], valid_end=[len(r) - 1 for r in rows]
    )
    return rows, seqs


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


def test_a_window_counts_later_steps_with_decayed_weights() -> None:
    t = transition_table(_seqs(), num_items=4, window=2, decay=0.5)
    dense = torch.zeros(5, 5, dtype=torch.float64)
    for i in range(5):
        for e in range(int(t.indptr[i]), int(t.indptr[i + 1])):
            dense[i, t.indices[e]] = float(t.values[e])
    # next steps as before; two apart, weight 0.5: 1 -> 3 (user 0: 1 2 3), 2 -> 1 (user 2: 2 3 1)
    c = {(1, 2): 2.0, (2, 3): 2.0, (3, 1): 1.0, (1, 3): 0.5, (2, 1): 0.5}
    out = {1: 2.5, 2: 2.5, 3: 1.0}
    into = {2: 2.0, 3: 2.5, 1: 1.5}
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for (i, j), n in c.items():
        expected[i, j] = n / np.sqrt(out[i] * into[j])
    torch.testing.assert_close(dense, expected, rtol=1e-6, atol=1e-7)
    # a window longer than every prefix counts what fits
    assert torch.equal(transition_table(_seqs(), 4, window=50, decay=0.5).values, t.values)


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


def test_the_student_adds_the_prior_in_its_scores_and_keeps_the_table_when_saved(tmp_path) -> None:
    from pipeline.models import Student, load_student
    from pipeline.models.config import StudentConfig
    from pipeline.models.persist import save_student

    torch.manual_seed(0)
    model = Student(StudentConfig(num_items=4, hidden=8, heads=2, max_len=5)).eval()
    seq = torch.tensor([[0, 0, 1, 2], [0, 3, 3, 1]])
    with torch.inference_mode():
        base = model.user_scores(seq)
    t = transition_table(_seqs(), num_items=4)
    model.attach_transitions(t)
    with torch.inference_mode():
        assert torch.equal(model.user_scores(seq), base)  # weight 0: no change
    model.cfg = dataclasses.replace(model.cfg, transition_prior=2.0)
    with torch.inference_mode():
        got = model.user_scores(seq)
    cols, mix = model._recency(seq)
    expected = add_transition_scores(base.clone(), t, cols, mix, 2.0 * base[:, 1:].std(1))
    torch.testing.assert_close(got, expected)
    assert not torch.equal(got, base)
    save_student(model, tmp_path)
    back = load_student(tmp_path)
    assert back.cfg.transition_prior == 2.0 and back.cfg.transition_entries == 3
    with torch.inference_mode():
        torch.testing.assert_close(back.user_scores(seq), got)


def test_the_weight_is_chosen_on_validation_and_the_recommender_ranks_with_it(tmp_path) -> None:
    from pipeline.config import EvalParams
    from pipeline.evaluation.cases import build_eval_cases
    from pipeline.models import Student
    from pipeline.models.config import StudentConfig
    from pipeline.recommend.topk import ItemCatalogue, Recommender
    from pipeline.training.prior import set_transition_weight

    torch.manual_seed(0)
    seqs = _seqs()
    model = Student(StudentConfig(num_items=50, hidden=8, heads=2, max_len=5)).eval()
    t = transition_table(seqs, num_items=50)  # 50 items: chance alone rarely puts a target first
    # each validation target follows its input's last item in training: 2 -> 3 and 3 -> 1
    valid = build_eval_cases([[1, 2, 3, 4], [2, 3, 1, 4]], [2, 2], [3, 3], "valid", max_len=5)
    ev = EvalParams(ks=[1, 10], batch_size=8)
    got = set_transition_weight(model, valid, t, [0.0, 100.0], ev, torch.device("cpu"))
    assert got is not None and model.cfg.transition_prior == 100.0  # T[2, 3] and T[3, 1] make the targets win
    assert got["hr_at_1"] == 1.0 and model.transitions is not None
    catalogue = ItemCatalogue(ids=[f"i{k}" for k in range(1, 51)])
    rec = Recommender(model, catalogue)
    ((top, _),) = rec.recommend([["i1", "i2"]], k=1, mask_history=True)
    assert top == ["i3"]  # b -> c, the training step, beats the random model's scores
    # a table that points away from every target: the weight 0 wins and the table is dropped
    wrong = build_eval_cases([[1, 2, 4, 3], [2, 3, 4, 1]], [2, 2], [3, 3], "valid", max_len=5)
    set_transition_weight(model, wrong, t, [0.0, 100.0], ev, torch.device("cpu"))
    assert model.cfg.transition_prior == 0.0 and model.transitions is None


def test_a_flat_index_reranked_with_the_transition_candidates_gives_the_exact_top_k() -> None:
    from pipeline.models import Student
    from pipeline.models.config import StudentConfig
    from pipeline.recommend.retrieval import IndexSpec
    from pipeline.recommend.topk import ItemCatalogue, Recommender

    torch.manual_seed(1)
    n = 40
    rows, seqs = _random_rows(n, 60, (4, 12), seed=0)
    model = Student(StudentConfig(num_items=n, hidden=8, heads=2, max_len=6)).eval()
    model.attach_transitions(transition_table(seqs, num_items=n))
    catalogue = ItemCatalogue(ids=[f"i{k}" for k in range(1, n + 1)])
    flat_ids = np.concatenate([np.asarray(r[:6]) for r in rows]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(r[:6]) for r in rows])])
    # weights from a nudge to a push past most of the list
    for w in (0.5, 1.0, 3.0, 10.0):
        model.cfg = dataclasses.replace(model.cfg, transition_prior=w)
        exact = Recommender(model, catalogue, index=IndexSpec(index="exact"))
        flat = Recommender(model, catalogue, index=IndexSpec(index="flat"))
        assert flat.index_kind == "flat"
        for mask in (True, False):
            e_ids, e_scores = exact.top_k_csr(flat_ids, offsets, 7, mask)
            f_ids, f_scores = flat.top_k_csr(flat_ids, offsets, 7, mask)
            np.testing.assert_array_equal(f_ids, e_ids)
            np.testing.assert_allclose(f_scores, e_scores, rtol=1e-4, atol=1e-4)
    # the prior changes the lists, so the test would see a re-ranking that ignored it
    model.cfg = dataclasses.replace(model.cfg, transition_prior=0.0)
    base_ids, _ = Recommender(model, catalogue, index=IndexSpec(index="exact")).top_k_csr(
        flat_ids, offsets, 7, True
    )
    assert (base_ids != e_ids).any()


def test_the_one_pass_choice_ranks_as_the_scorer_does_at_each_weight() -> None:
    from pipeline.evaluation.cases import build_eval_cases
    from pipeline.evaluation.metrics import evaluate_scorer
    from pipeline.models import Student
    from pipeline.models.config import StudentConfig
    from pipeline.training.prior import transition_ranks

    torch.manual_seed(3)
    n = 30
    rows, seqs = _random_rows(n, 40, (4, 10), seed=1)
    cfg = StudentConfig(num_items=n, hidden=8, heads=2, max_len=6, exclude_seen=True)
    model = Student(cfg).eval()
    model.attach_transitions(transition_table(seqs, num_items=n))
    valid = build_eval_cases(rows, [len(r) - 2 for r in rows], [len(r) - 1 for r in rows], "valid", max_len=6)
    weights = [0.0, 0.5, 2.0, 8.0]
    got = transition_ranks(model, valid, weights, False, 7, torch.device("cpu"))  # batches of 7: a ragged end
    moved = 0
    for w in weights:
        model.cfg = dataclasses.replace(model.cfg, transition_prior=w)
        _, expected = evaluate_scorer(model.scorer(), valid, [10], False, 16)
        np.testing.assert_array_equal(got[w], expected)
        moved += int((expected != got[0.0]).sum())
    assert moved > 0  # the weights change the ranks: the comparison is not of identical runs
