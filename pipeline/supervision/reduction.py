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

The autoencoders are in :mod:`pipeline.supervision.autoencoders`.

Rotation (:func:`random_rotation`, :func:`rotate`): a fixed, seeded random orthogonal matrix applied to the
reduced vectors, which spreads every direction over all coordinates, so contiguous sub-vectors get balanced
shares of the variance. Holistic ``cos``, ``dot`` and ``euclidean`` scores are unchanged by it (they depend on
inner products only); ``manhattan`` (an L1 distance) is not rotation invariant and changes. On ``sigmoid_ae``
codes it gives up the (0, 1) range (holistic cosines stay as compressed as before, being invariant).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

CHUNK_ROWS = 65_536  # rows per chunk of every pass over the vectors


@dataclass(frozen=True)
class Reduction:
    """Reduced vectors and what describes the reduction (stored as file metadata and in stats.json)."""

    vectors: np.ndarray  # (N, dim) float32
    info: dict[str, Any] = field(default_factory=dict)


class VectorBlocks(Protocol):
    """(N, d) vectors read a block at a time (``pipeline.artifacts.vectors.VectorFile``): a reduction that
    passes over them in blocks never holds them whole."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]: ...


def vector_blocks(vectors: np.ndarray | VectorBlocks) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, block)`` over the rows of ``vectors`` in order, :data:`CHUNK_ROWS` rows per block of an
    array."""
    if not isinstance(vectors, np.ndarray):
        yield from vectors.blocks()
        return
    for s in range(0, len(vectors), CHUNK_ROWS):
        yield s, vectors[s : s + CHUNK_ROWS]


def check_dims(vectors: np.ndarray | VectorBlocks, dim: int) -> None:
    """Refuse a non-matrix input or a ``correlate.dim`` larger than the teacher dimension."""
    if len(vectors.shape) != 2:
        raise ValueError(f"expected (N, d) teacher vectors, got shape {vectors.shape}")
    if dim > vectors.shape[1]:
        raise PipelineError(
            f"correlate.dim ({dim}) is larger than the teacher dimension ({vectors.shape[1]}): "
            f"set correlate.dim <= {vectors.shape[1]}"
        )


def fit_rows(vectors: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """The rows a reduction is fitted on: the non-missing items (all when ``missing`` is None)."""
    rows = np.flatnonzero(~missing) if missing is not None else np.arange(len(vectors))
    if len(rows) == 0:
        raise PipelineError("every item is missing: nothing to fit the reduction on")
    return rows


def fit_mean(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The float64 mean of ``vectors[rows]``, summed in chunks of :data:`CHUNK_ROWS` rows."""
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    for s in range(0, len(rows), CHUNK_ROWS):
        total += vectors[rows[s : s + CHUNK_ROWS]].astype(np.float64).sum(0)
    return total / len(rows)


def pca_reduce(vectors: np.ndarray | VectorBlocks, dim: int, missing: np.ndarray | None = None) -> Reduction:
    """Project centred vectors on their ``dim`` leading principal components (deterministic).

    The components are the eigenvectors of the float64 covariance of the non-missing rows, equivalent to an
    exact full SVD. Three passes over the input in blocks (the mean, the covariance, the projection), so
    memory is the (N, dim) output and O(d^2) beyond one block: a :class:`VectorBlocks` input (a vector file
    read block by block) is never held whole. Each component's sign is fixed so that its largest-|loading|
    entry is positive.

    Args:
        vectors: (N, d) teacher vectors, an array or a :class:`VectorBlocks`.
        dim: output dimension, at most d.
        missing: optional (N,) bool; those rows do not enter the fit (they are still projected).

    Returns:
        A :class:`Reduction` with (N, dim) float32 vectors and the explained variance ratio.
    """
    check_dims(vectors, dim)
    n, d = vectors.shape
    fit = None if missing is None else ~np.asarray(missing, dtype=bool)
    fit_items = n if fit is None else int(fit.sum())
    if fit_items == 0:
        raise PipelineError("every item is missing: nothing to fit the reduction on")

    def fitted(start: int, block: np.ndarray) -> np.ndarray:
        x = block if fit is None else block[fit[start : start + len(block)]]
        return x.astype(np.float64)

    total = np.zeros(d, dtype=np.float64)
    for s, block in vector_blocks(vectors):
        total += fitted(s, block).sum(0)
    mean = total / fit_items
    cov = np.zeros((d, d), dtype=np.float64)
    for s, block in vector_blocks(vectors):
        x = fitted(s, block) - mean
        cov += x.T @ x
    cov /= max(1, fit_items - 1)
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
    out = np.empty((n, dim), dtype=np.float32)
    for s, block in vector_blocks(vectors):
        out[s : s + len(block)] = (block.astype(np.float64) - mean) @ components.T
    var_total = float(eigvals.sum())
    ratio = float(eigvals[:dim].sum() / var_total) if var_total > 0 else 1.0
    log.info("PCA %d -> %d: explained variance ratio %.4f", d, dim, ratio)
    return Reduction(out, {"method": "pca", "explained_variance_ratio": ratio, "fit_items": fit_items})


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
    """Rotate every reduced vector by :func:`random_rotation` (row vectors: ``v @ R``), in place: the
    returned reduction holds ``reduction``'s array, overwritten block by block (no second (N, dim) array).

    Inner products, norms and Euclidean distances are kept (up to float32 rounding), so holistic ``cos``,
    ``dot`` and ``euclidean`` scores are too; ``manhattan`` scores and the sub-vector split change.
    """
    vectors = reduction.vectors
    rot = random_rotation(vectors.shape[1], seed)
    with threadpool_limits(limits=1):
        for s in range(0, len(vectors), CHUNK_ROWS):
            vectors[s : s + CHUNK_ROWS] = vectors[s : s + CHUNK_ROWS].astype(np.float64) @ rot
    info = dict(reduction.info)
    info["rotation"] = {"kind": "random_orthogonal", "seed": seed}
    return Reduction(vectors, info)


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
        for s in range(0, len(idx), CHUNK_ROWS):
            total += vectors[idx[s : s + CHUNK_ROWS]].astype(np.float64).sum(0)
        mean = total / len(idx)
        for s in range(0, len(idx), CHUNK_ROWS):
            var += np.square(vectors[idx[s : s + CHUNK_ROWS]].astype(np.float64) - mean).sum(0)
    per = var.reshape(sub_vectors, dim // sub_vectors).sum(1)
    shares = per / per.sum() if per.sum() > 0 else np.full(sub_vectors, 1.0 / sub_vectors)
    return [float(f"{v:.6g}") for v in shares]
