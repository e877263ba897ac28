"""Reduce teacher vectors to the student's modality dimension: PCA (default) or a small autoencoder.

Both centre the vectors on the mean of the non-missing items and fit on those items only (imputed vectors
carry no information). Neither re-normalises its output: the default ``cos`` score is scale-free, and the
other scores then measure distances on the scale of the (usually unit-norm) teacher vectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class Reduction:
    """Reduced vectors and what describes the reduction (stored as file metadata and in stats.json)."""

    vectors: np.ndarray  # (N, dim) float32
    info: dict[str, Any] = field(default_factory=dict)


def _check_dims(vectors: np.ndarray, dim: int) -> None:
    if vectors.ndim != 2:
        raise ValueError(f"expected (N, d) teacher vectors, got shape {vectors.shape}")
    if dim > vectors.shape[1]:
        raise PipelineError(
            f"correlate.dim ({dim}) is larger than the teacher dimension ({vectors.shape[1]}): "
            f"set correlate.dim <= {vectors.shape[1]}"
        )


def _fit_rows(vectors: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    rows = np.flatnonzero(~missing) if missing is not None else np.arange(len(vectors))
    if len(rows) == 0:
        raise PipelineError("every item is missing: nothing to fit the reduction on")
    return rows


def pca_reduce(vectors: np.ndarray, dim: int, missing: np.ndarray | None = None) -> Reduction:
    """Project centred vectors on their ``dim`` leading principal components (deterministic).

    The components are the eigenvectors of the float64 covariance of the non-missing rows (accumulated in
    chunks, so memory is O(d^2) beyond the input), equivalent to an exact full SVD. Each component's sign is
    fixed so that its largest-|loading| entry is positive.

    Args:
        vectors: (N, d) teacher vectors.
        dim: output dimension, at most d.
        missing: optional (N,) bool; those rows do not enter the fit (they are still projected).

    Returns:
        A :class:`Reduction` with (N, dim) float32 vectors and the explained variance ratio.
    """
    _check_dims(vectors, dim)
    rows = _fit_rows(vectors, missing)
    d = vectors.shape[1]
    total = np.zeros(d, dtype=np.float64)
    for s in range(0, len(rows), _CHUNK_ROWS):
        total += vectors[rows[s : s + _CHUNK_ROWS]].astype(np.float64).sum(0)
    mean = total / len(rows)
    cov = np.zeros((d, d), dtype=np.float64)
    for s in range(0, len(rows), _CHUNK_ROWS):
        x = vectors[rows[s : s + _CHUNK_ROWS]].astype(np.float64) - mean
        cov += x.T @ x
    cov /= max(1, len(rows) - 1)
    # one BLAS thread: a d x d eigendecomposition is fast alone but can take 100x longer when several BLAS
    # threads spin on a busy CPU (seen: 4.7 s instead of 25 ms for d = 384 on 2 shared cores)
    with threadpool_limits(limits=1):
        eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(-eigvals, kind="stable")
    eigvals = np.clip(eigvals[order], 0.0, None)
    components = eigvecs[:, order[:dim]].T.copy()  # (dim, d)
    pivot = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(dim), pivot])
    signs[signs == 0] = 1.0
    components *= signs[:, None]
    out = np.empty((len(vectors), dim), dtype=np.float32)
    for s in range(0, len(vectors), _CHUNK_ROWS):
        out[s : s + _CHUNK_ROWS] = (vectors[s : s + _CHUNK_ROWS].astype(np.float64) - mean) @ components.T
    var_total = float(eigvals.sum())
    ratio = float(eigvals[:dim].sum() / var_total) if var_total > 0 else 1.0
    log.info("PCA %d -> %d: explained variance ratio %.4f", d, dim, ratio)
    return Reduction(out, {"method": "pca", "explained_variance_ratio": ratio, "fit_items": int(len(rows))})


def autoencoder_reduce(
    vectors: np.ndarray,
    dim: int,
    missing: np.ndarray | None = None,
    epochs: int = 20,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    lr: float = 1e-3,
) -> Reduction:
    """The paper's option: a 2-layer encoder/decoder trained with MSE; the encoder output is the vector.

    Layers d -> h -> dim -> h -> d with h = max(dim, (d + dim) // 2) and ReLU; Adam, fixed seed, so a rerun
    on the same device gives the same vectors.

    Args:
        vectors: (N, d) teacher vectors.
        dim: code dimension, at most d.
        missing: optional (N,) bool; those rows do not enter the fit (they are still encoded).
        epochs: passes over the fit rows.
        seed: seeds the weights and the shuffling.
        device: torch device string.
        batch_size: rows per step.
        lr: Adam learning rate.

    Returns:
        A :class:`Reduction` with (N, dim) float32 vectors and the final reconstruction R^2.
    """
    _check_dims(vectors, dim)
    rows = _fit_rows(vectors, missing)
    d = vectors.shape[1]
    hidden = max(dim, (d + dim) // 2)
    x_all = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    mean = x_all[torch.from_numpy(rows)].double().mean(0).float()
    x_fit = (x_all[torch.from_numpy(rows)] - mean).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim)
        )
        decoder = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d)
        )
    encoder.to(device)
    decoder.to(device)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x_fit.shape[0]
    for _ in tqdm(range(epochs), desc="autoencoder", unit="epoch", leave=False):
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(0, n, batch_size):
            batch = x_fit[perm[s : s + batch_size]]
            loss = torch.nn.functional.mse_loss(decoder(encoder(batch)), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    encoder.eval()
    decoder.eval()
    out = np.empty((len(vectors), dim), dtype=np.float32)
    sse = 0.0
    with torch.no_grad():
        for s in range(0, len(vectors), _CHUNK_ROWS):
            out[s : s + _CHUNK_ROWS] = encoder((x_all[s : s + _CHUNK_ROWS] - mean).to(device)).cpu().numpy()
        for s in range(0, n, _CHUNK_ROWS):
            batch = x_fit[s : s + _CHUNK_ROWS]
            sse += float((decoder(encoder(batch)) - batch).double().square().sum())
    total = float(x_fit.double().square().sum())
    r2 = 1.0 - sse / total if total > 0 else 1.0
    log.info("autoencoder %d -> %d: reconstruction R^2 %.4f", d, dim, r2)
    return Reduction(
        out,
        {
            "method": "autoencoder",
            "reconstruction_r2": r2,
            "epochs": epochs,
            "hidden": hidden,
            "fit_items": int(n),
        },
    )
