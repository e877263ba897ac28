"""Summaries of the supervision written to ``stats.json``: score distributions, per-sub-vector variance shares
and cosines, and how much of the correlation vectors' spread a codebook leaves unexplained."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def describe(values: np.ndarray) -> dict[str, float | int]:
    """Count, mean, std, min, max and percentiles of a score sample (6 significant digits)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    pct = np.percentile(values, _PERCENTILES)
    out: dict[str, float | int] = {"count": int(values.size)}
    stats = {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}
    stats.update({f"p{p:02d}": v for p, v in zip(_PERCENTILES, pct, strict=True)})
    out.update({k: float(f"{float(v):.6g}") for k, v in stats.items()})
    return out


def share_summary(shares: list[float]) -> dict[str, Any]:
    """Shares plus max/min ratio (None when a sub-vector has no variance at all)."""
    lo, hi = min(shares), max(shares)
    return {
        "shares": shares,
        "max": hi,
        "min": lo,
        "max_min_ratio": float(f"{hi / lo:.6g}") if lo > 0 else None,
    }


def format_shares(shares: list[float]) -> str:
    """Shares with three decimals, for the log: ``[0.412 0.301 ...]``."""
    return "[" + " ".join(f"{v:.3f}" for v in shares) + "]"


def inertia_ratio(inertia: float, corr: torch.Tensor) -> float | None:
    """K-means inertia / total squared deviation of ``corr`` from its mean (None when it has no spread)."""
    total = float((corr.double() - corr.double().mean(0)).square().sum()) if len(corr) else 0.0
    return float(f"{inertia / total:.6g}") if total > 0 else None


def sub_vector_cosine_stats(corr: torch.Tensor, n_co: int) -> dict[str, list[float]]:
    """Per sub-vector: mean and std of the cosines over the codebook sample, and the mean on co-occurring
    pairs minus the mean on random ones (near 0: the sub-vector tells related items from random ones poorly)."""
    c = corr.double()

    def r(t: torch.Tensor) -> list[float]:
        return [float(f"{float(v):.6g}") for v in t]

    out = {"mean": r(c.mean(0)), "std": r(c.std(0, correction=0)) if len(c) else r(c.sum(0))}
    if 0 < n_co < len(c):
        out["co_occurring_minus_random"] = r(c[:n_co].mean(0) - c[n_co:].mean(0))
    return out
