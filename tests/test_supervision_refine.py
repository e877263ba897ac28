"""correlate.ann.refine_rounds: neighbour-of-neighbour refinement of approximate neighbour lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_supervision_correlate import brute_force_topk, clustered_vectors

from pipeline.config import CorrelateParams
from pipeline.config.inputs import AnnParams
from pipeline.supervision.ann import exact_search, faiss_topk, ivf_search, sample_recall, search_vectors
from pipeline.supervision.refine import candidates, ordered, refine_round, reverse_neighbours


def test_candidates_by_hand() -> None:
    # k 2, width 1, no reverse neighbours: each row's own list and its first neighbour's list, sorted, once
    # each, without itself
    labels = torch.tensor([[1, 2], [2, 0], [0, -1], [1, 0]])
    none = torch.full((4, 0), -1)
    got = candidates(labels, torch.arange(4), 1, none)
    assert got.tolist() == [
        [1, 2, -1, -1],  # own 1, 2; row 1's 2, 0 (0 is itself)
        [0, 2, -1, -1],  # own 2, 0; row 2's 0, -1
        [0, 1, -1, -1],  # own 0, -1; row 0's 1, 2 (2 is itself)
        [0, 1, 2, -1],  # own 1, 0; row 1's 2, 0
    ]
    # an absent first neighbour lends nothing (not row 0's list through a clamped -1)
    got = candidates(torch.tensor([[-1, -1], [2, 0], [1, 0]]), torch.tensor([0]), 1, torch.full((3, 0), -1))
    assert got.tolist() == [[-1, -1, -1, -1]]
    # reverse neighbours: the last row listing each row at rank 0 (row 3 lists 1 first, so does row 0)
    back = reverse_neighbours(labels.numpy(), 1)
    assert back.tolist() == [[2], [3], [1], [-1]]
    got = candidates(labels, torch.arange(4), 1, back)
    assert got[3].tolist() == [0, 1, 2] + [-1] * 4  # row 3: no reverse neighbour, as without
    assert got[2].tolist() == [0, 1] + [-1] * 5  # row 2: row 1 lists it, lending 2 (itself) and 0
    assert got[0].tolist() == [1, 2] + [-1] * 5  # row 0: reverse neighbour 2 lends 0 (itself) and -1


def test_ordered_puts_absent_results_last() -> None:
    v = np.array([[0.2, 0.9, 0.2, 5.0]], dtype=np.float32)
    lb = np.array([[7, 3, 1, -1]])
    ov, ol = ordered(v, lb)
    assert ol.tolist() == [[3, 1, 7, -1]] and ov[0, :3].tolist() == pytest.approx([0.9, 0.2, 0.2])
    assert np.isneginf(ov[0, 3])


def _reference_round(x: np.ndarray, labels: np.ndarray, width: int, reverse: int, block: int) -> np.ndarray:
    """The round in plain numpy, row by row: a block's rows read the lists as the earlier blocks left them,
    and the reverse neighbours as they were at the start (for rank j, the last row listing it j-th)."""
    labels = labels.copy()
    k = labels.shape[1]
    back = [
        [max([i for i in range(len(x)) if labels[i, j] == r], default=-1) for j in range(reverse)]
        for r in range(len(x))
    ]
    for lo in range(0, len(x), block):
        seen = labels.copy()
        for r in range(lo, min(len(x), lo + block)):
            own = seen[r][seen[r] >= 0]
            rev = [b for b in back[r] if b >= 0]
            cand = set(own.tolist()) | set(rev)
            for j in list(own[:width]) + rev:
                cand |= {int(c) for c in seen[j] if c >= 0}
            cand.discard(r)
            cand = np.array(sorted(cand), dtype=np.int64)
            s = x[cand] @ x[r]
            best = cand[np.lexsort((cand, -s))[:k]]
            labels[r] = np.pad(best, (0, k - len(best)), constant_values=-1)
    return labels


@pytest.mark.parametrize(("block", "reverse"), [(1, 0), (7, 0), (16_384, 0), (1, 2), (16_384, 2)])
def test_a_round_equals_the_row_by_row_reference_and_never_lowers_a_score(block: int, reverse: int) -> None:
    x = search_vectors(clustered_vectors(400, 16, 10, seed=2, noise=0.4), "cos")
    # a poor starting graph: each row's neighbours are 6 random other rows
    rng = np.random.default_rng(3)
    labels = np.stack([rng.choice(np.delete(np.arange(400), r), 6, replace=False) for r in range(400)])
    values, labels = ordered(np.einsum("rkd,rd->rk", x[labels], x).astype(np.float32), labels)
    before = values.copy()
    want = _reference_round(x, labels, 3, reverse, block)
    complete = refine_round(x, values, labels, 3, reverse, block=block)
    assert np.array_equal(labels, want)
    assert np.allclose(values, np.einsum("rkd,rd->rk", x[labels], x), atol=1e-5)  # the true scores
    assert complete.all() and (values >= before - 1e-6).all()  # no row's j-th score went down
    assert not (labels == np.arange(400)[:, None]).any()
    assert all(len(set(r)) == 6 for r in labels.tolist())  # each neighbour once
    assert (values[:, :-1] >= values[:, 1:]).all()


def test_exact_lists_are_a_fixed_point() -> None:
    x = search_vectors(clustered_vectors(500, 16, 5, seed=4), "cos")
    values, labels = exact_search(x, np.arange(500), 8)
    v, lb = values.copy(), labels.copy()
    refine_round(x, v, lb, 8, 5)
    assert np.array_equal(lb, labels) and np.allclose(v, values, atol=1e-6)


def _patches(n: int, seed: int) -> np.ndarray:
    """Many small clusters spread along random 3-d patches: an ivf cell cuts each patch into pieces."""
    rng = np.random.default_rng(seed)
    clusters, d = n // 30, 16
    labels = rng.integers(0, clusters, n)
    bases = rng.normal(size=(clusters, d, 3)) * 0.6
    v = rng.normal(size=(clusters, d))[labels] + np.einsum(
        "ndk,nk->nd", bases[labels], rng.normal(size=(n, 3))
    )
    return v.astype(np.float32)


def test_refinement_recovers_what_the_probed_cells_missed() -> None:
    v = _patches(4000, seed=5)
    x = search_vectors(v, "cos")
    ann = AnnParams(nlist=64, nprobe=2, target_recall=None)  # (at nprobe 1 a list never leaves its cell)
    values, labels, _, _ = ivf_search(x, ann, 10, seed=0)
    start = sample_recall(x, labels, 10, 4000, seed=0)["recall_at_k"]
    for _ in range(3):
        refine_round(x, values, labels, 10, 5)
    end = sample_recall(x, labels, 10, 4000, seed=0)["recall_at_k"]
    assert start < 0.85 and end >= 0.95, (start, end)
    assert np.allclose(values, np.einsum("rkd,rd->rk", x[labels], x), atol=1e-5)


def _params(**ann) -> CorrelateParams:
    base = CorrelateParams(dim=16, sub_vectors=8, topk=10, device="cpu")
    return base.model_copy(update={"ann": base.ann.model_copy(update=ann)})


def test_the_stage_refines_ivf_neighbours_until_the_target_recall() -> None:
    v = _patches(4000, seed=6)
    # two probed cells of 64, no room to raise nprobe
    p = _params(nlist=64, nprobe=2, max_nprobe=2, recall_sample=500)
    off = p.model_copy(update={"ann": p.ann.model_copy(update={"refine_rounds": 0})})
    _, _, plain = faiss_topk(v, off, "ivf", np.zeros(4000, bool))
    values, idx, info = faiss_topk(v, p, "ivf", np.zeros(4000, bool))
    assert "refine" not in plain and plain["recall"]["recall_at_k"] < 0.9
    tuning = info["refine"]["tuning_recall"]
    assert info["refine"]["rounds"] == len(tuning) - 1 >= 1
    assert tuning[-1] >= 0.95 and all(r < 0.95 for r in tuning[:-1])  # stopped at the first round that held
    assert tuning == sorted(tuning)  # a round never lowers a row's scores
    assert info["recall"]["recall_at_k"] >= 0.93  # reported on another sample
    ref_v, _ = brute_force_topk(v, 10, "cos")
    x = search_vectors(v, "cos")
    assert (np.einsum("rkd,rd->rk", x[idx.numpy()], x) >= ref_v[:, -1:] - 1e-5).mean() >= 0.93
    assert np.allclose(np.einsum("rkd,rd->rk", x[idx.numpy()], x), values.numpy(), atol=1e-5)
    assert not (idx == torch.arange(4000)[:, None]).any()


def test_the_stage_refines_hnsw_neighbours_and_stops_at_refine_rounds() -> None:
    v = _patches(4000, seed=6)
    # a thin graph (4 links, a short build list) that leaves many items out of reach
    p = _params(m=4, ef_construction=8, ef_search=11, recall_sample=500, refine_rounds=3)
    off = p.model_copy(update={"ann": p.ann.model_copy(update={"refine_rounds": 0})})
    _, _, plain = faiss_topk(v, off, "hnsw", np.zeros(4000, bool))
    _, idx, info = faiss_topk(v, p, "hnsw", np.zeros(4000, bool))
    tuning = info["refine"]["tuning_recall"]
    assert info["refine"]["rounds"] == 3 and len(tuning) == 4 and tuning[-1] < 0.95  # the limit
    assert tuning == sorted(tuning) and tuning[-1] > tuning[0] + 0.1
    assert info["recall"]["recall_at_k"] > plain["recall"]["recall_at_k"] + 0.1
    assert not (idx == torch.arange(4000)[:, None]).any()


def test_refinement_is_off_without_a_target_and_at_zero_rounds() -> None:
    v = _patches(2000, seed=7)
    for ann in ({"target_recall": None}, {"refine_rounds": 0}):
        p = _params(nlist=32, nprobe=1, max_nprobe=1, **ann)
        _, _, info = faiss_topk(v, p, "ivf", np.zeros(2000, bool))
        assert "refine" not in info


class _Quantizer:
    """Stands in for the faiss quantizer of the nprobe ladder (the probes are scripted away)."""

    def search(self, q: np.ndarray, n: int) -> tuple[None, np.ndarray]:
        return None, np.zeros((len(q), n), dtype=np.int64)


def test_the_chosen_nprobe_clears_the_target_by_two_standard_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.supervision import nprobe

    # two tuning rows: at nprobe 3 their mean recall is 0.95, the target, but with a standard error of 0.05
    # (std 0.0707 over 2 rows); at nprobe 4 both rows find everything
    per_row = np.array([[0.2, 0.5, 1.0, 1.0], [0.2, 0.5, 0.9, 1.0]])
    monkeypatch.setattr(nprobe, "cells_recall", lambda x, probes, *a: per_row[:, : probes.shape[1]])
    args = (np.zeros((10, 2), np.float32), _Quantizer(), None, None, np.arange(2), None, 5, 1, 4, 0.95)
    got, tried = nprobe.choose_nprobe(*args)
    assert got == 4 and tried == {1: 0.2, 2: 0.5, 4: 1.0}
    # without the spread (the rows agree) the mean alone decides: nprobe 3
    per_row[:, 2] = 0.95
    assert nprobe.choose_nprobe(*args)[0] == 3


@pytest.mark.parametrize(
    ("recalls", "chosen", "tried"),
    [
        # 1 -> 2 closed 0.08 of a 0.5 gap (16 %): keep 1, and refine from there
        ([0.5, 0.58, 0.6, 0.66], 1, [1, 2]),
        # each doubling closed over a fifth of the gap: on to the target
        ([0.3, 0.6, 0.9, 0.96], 4, [1, 2, 4]),
        # the same, but nprobe 3 already reaches the target: the least that does is kept
        ([0.3, 0.6, 0.95, 0.96], 3, [1, 2, 3, 4]),
        # 2 -> 4 closed 0.05 of 0.4 (12.5 %): keep 2
        ([0.3, 0.6, 0.62, 0.65], 2, [1, 2, 4]),
    ],
)
def test_with_refinement_the_nprobe_ladder_stops_where_a_doubling_stalls(
    monkeypatch: pytest.MonkeyPatch, recalls: list[float], chosen: int, tried: list[int]
) -> None:
    from pipeline.supervision import nprobe

    # the recall the scan would reach at each nprobe 1..4, scripted for one tuning row: the ladder's decision
    # alone is under test
    monkeypatch.setattr(nprobe, "cells_recall", lambda x, probes, *a: np.array([recalls[: probes.shape[1]]]))
    args = (np.zeros((10, 2), np.float32), _Quantizer(), None, None, np.arange(3), None, 5, 1, 4, 0.95)
    got, got_tried = nprobe.choose_nprobe(*args, stall=nprobe.STALL)
    assert got == chosen and list(got_tried) == tried
    # without the refinement there is no stall rule: the least nprobe that reaches the target, else the limit
    assert nprobe.choose_nprobe(*args)[0] == next((p for p in (1, 2, 3) if recalls[p - 1] >= 0.95), 4)
