"""Student and backbones: causality, padding invariance, shapes, persistence."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models import Student, StudentConfig, load_student, save_student


def make_student(backbone: str = "sasrec", modalities=("text",), fusion: str = "sum") -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=30,
        backbone=backbone,
        hidden=16,
        layers=2,
        heads=2,
        dropout=0.0,
        max_len=12,
        modalities=tuple(modalities),
        modality_dim=8,
        fusion=fusion,
        num_codes=5,
    )
    teacher = {m: torch.randn(31, 8) for m in modalities}
    return Student(cfg, teacher).eval()


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_changing_a_later_item_leaves_earlier_hidden_states_unchanged(backbone: str) -> None:
    model = make_student(backbone)
    seq = torch.tensor([[0, 0, 3, 7, 9, 4, 11, 2]])
    changed = seq.clone()
    changed[0, 5] = 25  # position 5 changes
    with torch.no_grad():
        h1, h2 = model.encode(seq), model.encode(changed)
    assert torch.allclose(h1[:, :5], h2[:, :5], atol=1e-6)
    assert not torch.allclose(h1[:, 5:], h2[:, 5:], atol=1e-4)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_extra_left_padding_does_not_change_real_positions(backbone: str) -> None:
    model = make_student(backbone)
    seq = torch.tensor([[3, 7, 9, 4]])
    padded = torch.tensor([[0, 0, 0, 0, 3, 7, 9, 4]])
    with torch.no_grad():
        h1, h2 = model.encode(seq), model.encode(padded)
        s1, s2 = model.user_scores(seq), model.user_scores(padded)
    assert torch.allclose(h1, h2[:, 4:], atol=1e-5)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_batch_rows_are_independent() -> None:
    model = make_student()
    a = torch.tensor([[0, 0, 5, 6, 7]])
    b = torch.tensor([[1, 2, 3, 4, 8]])
    with torch.no_grad():
        both = model.user_scores(torch.cat([a, b]))
        alone = model.user_scores(a)
    assert torch.allclose(both[0], alone[0], atol=1e-5)


@pytest.mark.parametrize("fusion", ["sum", "gate", "concat"])
def test_full_scores_is_one_matmul_against_item_representations(fusion: str) -> None:
    model = make_student(fusion=fusion, modalities=("text", "image"))
    seq = torch.tensor([[0, 3, 7, 9], [1, 2, 3, 4]])
    with torch.no_grad():
        items = model.item_representations()
        h = model.encode(seq, items)[:, -1]
        expected = h @ items.T
        assert model.user_scores(seq).shape == (2, 31)
        assert torch.allclose(model.user_scores(seq), expected, atol=1e-5)


def test_modality_tables_start_at_the_teacher_vectors() -> None:
    torch.manual_seed(0)
    t = torch.randn(31, 8)
    cfg = StudentConfig(num_items=30, hidden=16, modalities=("text",), modality_dim=8, num_codes=4)
    model = Student(cfg, {"text": t})
    assert torch.equal(model.modality_tables["text"].weight[1:], t[1:])
    assert torch.equal(model.modality_tables["text"].weight[0], torch.zeros(8))


def test_teacher_shape_mismatch_is_an_error() -> None:
    cfg = StudentConfig(num_items=30, hidden=16, modalities=("text",), modality_dim=8)
    with pytest.raises(ValueError, match="teacher vectors for text"):
        Student(cfg, {"text": torch.randn(30, 8)})


def test_save_and_load_round_trip(tmp_path) -> None:
    model = make_student(modalities=("text",))
    save_student(model, tmp_path, extra={"best_epoch": 3})
    loaded = load_student(tmp_path)
    seq = torch.tensor([[0, 3, 7, 9]])
    with torch.no_grad():
        assert torch.equal(model.user_scores(seq), loaded.user_scores(seq))


def test_corrupt_or_missing_checkpoint_gives_a_clear_error(tmp_path) -> None:
    with pytest.raises(PipelineError, match="config.json: not found"):
        load_student(tmp_path)
    save_student(make_student(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(PipelineError, match="model.safetensors: corrupt"):
        load_student(tmp_path)


def test_input_dropout_is_applied_once() -> None:
    # regression: the student and the backbone both dropped the input, so p=0.5 removed 75% of it
    torch.manual_seed(0)
    model = Student(StudentConfig(num_items=50, hidden=32, dropout=0.5, max_len=20)).train()
    torch.nn.init.zeros_(model.backbone.positions.weight)  # the encoder input is then dropout(emb * sqrt(H))
    seen = []
    model.backbone.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    seq = torch.randint(1, 51, (64, 20))
    model.encode(seq)
    x, clean = seen[0], model.item_emb(seq) * 32**0.5
    kept = x != 0
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.03)
    torch.testing.assert_close(x[kept], 2.0 * clean[kept])  # survivors scaled by 1/(1-p) exactly once
