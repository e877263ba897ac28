"""Blocked holistic top-k: each item's most correlated other items without materialising the N x N matrix.

Rows are processed ``block_size`` at a time; for each row block the catalogue is scanned in column chunks
whose score tile is at most ``tile_elements`` floats, and a running top-k is merged chunk by chunk, so memory
is O(block_size x chunk + N x k). Ties are broken deterministically: equal scores rank the lower item first.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from pipeline.supervision.scores import EPS, block_scores

log = logging.getLogger(__name__)

DEFAULT_TILE_ELEMENTS = 1 << 26  # 64 Mi floats = 256 MiB score tile


def _sort_candidates(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Order each row by score descending, then index ascending, and keep the first k."""
    order = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def _tile_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
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


def blocked_topk(
    vectors: Tensor,
    k: int,
    score: str,
    block_size: int = 4096,
    excluded: Tensor | None = None,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
    progress: bool = True,
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

    Returns:
        values (N, k') float32 and indices (N, k') int64 (0-based rows of ``vectors``), on the CPU, each row
        sorted by score descending then index ascending; k' = min(k, included - 1).
    """
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
    if score == "cos":  # normalise once instead of per tile
        vectors, score = F.normalize(vectors.float(), dim=-1, eps=EPS), "dot"
    else:
        vectors = vectors.float()
    col_chunk = max(k_eff, max(1, tile_elements // block_size))
    neg_inf = float("-inf")
    blocks = range(0, n, block_size)
    for r0 in tqdm(blocks, desc="top-k blocks", unit="block", disable=not progress, leave=False):
        r1 = min(n, r0 + block_size)
        rows = vectors[r0:r1]
        row_ids = torch.arange(r0, r1, device=device)
        best_v: Tensor | None = None
        best_i: Tensor | None = None
        for c0 in range(0, n, col_chunk):
            c1 = min(n, c0 + col_chunk)
            tile = block_scores(rows, vectors[c0:c1], score)  # (b, m)
            own = (row_ids >= c0) & (row_ids < c1)
            if bool(own.any()):
                r_local = own.nonzero().squeeze(1)
                tile[r_local, row_ids[r_local] - c0] = neg_inf  # never your own neighbour
            if excl is not None:
                tile[:, excl[c0:c1]] = neg_inf
            kk = min(k_eff, c1 - c0)
            v, i = _tile_topk(tile, kk)
            i += c0
            if best_v is None:
                best_v, best_i = _sort_candidates(v, i, k_eff)
            else:
                best_v, best_i = _sort_candidates(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), k_eff)
        out_v[r0:r1] = best_v.cpu()
        out_i[r0:r1] = best_i.cpu()
    return out_v, out_i
