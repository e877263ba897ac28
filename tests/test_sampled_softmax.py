"""Sampled softmax with known answers: the whole catalogue as the sample is the full softmax, accidental hits
are masked, the logQ-corrected gradient tends to the full softmax's, the sampler follows its distribution, and
a sampled-softmax training step touches only the rows it samples."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from test_trainer import params, train, write_tiny_data

from pipeline.config import Params
from pipeline.training.losses import NegativeSampler, next_item_loss, sampled_softmax_ce


def test_the_whole_catalogue_as_the_sample_is_the_full_softmax_ce() -> None:
    g = torch.Generator().manual_seed(0)
    n = 17
    h = torch.randn(9, 8, generator=g, requires_grad=True)
    items = torch.randn(n + 1, 8, generator=g, requires_grad=True)
    targets = torch.randint(1, n + 1, (9,), generator=g)
    ref = F.cross_entropy(h @ items[1:].T, targets - 1)
    ref_grads = torch.autograd.grad(ref, (h, items))
    whole = torch.arange(1, n + 1)
    # uniform q over the whole catalogue taken once: E[n_j] = N * (1/N) = 1, so the correction is log 1 = 0;
    # and without any correction it is the same loss
    for log_e in (torch.zeros(n), None):
        got = next_item_loss(h, items, targets, (whole, log_e))
        assert got.item() == pytest.approx(ref.item(), rel=1e-6)
        for a, b in zip(torch.autograd.grad(got, (h, items)), ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_accidental_hits_are_masked() -> None:
    # logits: target 2 scores 1; candidates [2, 3, 2] score [1, 0, 1]: both copies of 2 are hits
    h = torch.tensor([[1.0, 0.0]])
    vec = {2: [1.0, 0.0], 3: [0.0, 1.0]}
    cand = torch.tensor([2, 3, 2])
    neg = torch.tensor([vec[c] for c in cand.tolist()])
    pos = torch.tensor([vec[2]])
    loss = sampled_softmax_ce(h, pos, neg, torch.tensor([2]), cand, torch.zeros(3))
    # only item 3 competes: -log(e^1 / (e^1 + e^0))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    # unmasked, the hits would count: -log(e / (3e + 1))
    unmasked = F.cross_entropy(torch.tensor([[1.0, 1.0, 0.0, 1.0]]), torch.tensor([0]))
    assert unmasked.item() > loss.item() + 0.5


def test_the_log_expected_count_is_subtracted_from_the_negatives_only() -> None:
    h = torch.tensor([[1.0]])
    pos, neg = torch.tensor([[2.0]]), torch.tensor([[1.0], [0.5]])
    log_e = torch.tensor([math.log(4.0), math.log(0.25)])
    got = sampled_softmax_ce(h, pos, neg, torch.tensor([1]), torch.tensor([2, 3]), log_e)
    expected = -2.0 + math.log(math.exp(2.0) + math.exp(1.0) / 4.0 + math.exp(0.5) / 0.25)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _skewed_counts(n: int) -> torch.Tensor:
    """Zipf-like training target counts of items 1..n (index 0, padding, holds a count it must ignore)."""
    return torch.cat([torch.tensor([1000.0]), 500.0 / torch.arange(1, n + 1).double()]).round()


@pytest.mark.parametrize(("kind", "alpha"), [("popularity", 0.75), ("popularity", 1.0), ("uniform", 0.75)])
def test_sampling_frequencies_follow_the_distribution(kind: str, alpha: float) -> None:
    n = 30
    counts = _skewed_counts(n)
    sampler = NegativeSampler(counts, kind, num_negatives=50_000, alpha=alpha)
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([sampler.sample(g)[0] for _ in range(4)])
    assert drawn.min() >= 1 and drawn.max() <= n  # never the padding row
    observed = torch.bincount(drawn - 1, minlength=n).numpy()
    weight = (counts[1:] + 1).pow(alpha) if kind == "popularity" else torch.ones(n, dtype=torch.float64)
    expected = (weight / weight.sum() * len(drawn)).numpy()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # the test can fail: the same draws against the neighbouring distribution are rejected
    other = (counts[1:] + 1).pow(0.5 if kind == "popularity" else 1.0)
    assert stats.chisquare(observed, (other / other.sum() * len(drawn)).numpy()).pvalue < 1e-6


def test_log_expected_count_of_each_kind() -> None:
    counts = torch.tensor([0.0, 6.0, 2.0, 0.0, 0.0])  # items 1..4; 3 and 4 never a training target
    g = torch.Generator().manual_seed(0)
    uni = NegativeSampler(counts, "uniform", num_negatives=8)
    cand, log_e = uni.sample(g)
    torch.testing.assert_close(log_e, torch.full((8,), math.log(8 / 4)))
    pop = NegativeSampler(counts, "popularity", num_negatives=8, alpha=1.0)
    cand, log_e = pop.sample(g)
    q = torch.tensor([7.0, 3.0, 1.0, 1.0]) / 12  # (count + 1)^1, normalised
    torch.testing.assert_close(log_e, (8 * q[cand - 1]).log().float())
    mixed = NegativeSampler(counts, "mixed", num_negatives=8)
    batch = torch.tensor([[0, 1, 1], [0, 0, 2]])  # three targets: p = (0.75, 0.25, 0, 0)
    cand, log_e = mixed.sample(g, batch)
    assert cand[:2].tolist() == [1, 2] and len(cand) == 2 + 8  # distinct batch targets, then the extras
    p = torch.tensor([0.75, 0.25, 0.0, 0.0])
    inclusion = 1 - (1 - p) ** 3
    torch.testing.assert_close(log_e, (inclusion[cand - 1] + 8 / 4).log().float())
    with pytest.raises(ValueError, match="batch's targets"):
        mixed.sample(g)
    with pytest.raises(ValueError, match="train.negatives"):
        NegativeSampler(counts, "hard", num_negatives=8)


def _sampled_gradient(kind: str, logq: bool, reps: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over ``reps`` samples of the sampled loss's gradient on the item table, and the full one."""
    n, dim = 40, 6
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, dim, generator=g)
    items = (0.7 * torch.randn(n + 1, dim, generator=g)).requires_grad_(True)
    targets = torch.tensor([1, 2, 5, 11, 30])
    full = torch.autograd.grad(next_item_loss(h, items, targets), items)[0]
    sampler = NegativeSampler(_skewed_counts(n), kind, num_negatives=m, alpha=1.0)
    total = torch.zeros_like(items)
    for _ in range(reps):
        cand, log_e = sampler.sample(g, targets.unsqueeze(0))
        loss = next_item_loss(h, items, targets, (cand, log_e if logq else None))
        total += torch.autograd.grad(loss, items)[0]
    return total / reps, full


@pytest.mark.parametrize("kind", ["popularity", "mixed_popularity"])
def test_logq_corrected_gradient_expectation_approaches_the_full_softmax(kind: str) -> None:
    mean, full = _sampled_gradient(kind, logq=True, reps=60, m=2000)
    err = ((mean - full).norm() / full.norm()).item()
    assert err < 0.05, err
    raw, _ = _sampled_gradient(kind, logq=False, reps=60, m=2000)
    raw_err = ((raw - full).norm() / full.norm()).item()
    assert raw_err > 5 * err and raw_err > 0.3, (raw_err, err)  # uncorrected: biased, whatever the size
    # the bias of the corrected estimate shrinks as the sample grows
    small, _ = _sampled_gradient(kind, logq=True, reps=60, m=50)
    assert ((small - full).norm() / full.norm()).item() > err


@pytest.mark.parametrize("negatives", ["uniform", "popularity", "mixed", "mixed_popularity"])
def test_a_sampled_softmax_run_trains_without_scoring_the_whole_catalogue(
    base_params: Params, tmp_path: Path, monkeypatch, negatives: str
) -> None:
    from pipeline.models import Student

    seq, sup = write_tiny_data(tmp_path)
    full_table_calls = []
    original = Student.item_representations

    def counted(self):
        full_table_calls.append(torch.is_grad_enabled())
        return original(self)

    monkeypatch.setattr(Student, "item_representations", counted)
    p = params(
        base_params,
        **{"train.loss": "sampled_softmax", "train.num_negatives": 16, "train.negatives": negatives},
    )
    summary = train(p, tmp_path, seq, sup, negatives)
    assert summary["finished"]
    # validation scores the catalogue (no gradient); no training step does
    assert full_table_calls and not any(full_table_calls)


def _tiny_training(seq: torch.Tensor, backbone: str = "sasrec"):
    """What :func:`batch_loss` reads of a ``Training``, for a tied text model without distillation."""
    from types import SimpleNamespace

    from pipeline.models import Student, StudentConfig

    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=20, hidden=16, heads=2, modalities=("text",), modality_dim=8, dropout=0.0, backbone=backbone
    )
    model = Student(cfg, {"text": torch.randn(21, 8)}).eval()
    return SimpleNamespace(model=model, fwd_model=model, windows=seq, mean_targets=10.0, kd_on=False)


@pytest.mark.parametrize("negatives", ["popularity", "mixed"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("backbone", ["sasrec", "session_graph"])  # the graph reads the unfused parts
@pytest.mark.parametrize(
    "prior", [0.0, 3.0]
)  # train.prior_in_training: the prior's blocks on the step's rows
def test_the_step_on_the_sampled_rows_equals_the_loss_on_the_whole_table(
    negatives: str, padded: bool, backbone: str, prior: float
) -> None:
    import dataclasses

    from pipeline.config import TrainParams
    from pipeline.training.distributed import DistInfo
    from pipeline.training.objective import batch_loss, negative_sampler

    seq = torch.tensor([[0, 0, 3, 4, 5], [0, 7, 8, 9, 3], [11, 12, 13, 14, 15]])
    if not padded:  # no padding anywhere: the remapped ids must still keep 0 for padding only
        seq = seq[:, 2:]
    t = _tiny_training(seq, backbone)
    t.model.cfg = dataclasses.replace(t.model.cfg, prior_in_training=prior)
    p = TrainParams(loss="sampled_softmax", negatives=negatives, num_negatives=6)
    got = batch_loss(t, p, seq, torch.Generator().manual_seed(5), DistInfo()).ce

    cand, log_e = negative_sampler(t, p).sample(torch.Generator().manual_seed(5), seq[:, 1:])
    items = t.model.item_representations()
    inputs, targets = seq[:, :-1], seq[:, 1:]
    keep = targets != 0
    hidden = t.model.encode(inputs, items)
    ref = next_item_loss(*t.model.training_factors(hidden, inputs, keep, items), targets[keep], (cand, log_e))
    if prior:  # the prior changes the loss
        plain = next_item_loss(*t.model.logit_factors(hidden[keep], items), targets[keep], (cand, log_e))
        assert abs(ref.item() - plain.item()) > 1e-3
    assert got.item() == pytest.approx(ref.item() * keep.sum().item() / 10.0, rel=1e-5)

    # two DDP ranks score their rows against the same sample: their shares add up to the one-process loss
    shares = [batch_loss(t, p, seq, torch.Generator().manual_seed(5), DistInfo(r, 2)).ce for r in (0, 1)]
    assert sum(s.item() for s in shares) == pytest.approx(got.item(), rel=1e-5)
