"""Blocked holistic top-k: each item's most correlated other items without materialising the N x N matrix.

Rows are processed ``block_size`` at a time; for each row block the catalogue is scanned in column chunks
whose score tile is at most ``tile_elements`` floats. The first chunk gives each row an exact top-k by
``torch.topk``; every later chunk only has to find the few columns that beat the row's current k-th best
score, which is far cheaper than a top-k over the tile: the tile's maxima over 256-column segments are
compared with that threshold, and only the segments that pass are searched column by column. Memory is
O(block_size x chunk + N x k). Ties are broken deterministically: equal scores rank the lower item first.

Candidate search in bfloat16 (``precision="bfloat16"``, for ``dot`` and ``cos`` on the CPU) computes the
tiles with bf16 inputs, which AMX/AVX512-BF16 cores multiply several times faster than float32, keeps every
column whose bf16 score is within a proven rounding bound of the threshold, and rescores those candidates
in float32, so the result is the float32 top-k: the bf16 search only decides which columns to look at.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.devices import resolve_precision
from pipeline.progress import progress_bar
from pipeline.supervision.scores import EPS, block_scores

log = logging.getLogger(__name__)

DEFAULT_TILE_ELEMENTS = 1 << 24  # 16 Mi scores per tile (64 MiB in float32): 4,096 columns at 4,096 rows
FIRST_TILE_FACTOR = 4  # the first tile of a row block is this many tiles wide
SEGMENT = 256  # columns per segment maximum in the threshold search
BF16_SCORES = ("dot", "cos")  # scores whose bf16 candidate search has a rounding bound
_BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand)
_FP32_UNIT = 2.0**-24


def bf16_dot_error_bound(dim: int) -> float:
    """Bound on |bf16 a.b - a.b| / (|a| |b|) for a matmul with bf16 inputs and output, fp32 accumulation.

    Rounding each input costs at most (2u + u^2) sum|a_i b_i| <= (2u + u^2) |a||b| (Cauchy-Schwarz),
    accumulating ``dim`` products in float32 at most dim * 2^-24 of the same sum, and rounding the output
    to bf16 at most u |result|; a 10 % margin covers the second-order terms.
    """
    u = _BF16_UNIT
    return 1.1 * (3 * u + 2 * u * u + dim * _FP32_UNIT * (1 + 3 * u))


def _matmul(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out = a @ b.T``; in bf16 with float32 accumulation, the error bound's assumption (CPU kernels,
    oneDNN/AMX and the fallback, accumulate in float32; cuBLAS may reduce split-K partial sums in bf16
    unless told not to)."""
    if a.dtype != torch.bfloat16 or a.device.type != "cuda":
        torch.mm(a, b.T, out=out)
        return
    flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        torch.mm(a, b.T, out=out)
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag


def _sort_candidates(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Order each row by score descending, then index ascending, and keep the first k."""
    order = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def tile_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of a score tile, lowest column index among ties at the k-th place."""
    m = scores.shape[1]
    values, indices = scores.topk(min(k + 1, m), dim=1, sorted=True)
    if m > k:
        # ties cross the cut exactly when the (k+1)-th best equals the k-th: topk's pick among them is
        # arbitrary, so those (rare) rows are redone with the lowest-index rule
        straddle = values[:, k] == values[:, k - 1]
        values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
        if bool(straddle.any()):
            rows = straddle.nonzero().squeeze(1)
            sub, t = scores[rows], values[rows, k - 1 :]
            above = sub > t
            tied = sub == t
            need = k - above.sum(dim=1, keepdim=True)
            take = above | (tied & (tied.cumsum(dim=1) <= need))  # exactly k per row
            cols = take.nonzero()[:, 1].view(len(rows), k)
            indices[rows] = cols
            values[rows] = sub.gather(1, cols)
    return values, indices


def _segment_hits(segs: Tensor, threshold: Tensor) -> Tensor:
    """(b, segments) bool: whether a segment may hold an entry above its row's threshold (a superset).

    A bf16 maximum is several times slower than an int16 one on the CPU, and for positive numbers bf16 bit
    patterns read as int16 are ordered like the values; so rows with a positive threshold compare the
    int16 maximum with the bits of the threshold rounded down to bf16, and only other rows use floats.
    """
    if segs.dtype != torch.bfloat16:
        return segs.amax(dim=2) > threshold[:, None]
    t_bf16 = threshold.to(torch.bfloat16)
    bits = t_bf16.view(torch.int16)
    bits = torch.where(t_bf16.float() > threshold, bits - 1, bits)  # largest bf16 <= threshold
    hit = segs.view(torch.int16).amax(dim=2) >= bits[:, None]
    other = threshold <= 0
    if bool(other.any()):  # negative bf16 numbers order backwards as int16: use floats for those rows
        rows = other.nonzero().squeeze(1)
        hit[rows] = segs[rows].amax(dim=2).float() > threshold[rows, None]
    return hit


def _above(tile: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """(row, column) of every entry of ``tile`` strictly above its row's float32 ``threshold``.

    Whole 256-column segments are ruled out by their maximum first, so only a small part of the tile is
    compared entry by entry.
    """
    b, m = tile.shape
    full = m - m % SEGMENT
    rows_out, cols_out = [], []
    if full:
        segs = tile[:, :full].view(b, full // SEGMENT, SEGMENT)
        hit = _segment_hits(segs, threshold)
        r, s = hit.nonzero().unbind(1)
        if len(r):
            sub = segs[r, s].float() > threshold[r, None]  # (hits, SEGMENT)
            i, j = sub.nonzero().unbind(1)
            rows_out.append(r[i])
            cols_out.append(s[i] * SEGMENT + j)
    if full < m:
        r, j = (tile[:, full:].float() > threshold[:, None]).nonzero().unbind(1)
        rows_out.append(r)
        cols_out.append(j + full)
    if not rows_out:
        empty = torch.empty(0, dtype=torch.int64, device=tile.device)
        return empty, empty
    return torch.cat(rows_out), torch.cat(cols_out)


def merge_candidates(
    best_v: Tensor, best_i: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, k: int
) -> None:
    """Merge candidate (row, column, score) triples into the running top-k, in place (touched rows only).
    Equal scores keep the lower index first when every candidate has a higher index than the row's entries
    (as here); otherwise (the ivf scan, :mod:`pipeline.supervision.cellscan`) their order is arbitrary."""
    touched, local, counts = torch.unique(rows, return_inverse=True, return_counts=True)
    width = int(counts.max())
    order = torch.argsort(local, stable=True)
    local, cols, vals = local[order], cols[order], vals[order]
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(local), device=local.device) - start[local]
    t = len(touched)
    pad_v = torch.full((t, width), float("-inf"), device=best_v.device)
    pad_i = torch.full((t, width), torch.iinfo(torch.int64).max, dtype=torch.int64, device=best_v.device)
    pad_v[local, pos] = vals
    pad_i[local, pos] = cols
    # one stable sort by score suffices: each running row is ordered (score desc, index asc) and every
    # candidate has a higher index than it, listed in column order, so equal scores stay index-ascending
    v, i = torch.cat([best_v[touched], pad_v], 1), torch.cat([best_i[touched], pad_i], 1)
    order = v.argsort(dim=1, descending=True, stable=True)[:, :k]
    best_v[touched] = v.gather(1, order)
    best_i[touched] = i.gather(1, order)


def blocked_topk(
    vectors: Tensor,
    k: int,
    score: str,
    block_size: int = 4096,
    excluded: Tensor | None = None,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
    progress: bool = True,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Top-k most correlated other items for every row of ``vectors``.

    Args:
        vectors: (N, d) float vectors on the device to compute on.
        k: neighbours per item; capped at (number of included items - 1).
        score: ``cos``, ``euclidean``, ``dot`` or ``manhattan``.
        block_size: rows per block.
        excluded: optional (N,) bool; excluded items are never neighbours (their own rows are still filled
            but callers drop them).
        tile_elements: upper bound on the elements of one score tile (rows x columns).
        progress: show a tqdm bar over row blocks.
        precision: ``float32``, or ``bfloat16`` to search candidates in bf16 and rescore them in float32
            (same result; only for ``dot``/``cos``, others fall back to float32).

    Returns:
        values (N, k') float32 and indices (N, k') int64 (0-based rows of ``vectors``), on the CPU, each row
        sorted by score descending then index ascending; k' = min(k, included - 1).
    """
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
    n = vectors.shape[0]
    device = vectors.device
    excl = (
        excluded.to(device=device, dtype=torch.bool)
        if excluded is not None and bool(excluded.any())
        else None
    )
    included = n - (int(excl.sum()) if excl is not None else 0)
    k_eff = max(0, min(k, included - 1))
    if k_eff < k:
        log.warning("top-k: only %d included items, keeping %d neighbours instead of %d", included, k_eff, k)
    out_v = torch.empty(n, k_eff, dtype=torch.float32)
    out_i = torch.empty(n, k_eff, dtype=torch.int64)
    if k_eff == 0 or n == 0:
        return out_v, out_i
    low = precision == "bfloat16" and score in BF16_SCORES  # euclidean/manhattan search in float32
    if score == "cos":  # normalise once instead of per tile
        vectors, score = F.normalize(vectors.float(), dim=-1, eps=EPS), "dot"
    else:
        vectors = vectors.float()
    if low:
        vectors_lo = vectors.to(torch.bfloat16)
        norms = vectors.norm(dim=1)
        bound = bf16_dot_error_bound(vectors.shape[1])
    block_size = min(block_size, n)
    col_chunk = max(k_eff, max(1, tile_elements // block_size))
    # the first chunk, searched by torch.topk, is wider: the better its k-th best, the fewer later candidates
    first_chunk = FIRST_TILE_FACTOR * col_chunk
    neg_inf = float("-inf")
    # later tiles go into one reused buffer: a fresh (block x chunk) tensor per tile costs page faults that
    # take longer than the matmul itself on the CPU
    buffer = (
        torch.empty(block_size * col_chunk, dtype=torch.bfloat16 if low else torch.float32, device=device)
        if score == "dot"
        else None
    )
    lhs = vectors_lo if low else vectors
    blocks = range(0, n, block_size)
    for r0 in progress_bar(blocks, desc="top-k blocks", unit="block", disable=not progress, leave=False):
        r1 = min(n, r0 + block_size)
        best_v: Tensor | None = None
        best_i: Tensor | None = None
        c0 = 0
        while c0 < n:
            first = best_v is None
            c1 = min(n, c0 + (first_chunk if first else col_chunk))
            if first or buffer is None:
                tile = block_scores(vectors[r0:r1], vectors[c0:c1], score)  # (b, m) float32
            else:
                tile = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                _matmul(lhs[r0:r1], lhs[c0:c1], tile)
            lo, hi = max(r0, c0), min(r1, c1)
            if lo < hi:  # never your own neighbour
                own = torch.arange(lo, hi, device=device)
                tile[own - r0, own - c0] = neg_inf
            if excl is not None:
                tile[:, excl[c0:c1]] = neg_inf
            if first:
                best_v, best_i = _sort_candidates(*tile_topk(tile, min(k_eff, c1 - c0)), k_eff)
                best_i += c0
                c0 = c1
                continue
            # a row's k-th best so far (the first chunk has >= k_eff columns, so every row has k_eff);
            # later columns have higher indices, so a tie never displaces it
            threshold = best_v[:, -1]
            if low:
                margin = bound * norms[r0:r1] * norms[c0:c1].max()
                r, c = _above(tile, threshold - margin)
                exact = (vectors[r0 + r] * vectors[c0 + c]).sum(dim=1)
            else:
                r, c = _above(tile, threshold)
                exact = tile[r, c]
            if len(r):
                merge_candidates(best_v, best_i, r, c + c0, exact, k_eff)
            c0 = c1
        out_v[r0:r1] = best_v.cpu()
        out_i[r0:r1] = best_i.cpu()
    return out_v, out_i


def topk_search_precision(setting: str, device: torch.device) -> str:
    """The top-k candidate search precision: ``auto`` is bfloat16 only on a CPU with native bf16 matmuls
    (a GPU searches in float32 fast enough, and its bf16 reductions need not accumulate in float32)."""
    if setting == "auto" and device.type != "cpu":
        return "float32"
    return resolve_precision(setting, device)
