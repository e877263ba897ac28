"""How much of the teacher's item-item correlation a trained student still carries ("modality forgetting").

Every modality table starts at the (reduced) teacher vectors, so at initialisation the student's pair scores
equal the teacher's and their correlation is 1. Training moves the tables; correlation distillation is meant to
keep their geometry. This measures what is left, on uniformly random item pairs (mostly pairs the distillation
loss never saw, so it is a test of whether the geometry was kept, not of whether a loss was fitted):

- ``table_r``: Pearson r between ξ(m_i, m_j) of the trained table and the teacher's ξ(t_i, t_j);
- ``kd_r``: the same for the distillation head's ξ(P m_i, P m_j), the score the holistic loss trains;
- ``code_acc``: the code head's top-1 accuracy on the teacher's dissected codes of the same pairs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from pipeline.models.student import Student
from pipeline.supervision.scores import TeacherCorrelation, pair_scores
from pipeline.training.diagnostics import random_pairs, teacher_agreement_on_pairs


@torch.no_grad()
def teacher_agreement(
    model: Student, supervision_dir: str | Path, score: str = "cos", pairs: int = 50_000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """``{modality: {"table_r", "kd_r", "code_acc", "pairs"}}`` for each modality of ``model`` (empty for
    ID-only).

    Args:
        model: a trained student (any device; read on the CPU).
        supervision_dir: the correlate stage's output (``teacher_<modality>.parquet`` and codebooks).
        score: ξ, as in ``correlate.score``.
        pairs: random pairs drawn (pairs of an item with itself or with an excluded item are dropped).
        seed: the pair sample's seed (the same pairs for every model of one catalogue).
    """
    model = model.cpu().eval()
    out: dict[str, dict[str, float]] = {}
    score_fn = functools.partial(pair_scores, score=score)
    for m in model.cfg.modalities:
        teacher = TeacherCorrelation.from_dir(supervision_dir, m, score)
        if teacher.num_items != model.num_items:
            raise ValueError(
                f"{supervision_dir}: teacher has {teacher.num_items} items, the model {model.num_items}"
            )
        i, j = random_pairs(teacher, pairs, seed)
        out[m] = {**teacher_agreement_on_pairs(model, m, teacher, i, j, score_fn), "pairs": len(i)}
    return out
