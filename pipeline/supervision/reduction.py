"""Reduce teacher vectors to the student's modality dimension, optionally followed by a random rotation.

Reductions (``correlate.reduction``):

- ``pca`` (default): projection on the leading principal components. Components come ordered by variance, so
  the first contiguous sub-vectors of the dissected correlation carry most of the variance and the last ones
  little (near noise): use ``correlate.rotate`` to balance them.
- ``sigmoid_ae``: the paper's linear autoencoder with a sigmoid bottleneck (Linear -> Sigmoid -> Linear),
  trained on the MSE reconstruction with early stopping on a held-out 10 %; the vectors are the sigmoid codes,
  in (0, 1). No code unit is privileged, but every code is positive, so every cosine between two codes
  (holistic or per sub-vector) is positive and compressed towards 1: random pairs score about as high as
  related ones in absolute terms, only the spread separates them.
- ``autoencoder``: a 2-layer ReLU autoencoder (d -> h -> dim -> h -> d) with a linear code.

All centre the inputs on the mean of the non-missing items and fit on those items only (imputed vectors
carry no information). None re-normalises its output: the default ``cos`` score is scale-free, and the
other scores then measure distances on the scale of the (usually unit-norm) teacher vectors.

Rotation (:func:`random_rotation`, :func:`rotate`): a fixed, seeded random orthogonal matrix applied to the
reduced vectors, which spreads every direction over all coordinates, so contiguous sub-vectors get balanced
shares of the variance. Holistic ``cos``, ``dot`` and ``euclidean`` scores are unchanged by it (they depend on
inner products only); ``manhattan`` (an L1 distance) is not rotation invariant and changes. On ``sigmoid_ae``
codes it gives up the (0, 1) range (holistic cosines stay as compressed as before, being invariant).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pipeline.errors import PipelineError
from pipeline.progress import progress_bar

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
    for _ in progress_bar(range(epochs), desc="autoencoder", unit="epoch", leave=False):
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


SIGMOID_AE_HOLDOUT = 0.1  # share of the fit rows held out for early stopping
SIGMOID_AE_PATIENCE = 10  # epochs without a held-out improvement before stopping
SIGMOID_AE_MIN_DELTA = 1e-4  # relative decrease of the held-out loss that counts as an improvement


def _holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) positions in 0..n-1; no held-out part below 10 rows."""
    n_val = int(round(fraction * n)) if n >= 10 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def sigmoid_autoencoder_reduce(
    vectors: np.ndarray,
    dim: int,
    missing: np.ndarray | None = None,
    max_epochs: int = 200,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    lr: float = 3e-3,
    patience: int = SIGMOID_AE_PATIENCE,
    holdout: float = SIGMOID_AE_HOLDOUT,
) -> Reduction:
    """The paper's reduction: a linear autoencoder whose bottleneck is a sigmoid; the codes are the vectors.

    Encoder ``Linear(d, dim) -> Sigmoid`` (the code, in (0, 1)), decoder ``Linear(dim, d)``, trained on the
    non-missing rows, centred and divided by one scalar (to unit mean-square coordinates), with the MSE
    reconstruction loss (Adam, mini-batches of ``batch_size``; the defaults were measured on Beauty's
    384-d text vectors -> 128: held-out R^2 0.849 after ~150 epochs, PCA's in-sample ratio is 0.862). A
    seeded ``holdout`` share of those rows is kept out of training; after each epoch their reconstruction
    loss is measured, and training stops once it has not improved (by a relative ``1e-4``) for ``patience``
    epochs, or after ``max_epochs``; the weights of the best epoch are kept. Weights, split and shuffling
    are seeded, so a rerun on the same device (and thread count) gives the same codes.

    The codes are all positive, so all their cosines are positive and compressed (see the module notes).

    Args:
        vectors: (N, d) teacher vectors.
        dim: code dimension, at most d.
        missing: optional (N,) bool; those rows do not enter the fit (they are still encoded).
        max_epochs: the most passes over the training rows.
        seed: seeds the weights, the held-out split and the shuffling.
        device: torch device string.
        batch_size: rows per step.
        lr: Adam learning rate.
        patience: early-stopping patience in epochs.
        holdout: share of the fit rows held out (none when fewer than 10 rows).

    Returns:
        A :class:`Reduction` with (N, dim) float32 codes in (0, 1) and the reconstruction R^2 on the
        held-out and training rows, the best and the last epoch.
    """
    _check_dims(vectors, dim)
    rows = _fit_rows(vectors, missing)
    d = vectors.shape[1]
    total = np.zeros(d, dtype=np.float64)
    for s in range(0, len(rows), _CHUNK_ROWS):
        total += vectors[rows[s : s + _CHUNK_ROWS]].astype(np.float64).sum(0)
    mean = total / len(rows)
    sq = 0.0
    for s in range(0, len(rows), _CHUNK_ROWS):
        sq += float(np.square(vectors[rows[s : s + _CHUNK_ROWS]].astype(np.float64) - mean).sum())
    # one scalar scale to unit mean-square coordinates, so the default init already spreads the sigmoid's
    # inputs (unit-norm 384-d teacher vectors have coordinates of ~0.05); the R^2 does not depend on it
    scale = math.sqrt(sq / (len(rows) * d)) or 1.0
    train_pos, val_pos = _holdout_split(len(rows), holdout, seed)

    def prepared(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(vectors[idx].astype(np.float32))  # fancy indexing copies: writable
        return x.sub_(torch.from_numpy(mean.astype(np.float32))).div_(scale).to(device)

    x_train, x_val = prepared(rows[train_pos]), prepared(rows[val_pos])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(d, dim), torch.nn.Sigmoid(), torch.nn.Linear(dim, d))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    monitor = x_val if len(val_pos) else x_train

    def sse(x: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            for s in range(0, x.shape[0], _CHUNK_ROWS):
                batch = x[s : s + _CHUNK_ROWS]
                total += float((model(batch) - batch).double().square().sum())
        return total

    n = x_train.shape[0]
    best_loss, best_epoch, best_state, epoch = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    bar = progress_bar(range(1, max_epochs + 1), desc="sigmoid autoencoder", unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(0, n, batch_size):
            batch = x_train[perm[s : s + batch_size]]
            loss = torch.nn.functional.mse_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        val_loss = sse(monitor) / max(1, monitor.numel())
        bar.set_postfix(holdout_mse=f"{val_loss:.4g}")
        if val_loss < best_loss * (1.0 - SIGMOID_AE_MIN_DELTA):
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    encoder = model[:2]
    out = np.empty((len(vectors), dim), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(vectors), _CHUNK_ROWS):
            chunk = ((vectors[s : s + _CHUNK_ROWS].astype(np.float64) - mean) / scale).astype(np.float32)
            out[s : s + _CHUNK_ROWS] = encoder(torch.from_numpy(chunk).to(device)).cpu().numpy()

    def r2(x: torch.Tensor) -> float | None:
        if x.shape[0] == 0:
            return None
        total = float(x.double().square().sum())
        return float(f"{1.0 - sse(x) / total:.6g}") if total > 0 else 1.0

    info = {
        "method": "sigmoid_ae",
        "holdout_r2": r2(x_val),
        "train_r2": r2(x_train),
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "max_epochs": max_epochs,
        "stopped_early": epoch < max_epochs,
        "patience": patience,
        "holdout_items": int(len(val_pos)),
        "input_scale": float(f"{scale:.6g}"),
        "fit_items": int(len(train_pos)),
        "batch_size": batch_size,
        "lr": lr,
    }
    log.info(
        "sigmoid autoencoder %d -> %d: held-out reconstruction R^2 %s (train %s), best epoch %d of %d run",
        d,
        dim,
        info["holdout_r2"],
        info["train_r2"],
        best_epoch,
        epoch,
    )
    return Reduction(out, info)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A (dim, dim) float64 random rotation: orthogonal with determinant +1, fixed by ``seed``.

    The QR factorisation of a seeded standard Gaussian matrix, with each column of Q multiplied by the sign
    of the matching diagonal entry of R (so the result does not depend on LAPACK's sign convention and is
    Haar-distributed over the orthogonal group), then the last column negated if the determinant is -1.
    """
    g = np.random.default_rng(seed).standard_normal((dim, dim))
    with threadpool_limits(limits=1):
        q, r = np.linalg.qr(g)
        signs = np.sign(np.diag(r))
        signs[signs == 0] = 1.0
        q = q * signs[None, :]
        if np.linalg.det(q) < 0:
            q[:, -1] = -q[:, -1]
    return q


def rotate(reduction: Reduction, seed: int) -> Reduction:
    """Rotate every reduced vector by :func:`random_rotation` (row vectors: ``v @ R``).

    Inner products, norms and Euclidean distances are kept (up to float32 rounding), so holistic ``cos``,
    ``dot`` and ``euclidean`` scores are too; ``manhattan`` scores and the sub-vector split change.
    """
    dim = reduction.vectors.shape[1]
    rot = random_rotation(dim, seed)
    out = np.empty_like(reduction.vectors, dtype=np.float32)
    with threadpool_limits(limits=1):
        for s in range(0, len(out), _CHUNK_ROWS):
            out[s : s + _CHUNK_ROWS] = reduction.vectors[s : s + _CHUNK_ROWS].astype(np.float64) @ rot
    info = dict(reduction.info)
    info["rotation"] = {"kind": "random_orthogonal", "seed": seed}
    return Reduction(out, info)


def sub_vector_variance_share(
    vectors: np.ndarray, sub_vectors: int, rows: np.ndarray | None = None
) -> list[float]:
    """Each contiguous sub-vector's share of the total variance (summed over its coordinates), in order.

    Args:
        vectors: (N, dim) vectors; ``sub_vectors`` must divide dim.
        sub_vectors: D.
        rows: optional row indices to measure on (e.g. the non-missing items).

    Returns:
        D shares summing to 1 (all equal when the total variance is 0), rounded to 6 significant digits.
    """
    n, dim = vectors.shape
    if sub_vectors < 1 or dim % sub_vectors:
        raise ValueError(f"sub_vectors ({sub_vectors}) must divide the vector dimension ({dim})")
    idx = np.arange(n) if rows is None else np.asarray(rows)
    var = np.zeros(dim, dtype=np.float64)
    if len(idx) > 1:
        total = np.zeros(dim, dtype=np.float64)
        for s in range(0, len(idx), _CHUNK_ROWS):
            total += vectors[idx[s : s + _CHUNK_ROWS]].astype(np.float64).sum(0)
        mean = total / len(idx)
        for s in range(0, len(idx), _CHUNK_ROWS):
            var += np.square(vectors[idx[s : s + _CHUNK_ROWS]].astype(np.float64) - mean).sum(0)
    per = var.reshape(sub_vectors, dim // sub_vectors).sum(1)
    shares = per / per.sum() if per.sum() > 0 else np.full(sub_vectors, 1.0 / sub_vectors)
    return [float(f"{v:.6g}") for v in shares]
