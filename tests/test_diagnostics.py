"""Per-run diagnostics of distillation: gradient norms on the tables and teacher agreement, known answers."""

from __future__ import annotations

import functools

import pytest
import torch

from pipeline.models import Student, StudentConfig
from pipeline.supervision.codebooks import CorrelationCodebook, ProductCodebook
from pipeline.supervision.scores import TeacherCorrelation, pair_scores
from pipeline.training.diagnostics import random_pairs, table_gradient_norms, teacher_agreement_on_pairs
from pipeline.training.losses import code_loss, holistic_loss

N, D = 25, 8


def setup() -> tuple[Student, TeacherCorrelation, torch.Tensor]:
    torch.manual_seed(0)
    vectors = torch.cat([torch.zeros(1, D), torch.randn(N, D)])
    cfg = StudentConfig(
        num_items=N, hidden=16, modalities=("text",), modality_dim=D, num_codes=3, kd_projection="identity"
    )
    model = Student(cfg, {"text": vectors})
    teacher = TeacherCorrelation(vectors, CorrelationCodebook(torch.randn(3, 2)), "cos")
    return model, teacher, vectors


def test_gradient_norms_match_a_manual_autograd_computation() -> None:
    model, teacher, _ = setup()
    with torch.no_grad():
        model.modality_tables["text"].weight.add_(0.3 * torch.randn(N + 1, D))  # a non-zero residual
    score = functools.partial(pair_scores, score="cos")
    i, j = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    t_scores, t_codes, _ = teacher(i, j)
    hidden = model.encode(torch.tensor([[0, 1, 2, 3]]))[:, -1]
    terms = {
        "ce": torch.nn.functional.cross_entropy(model.full_scores(hidden), torch.tensor([9])),
        "hol_text": holistic_loss(model.holistic_student_scores("text", i, j, score), t_scores, 1.5),
        "code_text": code_loss(model.code_logits("text", i, j), t_codes),
    }
    weights = {"hol_text": 0.5, "code_text": 2.0}
    got = table_gradient_norms(model, terms, weights)
    table = model.modality_tables["text"].weight
    for name, key in (("ce", "grad_ce_text"), ("hol_text", "grad_hol_text"), ("code_text", "grad_code_text")):
        model.zero_grad()
        (terms[name] * weights.get(name, 1.0)).backward(retain_graph=True)
        assert got[key] == pytest.approx(float(table.grad.norm()), rel=1e-5), key
    assert set(got) == {"grad_ce_text", "grad_hol_text", "grad_code_text"}


def test_agreement_is_perfect_at_initialisation_and_pairs_are_a_fixed_sample() -> None:
    model, teacher, _ = setup()
    i, j = random_pairs(teacher, 3000, seed=0)
    i2, j2 = random_pairs(teacher, 3000, seed=0)
    assert torch.equal(i, i2) and torch.equal(j, j2) and bool((i != j).all())
    got = teacher_agreement_on_pairs(
        model, "text", teacher, i, j, functools.partial(pair_scores, score="cos")
    )
    assert got["table_r"] == pytest.approx(1.0, abs=1e-6) and got["kd_r"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= got["code_acc"] <= 1.0


def test_vq_code_accuracy_is_the_mean_over_sub_vectors_of_each_heads_accuracy() -> None:
    torch.manual_seed(0)
    vectors = torch.cat([torch.zeros(1, D), torch.randn(N, D)])
    cfg = StudentConfig(
        num_items=N, hidden=16, modalities=("text",), modality_dim=D, num_codes=3, code_groups=2
    )
    model = Student(cfg, {"text": vectors})
    teacher = TeacherCorrelation(vectors, ProductCodebook(torch.tensor([[-0.5, 0.0, 0.5]] * 2)), "cos")
    i, j = random_pairs(teacher, 500, seed=1)
    score = functools.partial(pair_scores, score="cos")
    got = teacher_agreement_on_pairs(model, "text", teacher, i, j, score)["code_acc"]
    _, codes, _ = teacher(i, j)
    pred = model.code_logits("text", i, j).argmax(-1)  # (P, 2)
    per_sub = [float((pred[:, d] == codes[:, d]).float().mean()) for d in range(2)]
    assert got == pytest.approx(sum(per_sub) / 2, abs=1e-7)
    # constant logits: every head answers level 0, so the accuracy is the share of level-0 codes
    with torch.no_grad():
        head = model.code_heads["text"]
        head.weight2.zero_()
        head.bias2.zero_()
    assert teacher_agreement_on_pairs(model, "text", teacher, i, j, score)["code_acc"] == pytest.approx(
        float((codes == 0).float().mean())
    )
