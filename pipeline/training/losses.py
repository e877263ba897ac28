"""Training losses: next-item cross-entropy and the two correlation-distillation terms of KDSR."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_item_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    num_negatives: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of the next item over the whole catalogue (padding excluded).

    Args:
        hidden: (P, H) hidden states at non-padding positions.
        items: (N+1, H) item representations; row 0 is padding and is never a candidate.
        targets: (P,) next item ids in 1..N.
        num_negatives: 0 for the full softmax; otherwise a sampled softmax over the target plus this many
            uniformly sampled items shared by the batch (for catalogues too large for a full softmax).
    """
    if num_negatives <= 0:
        logits = hidden @ items[1:].T  # (P, N)
        return F.cross_entropy(logits.float(), targets - 1)
    n = items.shape[0] - 1
    neg = torch.randint(1, n + 1, (num_negatives,), device=hidden.device, generator=generator)
    pos_logit = (hidden * items[targets]).sum(-1, keepdim=True)  # (P, 1)
    neg_logits = hidden @ items[neg].T  # (P, S)
    neg_logits = neg_logits.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], 1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))


def holistic_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, tau: float) -> torch.Tensor:
    """L2 between student and teacher pair correlations, both divided by the temperature ``tau``."""
    if student_scores.numel() == 0:
        return student_scores.new_zeros(())
    return ((student_scores.float() - teacher_scores.float()) / tau).pow(2).mean()


def code_loss(code_logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's dissected-correlation code of each pair."""
    if code_logits.numel() == 0:
        return code_logits.new_zeros(())
    return F.cross_entropy(code_logits.float(), codes)
