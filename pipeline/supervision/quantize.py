"""The codebook fits of the correlate stage: ``correlate.quantizer: kmeans`` (K centroids of the D-dim dissected
correlation vectors) and ``vq`` (K scalar levels per sub-vector), each with the statistics stats.json reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import CorrelateParams
from pipeline.supervision.codebooks import CorrelationCodebook, ProductCodebook
from pipeline.supervision.kmeans import fit_kmeans, fit_product_levels
from pipeline.supervision.summaries import inertia_ratio, sub_vector_cosine_stats


def _usage(labels: torch.Tensor, k: int) -> tuple[np.ndarray, float]:
    """How often each code is used, and exp(entropy of the usage): K when every code is used equally, 1 when
    one code takes all."""
    usage = torch.bincount(labels, minlength=k).numpy()
    p_use = usage[usage > 0] / max(1, usage.sum())
    effective = float(np.exp(-(p_use * np.log(p_use)).sum())) if p_use.size else 0.0
    return usage, effective


def _common_stats(
    base: dict[str, Any], inertia: float, corr: torch.Tensor, shares: list[float], n_co: int
) -> dict[str, Any]:
    """What both codebooks report: the fit's error, the variance shares and the sub-vector cosines."""
    return {
        **base,
        "inertia": float(f"{inertia:.9g}"),
        "mean_sq_distance": float(f"{inertia / max(1, len(corr)):.6g}"),
        # inertia / total squared deviation of the sample from its mean: the share of the correlation
        # vectors' variance the codebook leaves unexplained (comparable across reductions, unlike inertia)
        "inertia_ratio": inertia_ratio(inertia, corr),
        "sub_vector_variance_share": shares,
        "sub_vector_cosine": sub_vector_cosine_stats(corr, n_co),
    }


def _codebook_meta(
    meta: dict[str, Any], stats: dict[str, Any], params: CorrelateParams, shares: list[float]
) -> dict[str, Any]:
    """The metadata a codebook file carries (either kind)."""
    return {
        **meta,
        "inertia": stats["inertia"],
        "dim": params.dim,
        "reduction": params.reduction,
        "rotate": params.rotate,
        "codes_used": stats["codes_used"],
        "max_code_share": stats["max_code_share"],
        "effective_codes": stats["effective_codes"],
        "sub_vector_variance_share": shares,
    }


def fit_kmeans_codebook(
    params: CorrelateParams,
    corr: torch.Tensor,
    n_co: int,
    base: dict[str, Any],
    meta: dict[str, Any],
    shares: list[float],
    device: torch.device,
) -> tuple[dict[str, Any], CorrelationCodebook]:
    """``correlate.quantizer: kmeans``: K centroids of the D-dim correlation vectors; stats and codebook."""
    km = fit_kmeans(corr.to(device), params.codes, params.kmeans_iters, params.seed)
    usage, effective = _usage(km.labels, params.codes)
    stats = {
        **_common_stats(base, km.inertia, corr, shares, n_co),
        "iterations": km.iterations,
        "converged": km.converged,
        "reseeded_clusters": km.reseeded,
        "usage": usage.tolist(),
        "codes_used": int((usage > 0).sum()),
        "max_code_share": float(f"{usage.max() / max(1, usage.sum()):.6g}"),
        # exp(entropy of the usage): K when every code is used equally, 1 when one code takes all
        "effective_codes": float(f"{effective:.6g}"),
    }
    meta = {**_codebook_meta(meta, stats, params, shares), "kmeans_iters": params.kmeans_iters}
    return stats, CorrelationCodebook(km.centroids, meta)


def fit_vq_codebook(
    params: CorrelateParams,
    corr: torch.Tensor,
    n_co: int,
    base: dict[str, Any],
    meta: dict[str, Any],
    shares: list[float],
) -> tuple[dict[str, Any], ProductCodebook]:
    """``correlate.quantizer: vq``: K scalar levels per sub-vector (1-D k-means); stats and codebook.

    The scalar summaries keep their k-means meaning where one exists: ``codes_used`` is the fewest levels
    any sub-vector uses, ``max_code_share`` the largest share one level takes in its sub-vector,
    ``effective_codes`` the mean over sub-vectors; the ``*_per_sub_vector`` lists give each one.
    """
    fit = fit_product_levels(corr, params.codes)
    per = [_usage(fit.labels[:, d], params.codes) for d in range(corr.shape[1])]
    usage = np.stack([u for u, _ in per])  # (D, K)
    used = (usage > 0).sum(1)
    max_share = usage.max(1) / np.maximum(1, usage.sum(1))
    effective = [e for _, e in per]
    stats = {
        "quantizer": "vq",
        **_common_stats(base, fit.inertia, corr, shares, n_co),
        "sub_vector_inertia_ratio": [
            inertia_ratio(v, corr[:, d : d + 1]) for d, v in enumerate(fit.sub_vector_inertia)
        ],
        "iterations": max(fit.iterations),
        "iterations_per_sub_vector": fit.iterations,
        "converged": all(fit.converged),
        "reseeded_clusters": fit.reseeded,
        "usage": usage.tolist(),  # (D, K)
        "codes_used": int(used.min()),
        "codes_used_per_sub_vector": used.tolist(),
        "max_code_share": float(f"{max_share.max():.6g}"),
        "max_code_share_per_sub_vector": [float(f"{v:.6g}") for v in max_share],
        "effective_codes": float(f"{float(np.mean(effective)):.6g}"),
        "effective_codes_per_sub_vector": [float(f"{v:.6g}") for v in effective],
    }
    return stats, ProductCodebook(fit.levels, _codebook_meta(meta, stats, params, shares))
