"""How much of the teacher's item-item correlation a trained student still carries ("modality forgetting").

Every modality table starts at the (reduced) teacher vectors, so at initialisation the student's pair scores
equal the teacher's and their correlation is 1. Training moves the tables; correlation distillation is meant to
keep their geometry. This measures what is left, on uniformly random item pairs (mostly pairs the distillation
loss never saw, so it is a test of whether the geometry was kept, not of whether a loss was fitted):

- ``table_r``: Pearson r between ξ(m_i, m_j) of the trained table and the teacher's ξ(t_i, t_j);
- ``kd_r``: the same for the distillation head's ξ(P m_i, P m_j), the score the holistic loss trains.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from pipeline.models.student import Student
from pipeline.supervision.scores import TeacherCorrelation, pair_scores


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


@torch.no_grad()
def teacher_agreement(
    model: Student, supervision_dir: str | Path, score: str = "cos", pairs: int = 50_000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """``{modality: {"table_r", "kd_r", "pairs"}}`` for each modality of ``model`` (empty for ID-only).

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
        n = teacher.num_items
        if n != model.num_items:
            raise ValueError(f"{supervision_dir}: teacher has {n} items, the model {model.num_items}")
        g = torch.Generator().manual_seed(seed)
        i = torch.randint(1, n + 1, (pairs,), generator=g)
        j = torch.randint(1, n + 1, (pairs,), generator=g)
        t_scores, _, valid = teacher(i, j)
        keep = valid & (i != j)
        i, j, t_scores = i[keep], j[keep], t_scores[keep]
        table = score_fn(model.modality_vectors(m, i), model.modality_vectors(m, j))
        kd = model.holistic_student_scores(m, i, j, score_fn)
        out[m] = {
            "table_r": _pearson(table, t_scores),
            "kd_r": _pearson(kd, t_scores),
            "pairs": int(keep.sum()),
        }
    return out
