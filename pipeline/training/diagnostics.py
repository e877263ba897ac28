"""What makes "distillation acts" visible in every run: gradient shares on the modality tables, and how much
of the teacher's geometry the table and the distillation heads keep.

- :func:`table_gradient_norms`: the norm of each loss term's gradient (as weighted in the loss) on each
  modality table, from one batch; a term whose gradient is orders of magnitude below the CE's cannot act.
  Under DDP it is rank 0's share of the batch.
- :func:`teacher_agreement_on_pairs`: on a fixed sample of item pairs, the Pearson r of the table's and of
  the holistic head's pair scores with the teacher's (``table_r``, ``kd_r``), and the code head's top-1
  accuracy on the teacher's dissected codes (``code_acc``; for a vq codebook the mean over sub-vectors of
  each sub-vector head's accuracy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.models import Student
from pipeline.supervision.scores import TeacherCorrelation


def table_gradient_norms(
    model: Student, terms: dict[str, torch.Tensor], weights: dict[str, float]
) -> dict[str, float]:
    """Norms of each loss term's gradient (as weighted in the loss) on the modality tables.

    ``grad_ce_<m>``: the next-item CE on table ``m``; ``grad_hol_<m>`` / ``grad_code_<m>``: the distillation
    terms of modality ``m`` (``terms`` named as :func:`pipeline.training.objective.kd_terms` names them) on
    their own table. Uses ``torch.autograd.grad`` with the graph retained, so the step's backward can follow.
    """
    out: dict[str, float] = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        mods = model.cfg.modalities if name == "ce" else [name.split("_", 1)[1]]
        tables = [model.modality_tables[m].weight for m in mods]
        grads = torch.autograd.grad(
            term * weights.get(name, 1.0), tables, retain_graph=True, allow_unused=True
        )
        for m, g in zip(mods, grads, strict=True):
            key = f"grad_ce_{m}" if name == "ce" else f"grad_{name}"
            if g is not None and g.is_sparse:  # sparse table updates: the rows' entries, summed per row
                g = g.coalesce().values()
            out[key] = 0.0 if g is None else float(torch.linalg.vector_norm(g.float()))
    return out


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def random_pairs(teacher: TeacherCorrelation, pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of uniformly random pairs of distinct, non-excluded items (ids on the CPU)."""
    n = teacher.num_items
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(1, n + 1, (pairs,), generator=g)
    j = torch.randint(1, n + 1, (pairs,), generator=g)
    excluded = teacher.excluded.cpu()
    keep = (i != j) & ~excluded[i] & ~excluded[j]
    return i[keep], j[keep]


@torch.inference_mode()
def teacher_agreement_on_pairs(
    model: Student,
    modality: str,
    teacher: TeacherCorrelation,
    i: torch.Tensor,
    j: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    items: torch.Tensor | None = None,
) -> dict[str, float]:
    """``table_r``, ``kd_r`` and (with a code head) ``code_acc`` of ``model`` on the pairs ``(i, j)``
    (``items``: ``model.item_representations()`` when the caller has them, for the ``item`` projection)."""
    dev = teacher.teacher.device
    i, j = i.to(dev), j.to(dev)
    t_scores, t_codes, _ = teacher(i, j)
    table = score_fn(model.modality_vectors(modality, i), model.modality_vectors(modality, j))
    kd = model.holistic_student_scores(modality, i, j, score_fn, items)
    out = {"table_r": _pearson(table, t_scores), "kd_r": _pearson(kd, t_scores)}
    if modality in model.code_heads:
        pred = model.code_logits(modality, i, j).argmax(-1)  # (P,) k-means, (P, D) vq
        # vq: each sub-vector has the same P pairs, so the mean over P x D is the mean of the per-sub-vector
        # accuracies
        out["code_acc"] = float((pred == t_codes).float().mean())
    return out
