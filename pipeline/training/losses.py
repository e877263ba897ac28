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

    ``targets`` is (P,), or (P, D) with ``weights`` (P, D) for a soft label per row (each row's weights sum
    to 1; a weight of 0 leaves its column out): the row's loss is then ``lse - sum_d w_d logit[t_d]``. With
    ``smoothing`` = eps the label is ``(1 - eps) x`` that ``+ eps x`` uniform over the N items (torch's
    ``label_smoothing``): the loss subtracts ``eps x mean_j logit[j]`` instead, which is ``h . mean(items)``.

    One pass over cache-sized chunks of rows of logits computes each row's log-sum-exp and, when a gradient
    will be needed, the gradient at once: the chunk becomes ``(softmax - onehot) / P`` in place (one exp of the
    logits serves both), and its products with the items and the hidden rows are accumulated. Backward then
    only scales the stored gradients by the incoming scalar. Three matmuls of the logits' size per step (the
    logits, and the two gradients), none recomputed; a working set that fits in cache, which on a CPU matters
    more than the FLOPs; and on a GPU no (P, N) tensor however large the catalogue. Matmuls run in ``dtype``
    (bf16 under autocast), every reduction in float32.
    """

    @staticmethod
    def forward(ctx, hidden, items, targets, weights, smoothing, rows, dtype, with_grad):  # autograd API
        h, e = hidden.to(dtype), items.to(dtype)
        n_rows = h.shape[0]
        lse = torch.empty(n_rows, dtype=torch.float32, device=h.device)
        grad_h = grad_e = None
        if with_grad:
            grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=h.device)
            grad_e = torch.zeros(items.shape, dtype=torch.float32, device=h.device)
        inv = 1.0 / max(1, n_rows)
        hit = inv * (1.0 - smoothing)  # what a row's label takes from its softmax / P
        for s in range(0, n_rows, rows):
            hc = h[s : s + rows]
            logits = (hc @ e.T).float()
            top = logits.amax(1, keepdim=True)
            p = logits.sub_(top).exp_()  # exp(logit - max), in place
            total = p.sum(1, keepdim=True)
            lse[s : s + rows] = (top + total.log()).squeeze(1)
            if with_grad:
                p.mul_(inv / total)  # softmax / P
                if weights is None:  # minus onehot / P
                    p[torch.arange(len(hc), device=p.device), targets[s : s + rows]] -= hit
                else:  # minus the soft label / P (scatter_add: a target twice in a row counts twice)
                    p.scatter_add_(1, targets[s : s + rows], weights[s : s + rows] * -hit)
                if smoothing:  # minus the uniform part / P
                    p.sub_(inv * smoothing / e.shape[0])
                g = p.to(dtype)
                grad_h[s : s + rows] = (g @ e).float()
                if dtype == torch.float32:
                    grad_e.addmm_(g.T, hc)
                else:
                    grad_e.add_((g.T @ hc).float())
        if weights is None:
            target_logit = (h.float() * e[targets].float()).sum(1)
        else:
            target_logit = torch.einsum("ph,pdh,pd->p", h.float(), e[targets].float(), weights)
        if smoothing:
            target_logit = (1.0 - smoothing) * target_logit + smoothing * (h.float() @ e.float().mean(0))
        if with_grad:
            ctx.save_for_backward(grad_h, grad_e)
        ctx.dtypes = (hidden.dtype, items.dtype)
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad):  # autograd API
        grad_h, grad_e = ctx.saved_tensors
        scale = grad.float()
        h_dtype, e_dtype = ctx.dtypes
        return (grad_h * scale).to(h_dtype), (grad_e * scale).to(e_dtype), None, None, None, None, None, None


def full_softmax_ce(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over all ``items`` rows (targets index them), computed in cache-sized row chunks.

    ``targets`` (P,), or (P, D) with ``weights`` (P, D), each row summing to 1: a soft label per row.
    ``smoothing``: the share of each label spread evenly over every row of ``items``.

    Equal to ``F.cross_entropy(hidden @ items.T, targets)`` (up to float rounding); under CUDA/CPU autocast
    the matmuls run in bf16 like the plain expression would. The gradient is computed in the same pass when
    grad mode is on and an input requires it (:class:`_ChunkedSoftmaxCE`).
    """
    dev = hidden.device.type
    dtype = torch.float32
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    budget = CUDA_CHUNK_ELEMENTS if dev == "cuda" else CPU_CHUNK_ELEMENTS
    rows = max(1, budget // max(1, items.shape[0]))
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or items.requires_grad)
    with torch.autocast(dev, enabled=False):
        w = None if weights is None else weights.float()
        return _ChunkedSoftmaxCE.apply(hidden, items, targets, w, float(smoothing), rows, dtype, with_grad)


def next_item_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    weights: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of the next item (padding excluded): over the whole catalogue, or over a sample of it.

    Args:
        hidden: (P, H) hidden states at non-padding positions.
        items: (N+1, H) item representations; row 0 is padding and is never a candidate.
        targets: (P,) next item ids in 1..N; or (P, D) ids in 0..N with ``weights`` (P, D), a soft label per
            row (:func:`pipeline.training.batches.future_targets`; id 0 only where its weight is 0).
        smoothing: full softmax only: the share of each label spread evenly over the N items (not padding).
        negatives: None for the full softmax (chunked, see :func:`full_softmax_ce`); otherwise ``(candidates,
            log_expected)`` as :meth:`NegativeSampler.sample` returns them, for :func:`sampled_softmax_ce`.
    """
    if negatives is None:
        if weights is not None:
            return full_softmax_ce(hidden, items[1:], (targets - 1).clamp_min(0), weights, smoothing)
        return full_softmax_ce(hidden, items[1:], targets - 1, smoothing=smoothing)
    if weights is not None or smoothing:
        raise ValueError("a soft label (weights, smoothing) needs the full softmax (negatives None)")
    candidates, log_expected = negatives
    return sampled_softmax_ce(hidden, items[targets], items[candidates], targets, candidates, log_expected)


def sampled_softmax_ce(
    hidden: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    log_expected: torch.Tensor | None,
) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy: each row's target against candidates shared by the batch.

    The full softmax loss of a row is ``-o_y + log Z`` with ``Z = sum_j exp(o_j)`` over the catalogue. Following
    Bengio and Senecal's importance-sampling estimate of the partition function, draw a multiset S of
    candidates in which item j appears ``E[n_j]`` times in expectation; then ``sum_{s in S, s != y}
    exp(o_s) / E[n_s]`` is an unbiased estimate of ``sum_{j != y} exp(o_j)``, and

        loss = -o_y + log(exp(o_y) + sum_{s in S, s != y} exp(o_s - log E[n_s]))

    is the cross-entropy of a softmax over ``[o_y, o_s - log E[n_s]]`` with the target in column 0. So each
    candidate's logit is corrected by ``log E[n_s]`` (for m draws with replacement from q, ``log m + log
    q(s)``: the logQ correction of Yi et al. 2019, "Sampling-bias-corrected neural modeling", for in-batch
    and sampled negatives); the positive's logit stays uncorrected, because its own term is exact, not
    estimated; and a candidate equal to the row's target (an accidental hit) is masked to -inf, because the
    exact term already counts it. As the sample grows the estimate tends to Z, so the loss and its gradient
    tend to the full softmax's (biased for a finite sample, by Jensen's inequality on the log). With the whole
    catalogue once as the sample, ``E[n_j] = 1``, the correction is 0 and the loss equals the full softmax CE.
    Without the correction (``log_expected`` None) popular items, sampled more often, are pushed down more
    than the full softmax pushes them.

    Args:
        hidden: (P, H) hidden states; positives: (P, H) the targets' vectors; negatives: (S, H) the
            candidates' vectors.
        targets: (P,) target ids; candidates: (S,) candidate ids (repeats allowed, each counts).
        log_expected: (S,) ``log E[n_s]``, or None for the uncorrected logits.
    """
    pos = (hidden.float() * positives.float()).sum(-1, keepdim=True)  # (P, 1)
    neg = (hidden @ negatives.T).float()  # (P, S), bf16 matmul under autocast
    if log_expected is not None:
        neg = neg - log_expected.float()
    neg = neg.masked_fill(candidates.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, neg], 1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device))


class NegativeSampler:
    """The negatives of ``train.loss: sampled_softmax``, one sample per batch shared by its rows.

    Kinds: ``uniform`` (q(j) = 1/N); ``popularity`` (q(j) proportional to ``(c_j + 1)^alpha``, c_j the item's
    count among the training targets; the +1 keeps every item reachable, so the corrected estimate covers
    the whole catalogue); ``mixed`` and ``mixed_popularity``: the batch's distinct targets (in-batch
    negatives, drawn in effect from the training target distribution p(j) = c_j / sum c) plus
    ``num_negatives`` extras, uniform or popularity (Yang et al. 2020's mixed negative sampling: the batch
    covers the head, the extras the tail).

    The expected count of item j in the sample, whose log corrects its logit (:func:`sampled_softmax_ce`),
    is ``m q(j)`` for m draws with replacement, plus, with in-batch negatives, its inclusion probability
    among the batch's P targets taken as P independent draws from p, ``1 - (1 - p(j))^P``. Summing the two
    parts' expected counts (the balance heuristic of multiple importance sampling) keeps the estimate of the
    partition function unbiased whatever the mix.
    """

    KINDS = ("uniform", "popularity", "mixed", "mixed_popularity")

    def __init__(
        self, target_counts: torch.Tensor, kind: str, num_negatives: int, alpha: float = 0.75
    ) -> None:
        """``target_counts`` (N+1,): how often each item is a training target (index 0, padding, ignored)."""
        if kind not in self.KINDS:
            raise ValueError(f"train.negatives: {kind!r} is none of {', '.join(self.KINDS)}")
        if num_negatives < 1:
            raise ValueError(f"train.num_negatives must be >= 1, got {num_negatives}")
        counts = target_counts[1:].double().cpu()
        self.num_items = len(counts)
        if self.num_items < 1:
            raise ValueError("the catalogue has no items to sample negatives from")
        self.kind, self.num_negatives = kind, num_negatives
        self.uniform = kind in ("uniform", "mixed")
        weight = torch.ones_like(counts) if self.uniform else (counts + 1.0).pow(alpha)
        self.q = weight / weight.sum()  # (N,) float64, item j at index j - 1
        self.cdf = torch.cumsum(self.q, 0)
        self.in_batch = kind.startswith("mixed")
        total = counts.sum()
        if self.in_batch and total <= 0:
            raise ValueError(f"train.negatives: {kind} needs training targets, and there are none")
        self.log1m_p = torch.log1p(-counts / total) if self.in_batch else None  # log(1 - p(j))

    def sample(
        self, generator: torch.Generator | None, batch_targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(candidates, log_expected)``: (S,) item ids in 1..N and (S,) float32 ``log E[n_j]`` of each.

        Draws on the CPU from ``generator`` (every DDP rank passing the same generator draws the same
        sample). ``batch_targets``: the whole batch's target ids (0 = padding), for the in-batch kinds.
        """
        m = self.num_negatives
        if self.uniform:
            idx = torch.randint(self.num_items, (m,), generator=generator)
        else:
            u = torch.rand(m, dtype=torch.float64, generator=generator)
            idx = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.num_items - 1)
        if self.in_batch:
            if batch_targets is None:
                raise ValueError(f"train.negatives: {self.kind} needs the batch's targets")
            real = batch_targets[batch_targets > 0].cpu()
            idx = torch.cat([torch.unique(real) - 1, idx])
        expected = m * self.q[idx]
        if self.in_batch:
            expected += -torch.expm1(len(real) * self.log1m_p[idx])  # 1 - (1 - p)^P
        return idx + 1, expected.log().float()


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
