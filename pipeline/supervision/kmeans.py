"""k-means (k-means++ seeding, Lloyd iterations) in torch, for the dissected-correlation codebook.

Deterministic for a given seed and device: random draws come from a numpy generator, centroid sums are
float64 chunked matmuls (no atomics), and an empty cluster is re-seeded with the point farthest from its
centroid. Runs on the GPU when the data is there; a tqdm bar shows the iterations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import PipelineError
from pipeline.progress import progress_bar
from pipeline.supervision.scores import nearest_centroid

log = logging.getLogger(__name__)

_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class KMeansResult:
    """A fitted codebook and how the fit went."""

    centroids: Tensor  # (K, D) float32, CPU
    labels: Tensor  # (P,) int64, CPU: exact nearest centroid of each sample
    inertia: float  # sum of squared distances to the assigned centroid
    iterations: int
    converged: bool  # assignments stopped changing, or centroids moved less than tol, before the limit
    reseeded: int  # empty clusters re-seeded along the way


def _sq_dist(x: Tensor, x_sq: Tensor, centroids: Tensor) -> Tensor:
    """(P, K) squared Euclidean distances via the matmul expansion (fast; used inside the iterations)."""
    d = torch.addmm(centroids.square().sum(1)[None, :], x, centroids.T, alpha=-2.0)
    return d.add_(x_sq[:, None]).clamp_min_(0.0)


def _cluster_sums(x64: Tensor, labels: Tensor, k: int, one_hot: bool | None = None) -> tuple[Tensor, Tensor]:
    """Per-cluster float64 sums and counts; deterministic on every device.

    The CPU uses ``index_add_`` (serial, so deterministic); other devices use chunked one-hot matmuls,
    because CUDA's ``index_add_`` adds with atomics in no fixed order.
    """
    sums = torch.zeros(k, x64.shape[1], dtype=torch.float64, device=x64.device)
    counts = torch.zeros(k, dtype=torch.float64, device=x64.device)
    if one_hot is None:
        one_hot = x64.device.type != "cpu"
    if not one_hot:
        sums.index_add_(0, labels, x64)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        return sums, counts
    for s in range(0, x64.shape[0], _CHUNK_ROWS):
        onehot = F.one_hot(labels[s : s + _CHUNK_ROWS], k).to(torch.float64)  # (chunk, K)
        sums += onehot.T @ x64[s : s + _CHUNK_ROWS]
        counts += onehot.sum(0)
    return sums, counts


def _plus_plus(x: Tensor, x_sq: Tensor, k: int, rng: np.random.Generator) -> Tensor:
    """k-means++ seeding: each next centroid drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    d2 = _sq_dist(x, x_sq, x[chosen[0]][None, :])[:, 0].double().cpu().numpy()
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            idx = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
            idx = min(idx, n - 1)
        else:  # every point sits on a centroid already (duplicates): any point will do
            idx = int(rng.integers(n))
        chosen.append(idx)
        new = _sq_dist(x, x_sq, x[idx][None, :])[:, 0].double().cpu().numpy()
        np.minimum(d2, new, out=d2)
    return x[torch.as_tensor(chosen, device=x.device)].clone()


def fit_kmeans(
    x: Tensor, k: int, iters: int, seed: int, tol: float = 1e-4, progress: bool = True
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` centroids.

    Args:
        x: (P, D) samples on the device to compute on.
        k: number of centroids; P must be at least k.
        iters: maximum Lloyd iterations.
        seed: seeds the k-means++ draws.
        tol: stop when the summed squared centroid shift is at most ``tol`` x the mean per-feature
            variance of ``x`` (scikit-learn's rule).
        progress: show a tqdm bar.

    Returns:
        The :class:`KMeansResult`; labels and inertia use the exact nearest-centroid rule of
        :func:`pipeline.supervision.scores.nearest_centroid`, as the codebook will.
    """
    x = x.float().contiguous()
    n = x.shape[0]
    if n < k:
        raise PipelineError(f"k-means needs at least as many samples as codes: {n} samples < {k} codes")
    rng = np.random.default_rng(seed)
    x_sq = x.square().sum(1)
    x64 = x.double()
    centroids = _plus_plus(x, x_sq, k, rng)
    tol_abs = tol * float(x64.var(dim=0).mean())
    labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
    converged, reseeded, updates = False, 0, 0
    bar = progress_bar(range(iters), desc="k-means", unit="iter", disable=not progress, leave=False)
    for _ in bar:
        dist = _sq_dist(x, x_sq, centroids)
        best, new_labels = dist.min(dim=1)
        if bool((new_labels == labels).all()):
            converged = True
            break
        labels = new_labels
        sums, counts = _cluster_sums(x64, labels, k)
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        if empty:
            # re-seed each empty cluster with the point currently farthest from its centroid
            far = best.argsort(descending=True, stable=True)[: len(empty)]
            for c, p in zip(empty, far.tolist(), strict=True):
                sums[labels[p]] -= x64[p]
                counts[labels[p]] -= 1
                labels[p] = c
                sums[c] = x64[p]
                counts[c] = 1
            reseeded += len(empty)
        new = (sums / counts.clamp_min(1)[:, None]).float()
        shift = float((new.double() - centroids.double()).square().sum())
        centroids = new
        updates += 1
        if shift <= tol_abs:
            converged = True
            break
        bar.set_postfix(inertia=f"{float(best.double().sum()):.4g}")
    bar.close()
    final = nearest_centroid(x, centroids)
    inertia = float((x64 - centroids.double()[final]).square().sum())
    log.info(
        "k-means K=%d on %d samples: inertia %.6g after %d iterations (converged=%s, reseeded=%d)",
        k,
        n,
        inertia,
        updates,
        converged,
        reseeded,
    )
    return KMeansResult(centroids.cpu(), final.cpu(), inertia, updates, converged, reseeded)
