"""Training losses: next-item cross-entropy and the two correlation-distillation terms of KDSR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: logits held at once by the chunked full softmax: 2^21 floats (8 MiB) stays in a CPU core's cache; a GPU
#: has the bandwidth for far larger chunks
CPU_CHUNK_ELEMENTS = 1 << 21
CUDA_CHUNK_ELEMENTS = 1 << 28


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ items.T`` against ``targets``, never holding the whole (P, N) logits.

    Forward keeps only each row's log-sum-exp; backward recomputes one chunk of rows of logits at a time and
    turns it in place into the gradient ``(softmax - onehot) / P``. One extra matmul buys a working set that
    fits in cache, which on a CPU halves the time of the loss (its memory traffic, not its FLOPs, dominates),
    and on a GPU lets the catalogue grow without a (P, N) tensor. Matmuls run in ``dtype`` (bf16 under
    autocast), every reduction in float32.
    """

    @staticmethod
    def forward(ctx, hidden, items, targets, rows, dtype):  # autograd API
        h, e = hidden.to(dtype), items.to(dtype)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], rows):
            lse[s : s + rows] = torch.logsumexp((h[s : s + rows] @ e.T).float(), 1)
        target_logit = (h.float() * e[targets].float()).sum(1)
        ctx.save_for_backward(hidden, items, targets, lse)
        ctx.rows, ctx.dtype = rows, dtype
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad):  # autograd API
        hidden, items, targets, lse = ctx.saved_tensors
        h, e = hidden.to(ctx.dtype), items.to(ctx.dtype)
        scale = grad.float() / h.shape[0]
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=h.device)
        grad_e = torch.zeros(items.shape, dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], ctx.rows):
            hc = h[s : s + ctx.rows]
            g = (hc @ e.T).float()
            g.sub_(lse[s : s + ctx.rows, None]).exp_().mul_(scale)  # softmax / P
            g[torch.arange(len(hc), device=g.device), targets[s : s + ctx.rows]] -= scale  # minus onehot / P
            g = g.to(ctx.dtype)
            grad_h[s : s + ctx.rows] = (g @ e).float()
            if ctx.dtype == torch.float32:
                grad_e.addmm_(g.T, hc)
            else:
                grad_e.add_((g.T @ hc).float())
        return grad_h.to(hidden.dtype), grad_e.to(items.dtype), None, None, None


def full_softmax_ce(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all ``items`` rows (targets index them), computed in cache-sized row chunks.

    Equal to ``F.cross_entropy(hidden @ items.T, targets)`` (up to float rounding); under CUDA/CPU autocast
    the matmuls run in bf16 like the plain expression would.
    """
    dev = hidden.device.type
    dtype = torch.float32
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    budget = CUDA_CHUNK_ELEMENTS if dev == "cuda" else CPU_CHUNK_ELEMENTS
    rows = max(1, budget // max(1, items.shape[0]))
    with torch.autocast(dev, enabled=False):
        return _ChunkedSoftmaxCE.apply(hidden, items, targets, rows, dtype)


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
        num_negatives: 0 for the full softmax (chunked, see :func:`full_softmax_ce`); otherwise a sampled
            softmax over the target plus this many uniformly sampled items shared by the batch (for catalogues
            too large for a full softmax).
    """
    if num_negatives <= 0:
        return full_softmax_ce(hidden, items[1:], targets - 1)
    n = items.shape[0] - 1
    neg = torch.randint(1, n + 1, (num_negatives,), device=hidden.device, generator=generator)
    pos_logit = (hidden * items[targets]).sum(-1, keepdim=True)  # (P, 1)
    neg_logits = hidden @ items[neg].T  # (P, S)
    neg_logits = neg_logits.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], 1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))


def holistic_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean squared difference of student and teacher pair correlations, both divided by ``tau`` (``mse``).

    Its gradient fades with the residual and with the number of pairs: next to the next-item CE it barely
    acts (measured on Beauty: ~1e-4 of the CE gradient on the text table). See :func:`frobenius_holistic_loss`.
    """
    if student_scores.numel() == 0:
        return student_scores.new_zeros(())
    return ((student_scores.float() - teacher_scores.float()) / tau).pow(2).mean()


FROBENIUS_EPS = 1e-8  # inside the root, as in the authors' code: a finite gradient at zero residual


def frobenius_holistic_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    tau: float,
    rows: torch.Tensor,
    pair_weight: torch.Tensor,
    num_rows: int,
) -> torch.Tensor:
    """The authors' holistic loss (``frobenius``): per sequence, the non-squared Frobenius norm of the residual
    matrix ``|s/tau - r/tau|`` over its pairs, summed over sequences and divided by ``num_rows``.

    ``sqrt(sum_p r_p^2 + 1e-8)`` has a gradient of unit size whatever the residual's size, so the term keeps
    acting as the residual shrinks. The authors' matrix holds every unordered pair twice (both orders), so
    their norm is sqrt(2) times this one (a constant factor of the weight).

    Args:
        student_scores: (P,) student correlations of the pairs.
        teacher_scores: (P,) teacher correlations.
        tau: temperature.
        rows: (P,) index of the sequence each pair belongs to.
        pair_weight: (P,) weight of each squared residual in its sequence's sum: 1, or a sequence's pair
            count over its sampled pairs, so a sampled sequence estimates its whole matrix's norm.
        num_rows: the number of sequences the loss is averaged over (a rank's share of them under DDP is
            summed over its rows and divided by the whole batch's count, so the ranks' shares add up).
    """
    if student_scores.numel() == 0 or num_rows == 0:
        return student_scores.new_zeros((), dtype=torch.float32)
    sq = ((student_scores.float() - teacher_scores.float()) / tau).pow(2) * pair_weight.float()
    per_row = torch.zeros(int(rows.max()) + 1, dtype=torch.float32, device=sq.device).index_add_(0, rows, sq)
    present = torch.zeros_like(per_row, dtype=torch.bool).index_fill_(0, rows, True)
    return (per_row[present] + FROBENIUS_EPS).sqrt().sum() / num_rows


def code_loss(code_logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's dissected-correlation code of each pair.

    Args:
        code_logits: (P, K) for a k-means codebook, or (P, D, K) for a vq one (one head per sub-vector).
        codes: (P,) or (P, D) int64 teacher codes.

    Returns:
        The mean CE over the pairs; for vq the mean over the D sub-vectors of each one's mean CE over the
        pairs (every sub-vector has the same P pairs, so that is the mean over all P x D entries).
    """
    if code_logits.numel() == 0:
        return code_logits.new_zeros(())
    if code_logits.ndim == 3:
        if codes.shape != code_logits.shape[:2]:
            raise ValueError(
                f"vq code logits {tuple(code_logits.shape)} need codes of shape {tuple(code_logits.shape[:2])}, "
                f"got {tuple(codes.shape)}"
            )
        return F.cross_entropy(code_logits.float().flatten(0, 1), codes.flatten())
    return F.cross_entropy(code_logits.float(), codes)
