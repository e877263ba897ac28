"""Full-ranking metrics (pipeline/evaluation/metrics.py) against hand-computed values, RecBole style."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_sequences

from pipeline.artifacts import Sequences
from pipeline.errors import DataError
from pipeline.evaluation.cases import build_eval_cases, load_eval_cases
from pipeline.evaluation.metrics import evaluate_scorer, metrics_from_ranks, popularity_scores, rank_targets
from pipeline.io import write_parquet


def log2(x: float) -> float:
    return math.log2(x)


def no_history(b: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(b + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------- metrics
def test_single_rank_ndcg_values() -> None:
    assert metrics_from_ranks(np.array([0]), [1])["ndcg_at_1"] == 1.0
    m = metrics_from_ranks(np.array([1]), [1, 5])
    assert m["ndcg_at_1"] == 0.0 and m["hr_at_1"] == 0.0 and m["mrr_at_1"] == 0.0
    assert m["ndcg_at_5"] == pytest.approx(1 / log2(3), abs=1e-15)
    assert m["mrr_at_5"] == pytest.approx(1 / 2, abs=1e-15)
    # rank == k is outside the top k
    assert metrics_from_ranks(np.array([5]), [5]) == {"hr_at_5": 0.0, "ndcg_at_5": 0.0, "mrr_at_5": 0.0}


def test_hand_made_rank_vector() -> None:
    ranks = np.array([0, 1, 4, 9, 30])
    m = metrics_from_ranks(ranks, [1, 5, 10])
    expected = {
        "hr_at_1": 1 / 5,
        "ndcg_at_1": (1 / log2(2)) / 5,
        "mrr_at_1": 1 / 5,
        "hr_at_5": 3 / 5,
        "ndcg_at_5": (1 / log2(2) + 1 / log2(3) + 1 / log2(6)) / 5,
        "mrr_at_5": (1 / 1 + 1 / 2 + 1 / 5) / 5,
        "hr_at_10": 4 / 5,
        "ndcg_at_10": (1 / log2(2) + 1 / log2(3) + 1 / log2(6) + 1 / log2(11)) / 5,
        "mrr_at_10": (1 / 1 + 1 / 2 + 1 / 5 + 1 / 10) / 5,
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-15), k
    # a tensor gives the same numbers
    assert metrics_from_ranks(torch.tensor(ranks), [1, 5, 10]) == m


def test_metrics_reject_empty_and_bad_k() -> None:
    with pytest.raises(ValueError, match="empty"):
        metrics_from_ranks(np.array([], dtype=np.int64), [5])
    with pytest.raises(ValueError, match="k must be"):
        metrics_from_ranks(np.array([0]), [0])


# --------------------------------------------------------------------------------------------- ranking
def test_rank_counts_higher_and_ties_against_target() -> None:
    # items 1..5; column 0 (padding) scores highest but is never ranked
    row = [9.0, 0.5, 0.9, 0.1, 0.9, 0.3]
    scores = torch.tensor([row, row, row, row])
    targets = torch.tensor([2, 4, 1, 3])
    ranks = rank_targets(scores, targets, *no_history(4), mask_history=True)
    # 2: tie with 4 -> 1; 4: tie with 2 -> 1; 1: below 2 and 4 -> 2; 3: last of 5 -> 4
    assert ranks.tolist() == [1, 1, 2, 4]
    assert ranks.dtype == torch.int64


def test_constant_scores_rank_last_and_score_zero() -> None:
    n = 20
    scores = torch.full((2, n + 1), 3.0)
    targets = torch.tensor([7, 20])
    indptr = np.array([0, 3, 3])
    hist = np.array([1, 2, 3])  # case 0 has 3 history items, case 1 none
    ranks = rank_targets(scores, targets, indptr, hist, mask_history=True)
    assert ranks.tolist() == [n - 1 - 3, n - 1]
    m = metrics_from_ranks(ranks, [10])
    assert m == {"hr_at_10": 0.0, "ndcg_at_10": 0.0, "mrr_at_10": 0.0}
    unmasked = rank_targets(scores, targets, indptr, hist, mask_history=False)
    assert unmasked.tolist() == [n - 1, n - 1]


def test_masking_keeps_history_out_of_top_k() -> None:
    n, k = 50, 5
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, n + 1, generator=gen)
    hist = [[3, 10, 11, 12, 13, 14, 40], [1, 2], [5, 6, 7, 8, 9, 44]]
    targets = torch.tensor([20, 30, 9])  # case 2's target is also in its history (a repeat)
    for b, h in enumerate(hist):
        scores[b, h] = 100.0 + torch.arange(len(h), dtype=torch.float32)  # history items score highest
        scores[b, targets[b]] = 50.0  # the target is the best non-history item
    indptr = np.cumsum([0] + [len(h) for h in hist])
    items = np.concatenate(hist)
    original = scores.clone()
    masked = rank_targets(scores, targets, indptr, items, mask_history=True)
    assert torch.equal(scores, original)  # the caller's scores are not modified
    # the repeated target 9 is not masked itself and tops what is left
    assert masked.tolist() == [0, 0, 0]
    assert metrics_from_ranks(masked, [k])[f"hr_at_{k}"] == 1.0
    unmasked = rank_targets(scores, targets, indptr, items, mask_history=False)
    assert unmasked.tolist() == [7, 2, 5]  # every other history item scores higher


def test_padding_never_ranked() -> None:
    scores = torch.tensor([[1e9, 1.0, 2.0, 3.0], [float("inf"), 3.0, 2.0, 1.0]])
    ranks = rank_targets(scores, torch.tensor([3, 1]), *no_history(2), mask_history=False)
    assert ranks.tolist() == [0, 0]


def test_rank_rejects_nan_and_bad_targets() -> None:
    scores = torch.zeros(1, 4)
    scores[0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rank_targets(scores, torch.tensor([1]), *no_history(1), mask_history=True)
    with pytest.raises(ValueError, match="1..3"):
        rank_targets(torch.zeros(1, 4), torch.tensor([0]), *no_history(1), mask_history=True)
    with pytest.raises(ValueError, match="1..3"):
        rank_targets(torch.zeros(1, 4), torch.tensor([4]), *no_history(1), mask_history=True)


# --------------------------------------------------------------------------------------------- cases
def test_build_cases_leave_one_out() -> None:
    items = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])]
    train_end, valid_end = [3, 1], [4, 2]  # n-2, n-1
    valid = build_eval_cases(items, train_end, valid_end, "valid", max_len=3, users=[11, 12])
    assert valid.users.tolist() == [11, 12]
    assert valid.inputs.tolist() == [[1, 2, 3], [0, 0, 6]]
    assert valid.targets.tolist() == [4, 7]
    assert valid.hist_indptr.tolist() == [0, 3, 4]
    assert valid.hist_items.tolist() == [1, 2, 3, 6]
    test = build_eval_cases(items, train_end, valid_end, "test", max_len=3)
    assert len(test) == 2
    assert test.users.tolist() == [0, 1]  # default: row positions
    assert test.inputs.tolist() == [[2, 3, 4], [0, 6, 7]]  # truncated to the last 3; left padding
    assert test.targets.tolist() == [5, 8]
    assert test.hist_indptr.tolist() == [0, 4, 6]
    assert test.hist_items.tolist() == [1, 2, 3, 4, 6, 7]  # the full history, not truncated
    assert test.inputs.dtype == torch.int64 and test.targets.dtype == torch.int64


def test_build_cases_ratio_multi_target() -> None:
    # n = 10, test = last round(0.2 * 10) = 2 items, validation = the one before: train_end 7, valid_end 8
    items = [np.arange(1, 11), np.array([3, 1, 2])]
    train_end, valid_end = [7, 1], [8, 2]
    test = build_eval_cases(items, train_end, valid_end, "test", max_len=4, users=[1, 2])
    assert test.users.tolist() == [1, 1, 2]
    assert test.targets.tolist() == [9, 10, 2]
    assert test.inputs.tolist() == [[5, 6, 7, 8], [6, 7, 8, 9], [0, 0, 3, 1]]
    assert test.hist_indptr.tolist() == [0, 8, 17, 19]
    assert test.hist_items.tolist() == list(range(1, 9)) + list(range(1, 10)) + [3, 1]
    valid = build_eval_cases(items, train_end, valid_end, "valid", max_len=4, users=[1, 2])
    assert valid.targets.tolist() == [8, 1]
    assert valid.inputs.tolist() == [[4, 5, 6, 7], [0, 0, 0, 3]]


def test_build_cases_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="train_end <= valid_end"):
        build_eval_cases([np.array([1, 2, 3])], [2], [1], "test", 3)
    with pytest.raises(ValueError, match="no items before"):
        build_eval_cases([np.array([1, 2])], [0], [1], "valid", 3)
    with pytest.raises(ValueError, match="0 is padding"):
        build_eval_cases([np.array([1, 0, 2])], [1], [2], "test", 3)
    with pytest.raises(ValueError, match="part"):
        build_eval_cases([np.array([1, 2, 3])], [1], [2], "train", 3)  # type: ignore[arg-type]


def test_load_eval_cases_reads_sequences_parquet(tmp_path: Path) -> None:
    path = tmp_path / "sequences.parquet"
    write_sequences(path, [[1, 2, 3, 4, 5], [6, 7, 8]], [3, 1], [4, 2])
    cases = load_eval_cases(path, "test", max_len=3)
    assert cases.users.tolist() == [1, 2]
    assert cases.inputs.tolist() == [[2, 3, 4], [0, 6, 7]]
    assert cases.targets.tolist() == [5, 8]
    assert cases.hist_items.tolist() == [1, 2, 3, 4, 6, 7]
    bad = tmp_path / "bad.parquet"
    write_parquet(bad, {"user": np.array([1], dtype=np.int32)})
    with pytest.raises(DataError, match=r"bad\.parquet: missing column"):
        load_eval_cases(bad, "test", 3)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_eval_cases(tmp_path / "nope.parquet", "test", 3)


# --------------------------------------------------------------------------------------------- scorer
def _reference_rank(scores: np.ndarray, target: int, history: list[int], mask: bool) -> int:
    """Per-case loop: the definition, written out plainly."""
    t = scores[target]
    rank = 0
    for i in range(1, len(scores)):
        if i == target or (mask and i in history):
            continue
        rank += scores[i] >= t
    return int(rank)


def test_batch_size_does_not_change_metrics() -> None:
    rng = np.random.default_rng(0)
    n = 40
    items = [rng.integers(1, n + 1, size=int(rng.integers(3, 12))) for _ in range(25)]
    train_end = [len(s) - 3 for s in items]  # ratio-style: one valid and two test targets per user
    valid_end = [len(s) - 2 for s in items]
    cases = build_eval_cases(items, train_end, valid_end, "test", max_len=5)

    def score_fn(inputs: torch.Tensor) -> torch.Tensor:
        # exact small integers with many ties, depending on the last two inputs
        cols = torch.arange(n + 1, device=inputs.device)
        return ((inputs[:, -1:] * 7 + inputs[:, -2:-1] * 3 + cols * 13) % 11).float()

    results = [evaluate_scorer(score_fn, cases, [5, 10], True, bs) for bs in (1, 3, 1000)]
    for metrics, ranks in results[1:]:
        assert metrics == results[0][0]
        assert np.array_equal(ranks, results[0][1])
    all_scores = score_fn(cases.inputs).numpy()
    for mask in (True, False):
        _, ranks = evaluate_scorer(score_fn, cases, [5], mask, 4)
        expected = [
            _reference_rank(
                all_scores[c],
                int(cases.targets[c]),
                cases.hist_items[cases.hist_indptr[c] : cases.hist_indptr[c + 1]].tolist(),
                mask,
            )
            for c in range(len(cases))
        ]
        assert ranks.tolist() == expected
        assert ranks.dtype == np.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(1)
    n = 300
    items = [rng.integers(1, n + 1, size=int(rng.integers(3, 30))) for _ in range(200)]
    cases = build_eval_cases(items, [len(s) - 2 for s in items], [len(s) - 1 for s in items], "test", 10)
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, 5, (n + 1, n + 1), generator=gen).float()  # integer scores: exact, with ties

    def score_fn(inputs: torch.Tensor) -> torch.Tensor:
        return table.to(inputs.device)[inputs[:, -1]]

    cpu = evaluate_scorer(score_fn, cases, [5, 10], True, 64, device="cpu")
    gpu = evaluate_scorer(score_fn, cases, [5, 10], True, 64, device="cuda")
    assert cpu[0] == gpu[0]
    assert np.array_equal(cpu[1], gpu[1])


# --------------------------------------------------------------------------------------------- popularity
def test_popularity_baseline() -> None:
    items = [np.array([1, 2, 3, 4]), np.array([2, 3, 1, 4]), np.array([2, 4, 4])]
    train_end, valid_end = [2, 2, 1], [3, 3, 2]
    pop = popularity_scores(Sequences.from_lists(items, train_end, valid_end), num_items=4)
    # training parts [1, 2], [2, 3], [2]: counts item1=1, item2=3, item3=1, item4=0
    assert pop.tolist() == [0.0, 1.0, 3.0, 1.0, 0.0]
    assert pop.dtype == torch.float32
    cases = build_eval_cases(items, train_end, valid_end, "valid", max_len=2)
    assert cases.targets.tolist() == [3, 1, 4]

    def fn(x: torch.Tensor) -> torch.Tensor:
        return pop.expand(x.shape[0], -1)

    _, masked = evaluate_scorer(fn, cases, [1], True, 8)
    # user 0: target 3 (1), history {1, 2} masked -> 3 tops {3, 4}: rank 0
    # user 1: target 1 (1), history {2, 3} masked -> 1 tops {1, 4}: rank 0
    # user 2: target 4 (0), history {2} masked -> 1 and 3 (1) higher: rank 2
    assert masked.tolist() == [0, 0, 2]
    _, unmasked = evaluate_scorer(fn, cases, [1], False, 8)
    # user 0: 2 higher, 1 ties -> 2; user 1: 2 higher, 3 ties -> 2; user 2: 1, 2, 3 higher -> 3
    assert unmasked.tolist() == [2, 2, 3]


@pytest.mark.parametrize("n_items", [5, 63, 64, 1000, 2 * 255 * 64 + 37])  # lanes, blocks and a remainder
def test_ranks_equal_a_plain_count_over_the_masked_scores(n_items: int) -> None:
    # tied integer scores, histories with repeated items and a target that repeats a history item
    gen = torch.Generator().manual_seed(n_items)
    b = 6
    scores = torch.randint(0, 7, (b, n_items + 1), generator=gen).float()
    targets = torch.randint(1, n_items + 1, (b,), generator=gen)
    hist = [torch.randint(1, n_items + 1, (int(k),), generator=gen).tolist() for k in range(b)]
    hist[1] = hist[1] + [int(targets[1])]
    scores[2, targets[2]] = float("-inf")  # an excluded target: never recommended, rank N
    indptr = np.cumsum([0] + [len(h) for h in hist])
    items = np.array([i for h in hist for i in h], dtype=np.int64)
    for mask in (True, False):
        got = rank_targets(scores, targets, indptr, items, mask_history=mask).tolist()
        want = []
        for r in range(b):
            t = int(targets[r])
            ranked = set(range(1, n_items + 1)) - ({*hist[r]} - {t} if mask else set()) - {t}
            hits = sum(1 for j in ranked if scores[r, j] >= scores[r, t])
            want.append(n_items if scores[r, t] == float("-inf") else hits)
        assert got == want, mask
