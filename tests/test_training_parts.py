"""Training building blocks with known answers: parameter groups, schedules, losses, batches, pairs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.artifacts import Sequences
from pipeline.config import AsyncLRParams
from pipeline.models import Student, StudentConfig
from pipeline.training import losses
from pipeline.training.batches import (
    bucketed_batches,
    catalogue_pairs,
    future_targets,
    neighbour_pairs,
    position_weight,
    sequence_pairs,
    training_windows,
    trim_left_padding,
    within_sequence_pairs,
)
from pipeline.training.losses import code_loss, frobenius_holistic_loss, holistic_loss, next_item_loss
from pipeline.training.schedule import LRScheduler, async_lr_scale, base_lr_factor, build_param_groups


def student(modalities=("text", "image")) -> Student:
    cfg = StudentConfig(
        num_items=20, hidden=16, heads=2, modalities=tuple(modalities), modality_dim=8, num_codes=4
    )
    return Student(cfg, {m: torch.randn(21, 8) for m in modalities})


def test_parameter_groups_are_disjoint_and_cover_every_trainable_parameter() -> None:
    model = student()
    groups = build_param_groups(model, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    by_name = {g["name"]: g for g in groups}
    assert {id(p) for p in by_name["modality"]["params"]} == {
        id(model.modality_tables["text"].weight),
        id(model.modality_tables["image"].weight),
    }
    assert by_name["default"]["weight_decay"] == 0.01
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_id_only_model_has_no_modality_group() -> None:
    names = [g["name"] for g in build_param_groups(student(()), 0.0)]
    assert "modality" not in names


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [
        ("linear", 0, 0.25),
        ("linear", 5, 0.625),
        ("linear", 10, 1.0),
        ("linear", 30, 1.0),
        ("step", 0, 0.25),
        ("step", 4.9, 0.25),
        ("step", 5, 0.5),
        ("step", 10, 1.0),
        ("step", 50, 1.0),
        ("constant", 0, 0.25),
        ("constant", 100, 0.25),
        ("none", 0, 1.0),
        ("none", 7, 1.0),
        ("exponential", 0, 0.25),
        ("exponential", 5, 0.5),  # 0.25 ** (1 - 5/10): halfway in log space
        ("exponential", 10, 1.0),
        ("exponential", 30, 1.0),
    ],
)
def test_async_lr_schedule_values(schedule: str, epoch: float, expected: float) -> None:
    assert async_lr_scale(
        schedule, epoch, start_scale=0.25, warmup_epochs=10, step_epochs=[5, 10], gamma=2.0
    ) == pytest.approx(expected)


def test_base_lr_warmup_and_cosine() -> None:
    assert base_lr_factor(0, 100, 10, cosine=True) == pytest.approx(0.1)
    assert base_lr_factor(9, 100, 10, cosine=True) == pytest.approx(1.0)
    assert base_lr_factor(55, 100, 10, cosine=True) == pytest.approx(0.5)
    assert base_lr_factor(100, 100, 10, cosine=True) == pytest.approx(0.0)
    assert base_lr_factor(70, 100, 10, cosine=False) == 1.0


def test_scheduler_sets_each_group_lr() -> None:
    model = student()
    opt = torch.optim.AdamW(build_param_groups(model, 0.0), lr=1e-3)
    sched = LRScheduler(
        opt,
        1e-3,
        steps_per_epoch=10,
        epochs=20,
        warmup_epochs=0,
        cosine=False,
        async_params=AsyncLRParams(schedule="linear", start_scale=0.25, warmup_epochs=10),
    )
    lrs = sched.set_step(0)
    assert lrs["default"] == pytest.approx(1e-3) and lrs["modality"] == pytest.approx(2.5e-4)
    lrs = sched.set_step(50)  # epoch 5 of a 10-epoch warm-up
    assert lrs["modality"] == pytest.approx(1e-3 * 0.625)
    assert lrs["no_decay"] == pytest.approx(1e-3)


def test_holistic_loss_is_zero_iff_student_equals_teacher() -> None:
    t = torch.tensor([0.3, -0.2, 0.9])
    assert holistic_loss(t.clone(), t, tau=1.5) == 0.0
    s = torch.tensor([0.3, -0.2, 0.0])
    assert holistic_loss(s, t, tau=1.5) == pytest.approx((0.9 / 1.5) ** 2 / 3)


def test_code_loss_vanishes_for_a_confident_correct_student_and_is_positive_otherwise() -> None:
    codes = torch.tensor([2, 0])
    right = torch.full((2, 4), -50.0)
    right[0, 2] = right[1, 0] = 50.0
    assert code_loss(right, codes) == pytest.approx(0.0, abs=1e-6)
    assert code_loss(torch.zeros(2, 4), codes) == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_vq_code_loss_is_the_mean_over_sub_vectors_of_the_cross_entropy_by_hand() -> None:
    import math

    # 2 pairs, D = 2 sub-vectors, K = 3 levels
    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], [[1.0, 0.0, -1.0], [0.0, 0.0, 3.0]]])
    codes = torch.tensor([[1, 0], [2, 2]])

    def ce(row: list[float], k: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    sub0 = (ce([0.0, 0.0, 0.0], 1) + ce([1.0, 0.0, -1.0], 2)) / 2  # log 3, and 1 + log(e + 1 + 1/e)
    sub1 = (ce([2.0, 0.0, 0.0], 0) + ce([0.0, 0.0, 3.0], 2)) / 2
    assert code_loss(logits, codes).item() == pytest.approx((sub0 + sub1) / 2, rel=1e-6)
    assert sub0 == pytest.approx((math.log(3) + 1 + math.log(math.e + 1 + 1 / math.e)) / 2)
    with pytest.raises(ValueError, match=r"need codes of shape \(2, 2\), got \(2,\)"):
        code_loss(logits, torch.tensor([1, 2]))


@pytest.mark.parametrize("holistic", ["mse", "frobenius"])
def test_kd_terms_with_vq_codes_split_over_ranks_add_up_to_one_process(holistic: str) -> None:
    from pipeline.config import KDParams
    from pipeline.supervision.codebooks import ProductCodebook
    from pipeline.supervision.scores import TeacherCorrelation, pair_scores
    from pipeline.training.distributed import DistInfo
    from pipeline.training.objective import kd_terms

    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=20, hidden=16, modalities=("text",), modality_dim=8, num_codes=3, code_groups=4
    )
    vectors = torch.cat([torch.zeros(1, 8), torch.randn(20, 8)])
    model = Student(cfg, {"text": vectors})
    levels = torch.tensor([[-0.5, 0.0, 0.5]]).repeat(4, 1)
    teachers = {"text": TeacherCorrelation(vectors, ProductCodebook(levels), "cos")}
    seq = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    kd = KDParams(holistic_loss=holistic, random_pairs=2)

    def score(a, b):
        return pair_scores(a, b, "cos")

    def run(rank: int, world: int) -> torch.Tensor:
        _, code = kd_terms(
            model, teachers, seq, kd, score, torch.Generator().manual_seed(1), DistInfo(rank, world)
        )
        return code["text"]

    whole = run(0, 1)
    assert whole.item() > 0
    shares = [run(r, 2) for r in range(2)]
    assert sum(shares).item() == pytest.approx(whole.item(), rel=1e-5)


def test_loss_terms_weighted_sum_and_curve_columns() -> None:
    from pipeline.config import KDParams
    from pipeline.training.objective import LossTerms

    t = LossTerms(
        torch.tensor(2.0),
        holistic={"text": torch.tensor(3.0), "image": torch.tensor(5.0)},
        code={"text": torch.tensor(7.0), "image": torch.tensor(11.0)},
    )
    kd = KDParams(holistic_weight=0.5, code_weight=0.25)
    assert t.total(kd).item() == 2.0 + 0.5 * 3 + 0.25 * 7 + 0.5 * 5 + 0.25 * 11
    assert list(t.columns(kd)) == ["ce", "hol_text", "code_text", "hol_image", "code_image"]
    assert t.weights(kd) == {"hol_text": 0.5, "code_text": 0.25, "hol_image": 0.5, "code_image": 0.25}
    ce_only = LossTerms(torch.tensor(2.0))
    assert ce_only.total(kd) is ce_only.ce and list(ce_only.columns(kd)) == ["ce"]


def test_full_softmax_ignores_padding_column() -> None:
    items = torch.tensor([[100.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 = padding would win if ranked
    h = torch.tensor([[1.0, 0.0]])
    loss = next_item_loss(h, items, torch.tensor([1]))
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0]), 0)[0]
    assert loss == pytest.approx(expected.item())


def assert_same_loss_and_gradients(got, ref, h, e):
    """``got`` equals ``ref`` (two losses of ``h`` and ``e``), and so do their gradients; returns ref's."""
    ref_gh, ref_ge = torch.autograd.grad(ref, (h, e))
    gh, ge = torch.autograd.grad(got, (h, e))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ge, ref_ge, rtol=1e-5, atol=1e-7)
    return ref_gh, ref_ge


@pytest.mark.parametrize("chunk_elements", [7, 64, 1 << 21])  # ragged chunks, several chunks, one chunk
def test_chunked_softmax_ce_equals_plain_cross_entropy_and_its_gradients(monkeypatch, chunk_elements) -> None:
    monkeypatch.setattr(losses, "CPU_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, requires_grad=True)
    e = torch.randn(13, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 13, (37,), generator=g)
    ref = F.cross_entropy(h @ e.T, t)
    ref_gh, ref_ge = assert_same_loss_and_gradients(losses.full_softmax_ce(h, e, t), ref, h, e)
    # the gradient is computed in the forward pass: backward scales it by the loss's weight
    gh, ge = torch.autograd.grad(2.5 * losses.full_softmax_ce(h, e, t), (h, e))
    torch.testing.assert_close(gh, 2.5 * ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ge, 2.5 * ref_ge, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # no gradient wanted: the same loss
        assert losses.full_softmax_ce(h, e, t).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("chunk_elements", [7, 1 << 21])
def test_chunked_softmax_ce_with_a_soft_label_equals_the_weighted_log_softmax(
    monkeypatch, chunk_elements
) -> None:
    monkeypatch.setattr(losses, "CPU_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(29, 8, generator=g, requires_grad=True)
    e = torch.randn(13, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 13, (29, 3), generator=g)
    t[0] = 4  # one item three times in a row: its weights add up
    w = torch.rand(29, 3, generator=g)
    w[1:6, 1:] = 0  # columns left out
    w = w / w.sum(1, keepdim=True)
    ref = -(torch.log_softmax(h @ e.T, 1).gather(1, t) * w).sum(1).mean()
    assert_same_loss_and_gradients(losses.full_softmax_ce(h, e, t, w), ref, h, e)
    one_hot = torch.zeros(29, 3)
    one_hot[:, 0] = 1  # a soft label on its first column alone is the plain loss
    assert losses.full_softmax_ce(h, e, t, one_hot).item() == pytest.approx(
        F.cross_entropy(h @ e.T, t[:, 0]).item(), rel=1e-6
    )


@pytest.mark.parametrize("chunk_elements", [7, 1 << 21])
def test_chunked_softmax_ce_with_label_smoothing_equals_torchs_and_the_smoothed_soft_label(
    monkeypatch, chunk_elements
) -> None:
    monkeypatch.setattr(losses, "CPU_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(23, 8, generator=g, requires_grad=True)
    e = torch.randn(11, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 11, (23,), generator=g)
    ref = F.cross_entropy(h @ e.T, t, label_smoothing=0.2)
    assert_same_loss_and_gradients(losses.full_softmax_ce(h, e, t, smoothing=0.2), ref, h, e)
    soft = torch.randint(0, 11, (23, 3), generator=g)
    w = torch.rand(23, 3, generator=g)
    w = w / w.sum(1, keepdim=True)
    logp = torch.log_softmax(h @ e.T, 1)
    ref = -(0.7 * (logp.gather(1, soft) * w).sum(1) + 0.3 * logp.mean(1)).mean()
    assert_same_loss_and_gradients(losses.full_softmax_ce(h, e, soft, w, smoothing=0.3), ref, h, e)


def test_future_targets_are_the_next_items_weighted_and_cut_at_the_sequence_end() -> None:
    targets = torch.tensor([[0, 0, 5, 6, 7], [2, 3, 4, 8, 9]])  # left-padded next items
    keep = targets != 0
    ids, w = future_targets(targets, keep, 2, 0.3, 0.5)  # the next weighs 1, then 0.3, then 0.15
    assert ids.tolist() == [
        [5, 6, 7], [6, 7, 0], [7, 0, 0],
        [2, 3, 4], [3, 4, 8], [4, 8, 9], [8, 9, 0], [9, 0, 0],
    ]  # fmt: skip
    full = torch.tensor([1.0, 0.3, 0.15]) / 1.45
    torch.testing.assert_close(w[0], full)
    torch.testing.assert_close(w[1], torch.tensor([1.0, 0.3, 0.0]) / 1.3)
    torch.testing.assert_close(w[2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    ids0, w0 = future_targets(targets, keep, 0, 0.3, 0.5)  # none after the next: the plain label
    assert ids0[:, 0].tolist() == targets[keep].tolist() and (w0 == 1).all()


def test_next_item_loss_with_future_targets_equals_the_hand_computed_soft_label() -> None:
    g = torch.Generator().manual_seed(3)
    items = torch.randn(10, 4, generator=g)  # row 0: padding, never a candidate
    targets = torch.tensor([[0, 3, 4, 9], [1, 2, 3, 5]])
    keep = targets != 0
    hidden = torch.randn(int(keep.sum()), 4, generator=g)
    ids, w = future_targets(targets, keep, 1, 0.5, 1.0)
    got = next_item_loss(hidden, items, ids, weights=w)
    logp = torch.log_softmax(hidden @ items[1:].T, 1)  # over items 1..9
    rows = []
    for p, (a, b) in enumerate(zip(ids.tolist(), w.tolist(), strict=True)):
        rows.append(-(b[0] * logp[p, a[0] - 1] + (b[1] * logp[p, a[1] - 1] if a[1] else 0.0)))
    assert got.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="full softmax"):
        next_item_loss(hidden, items, ids, (torch.tensor([1, 2]), None), weights=w)
    with pytest.raises(ValueError, match="full softmax"):
        next_item_loss(hidden, items, ids[:, 0], (torch.tensor([1, 2]), None), smoothing=0.1)
    smoothed = next_item_loss(hidden, items, targets[keep], smoothing=0.1)  # padding is never a candidate
    ref = torch.nn.functional.cross_entropy(hidden @ items[1:].T, targets[keep] - 1, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(ref.item(), rel=1e-6)


def test_chunked_softmax_ce_follows_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(20, 16, generator=g, requires_grad=True)
    e = torch.randn(30, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 30, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.full_softmax_ce(h, e, t)
    got.backward()
    ref = F.cross_entropy(h.detach().bfloat16().float() @ e.detach().bfloat16().float().T, t)
    assert got.dtype == torch.float32 and h.grad.dtype == torch.float32 and e.grad.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_gradients_reach_modality_tables_through_ce_and_distillation() -> None:
    model = student(("text",))
    items = model.item_representations()
    h = model.encode(torch.tensor([[0, 1, 2, 3]]), items)[:, -1]
    next_item_loss(h, items, torch.tensor([4])).backward()
    assert model.modality_tables["text"].weight.grad.abs().sum() > 0
    model.zero_grad()
    i, j = torch.tensor([1, 2]), torch.tensor([3, 4])
    code_loss(model.code_logits("text", i, j), torch.tensor([0, 1])).backward()
    g = model.modality_tables["text"].weight.grad
    assert g[[1, 2, 3, 4]].abs().sum() > 0 and g[5:].abs().sum() == 0


def test_training_windows_left_pad_and_truncate() -> None:
    import numpy as np

    items = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8]), np.array([9, 10, 11, 12])]
    w = training_windows(Sequences.from_lists(items, [5, 1, 3], [5, 1, 3]), max_len=3)
    # user 2 has a single training item: no target, dropped
    assert w.tolist() == [[2, 3, 4, 5], [0, 9, 10, 11]]


def test_trim_left_padding_and_bucketed_batches() -> None:
    seq = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 3, 4, 5]])
    assert trim_left_padding(seq).tolist() == [[0, 1, 2], [3, 4, 5]]
    lengths = torch.arange(100)
    batches = bucketed_batches(lengths, 8, torch.Generator().manual_seed(0), chunk_batches=4)
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(100))
    # within a chunk rows are sorted by length, so a batch spans a narrow length range
    assert max(int(b.max() - b.min()) for b in batches if len(b) == 8) < 40


def test_within_sequence_pairs_are_unique_distinct_cooccurring_items() -> None:
    seq = torch.tensor([[0, 1, 2, 3], [0, 0, 2, 1], [4, 4, 5, 0]])
    i, j = within_sequence_pairs(seq, max_pairs=100)
    pairs = sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == [(1, 2), (1, 3), (2, 3), (4, 5)]
    i, j = within_sequence_pairs(seq, max_pairs=2, generator=torch.Generator().manual_seed(0))
    assert len(i) == 2 and all((a, b) in pairs for a, b in zip(i.tolist(), j.tolist(), strict=True))


def test_neighbour_pairs_pair_batch_items_with_their_listed_neighbours() -> None:
    seq = torch.tensor([[0, 1, 2], [0, 0, 4]])
    # item 1 -> {5, 6}, item 2 -> {7}, item 3 -> {1, 2} (not in the batch), item 4 has no neighbours
    neighbours = torch.tensor([[0, 0], [5, 6], [7, 0], [1, 2], [0, 0], [0, 0], [0, 0], [0, 0]])
    counts = torch.tensor([0, 2, 1, 2, 0, 0, 0, 0])
    i, j = neighbour_pairs(seq, neighbours, counts, 400, torch.Generator().manual_seed(0))
    assert len(i) == len(j) == 400
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == {(1, 5), (1, 6), (2, 7)}  # every listed neighbour of a batch item, nothing else
    assert 150 < int((i == 1).sum()) < 250  # the batch's items with neighbours are drawn alike
    again = neighbour_pairs(seq, neighbours, counts, 400, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], i) and torch.equal(again[1], j)
    for n, s in ((0, seq), (5, torch.tensor([[0, 4, 4]]))):  # none asked for; no batch item has neighbours
        i, j = neighbour_pairs(s, neighbours, counts, n)
        assert i.numel() == j.numel() == 0


def test_position_weight_makes_bucketed_batch_means_a_mean_over_all_positions() -> None:
    # an epoch of length-bucketed batches: per-position losses, very different numbers of targets per batch
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(n, generator=g) for n in (300, 4000, 650, 2200)]
    mean_targets = sum(len(b) for b in batches) / len(batches)
    weighted = sum(b.mean() * position_weight(len(b), mean_targets) for b in batches) / len(batches)
    every_position = torch.cat(batches).mean()
    torch.testing.assert_close(weighted, every_position)
    unweighted = sum(b.mean() for b in batches) / len(batches)  # what plain batch means optimise instead
    assert not torch.isclose(unweighted, every_position, rtol=1e-3)


def test_sequence_pairs_keep_each_sequence_its_own_pairs() -> None:
    seq = torch.tensor([[0, 3, 5, 3, 7], [0, 0, 5, 3, 9], [0, 0, 0, 0, 4]])
    i, j, rows, weight = sequence_pairs(seq, max_pairs=100)
    got = sorted(zip(rows.tolist(), i.tolist(), j.tolist(), strict=True))
    # (3, 5) co-occurs in rows 0 and 1 and is kept once per row; the repeated 3 of row 0 adds nothing
    assert got == [(0, 3, 5), (0, 3, 7), (0, 5, 7), (1, 3, 5), (1, 3, 9), (1, 5, 9)]
    assert weight.tolist() == [1.0] * 6
    g = torch.Generator().manual_seed(0)
    i, j, rows, weight = sequence_pairs(seq, max_pairs=4, generator=g)
    assert len(i) == 4
    kept = torch.bincount(rows, minlength=3)
    assert kept.sum() == 4
    for p in range(4):  # each pair's weight is its row's 3 pairs over the ones kept
        assert weight[p] == pytest.approx(3 / int(kept[rows[p]]))


def test_catalogue_pairs_pair_each_sequences_items_with_uniform_catalogue_items() -> None:
    seq = torch.tensor([[0, 0, 3, 5], [0, 0, 0, 0], [0, 7, 7, 7]])
    i, j, rows = catalogue_pairs(
        seq, per_sequence=500, num_items=10, generator=torch.Generator().manual_seed(0)
    )
    assert rows.tolist() == [0] * 500 + [2] * 500  # the empty row gets none
    assert set(i[:500].tolist()) == {3, 5} and set(i[500:].tolist()) == {7}
    assert set(j.tolist()) == set(range(1, 11))  # every catalogue item is reachable, padding never


def test_frobenius_holistic_loss_equals_a_hand_computation() -> None:
    s = torch.tensor([0.9, 0.1, 0.5, -0.2])
    t = torch.tensor([0.6, 0.1, 0.1, 0.3])
    rows = torch.tensor([0, 0, 1, 1])
    tau = 2.0
    # row 0: residuals 0.15, 0; row 1: 0.2, -0.25; row 1 was sampled at half its pairs (scale 2)
    row0 = (0.15**2 + 0.0 + 1e-8) ** 0.5
    row1 = (2 * (0.2**2 + 0.25**2) + 1e-8) ** 0.5
    got = frobenius_holistic_loss(s, t, tau, rows, torch.tensor([1.0, 1.0, 2.0, 2.0]), num_rows=2)
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_frobenius_gradient_is_finite_at_zero_residual_and_does_not_fade() -> None:
    t = torch.tensor([0.3, -0.1, 0.7])
    rows = torch.zeros(3, dtype=torch.long)
    at_zero = t.clone().requires_grad_(True)
    frobenius_holistic_loss(at_zero, t, 1.5, rows, torch.ones(3), 1).backward()
    assert torch.isfinite(at_zero.grad).all() and float(at_zero.grad.abs().max()) == 0.0
    # away from zero the gradient has unit norm / tau whatever the residual's size (mse fades with it)
    for eps in (1e-1, 1e-2):  # (near 1e-4 the 1e-8 inside the root starts to count)
        s = (t + eps).requires_grad_(True)
        frobenius_holistic_loss(s, t, 1.5, rows, torch.ones(3), 1).backward()
        assert float(s.grad.norm()) == pytest.approx(1 / 1.5, rel=1e-3)
        m = (t + eps).requires_grad_(True)
        holistic_loss(m, t, 1.5).backward()
        assert float(m.grad.norm()) == pytest.approx(2 * eps * 3**0.5 / 3 / 1.5**2, rel=1e-3)
