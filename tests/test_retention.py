"""What is left of the teacher's correlations in a student: known answers at and away from initialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.experiments.retention import teacher_agreement
from pipeline.io import write_parquet
from pipeline.models import Student, StudentConfig
from pipeline.supervision.codebooks import CorrelationCodebook

N, D = 40, 8


@pytest.fixture
def supervision(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    vectors = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    write_parquet(
        tmp_path / "teacher_text.parquet",
        {
            "item": np.arange(1, N + 1, dtype=np.int32),
            "vector": vectors.numpy(),
            "missing": np.zeros(N, bool),
        },
    )
    CorrelationCodebook(torch.eye(2)).save(tmp_path / "codebook_text.safetensors")
    return tmp_path, torch.cat([torch.zeros(1, D), vectors])


def student(teacher: torch.Tensor | None, modalities=("text",)) -> Student:
    cfg = StudentConfig(
        num_items=N, hidden=16, modalities=modalities, modality_dim=D, num_codes=2, kd_projection="identity"
    )
    return Student(cfg, None if teacher is None else {"text": teacher})


@pytest.mark.parametrize("score", ["cos", "dot", "euclidean", "manhattan"])
def test_a_student_at_initialisation_agrees_perfectly(supervision, score) -> None:
    root, teacher = supervision
    got = teacher_agreement(student(teacher), root, score, pairs=2000)["text"]
    assert got["table_r"] == pytest.approx(1.0, abs=1e-6)
    assert got["kd_r"] == pytest.approx(1.0, abs=1e-6)  # P starts at the identity
    assert 1900 < got["pairs"] < 2000  # pairs of an item with itself are dropped (1 in 40)


def test_agreement_falls_as_the_table_drifts_and_is_the_same_sample_each_time(supervision) -> None:
    root, teacher = supervision
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(teacher.shape, generator=g)
    rs = []
    for scale in (0.0, 0.3, 1.0, 3.0):
        model = student(teacher)
        with torch.no_grad():
            model.modality_tables["text"].weight.add_(scale * noise)
        rs.append(teacher_agreement(model, root, "cos", pairs=5000)["text"]["table_r"])
    assert rs[0] == pytest.approx(1.0, abs=1e-6)
    assert rs[0] > rs[1] > rs[2] > rs[3] and rs[3] < 0.5, rs
    again = student(teacher)
    with torch.no_grad():
        again.modality_tables["text"].weight.add_(0.3 * noise)
    assert teacher_agreement(again, root, "cos", pairs=5000)["text"]["table_r"] == rs[1]


def test_an_id_only_student_has_nothing_to_agree_on(supervision) -> None:
    root, _ = supervision
    assert teacher_agreement(student(None, modalities=()), root) == {}
