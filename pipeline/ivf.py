"""The faiss pieces correlate and recommend share: an inner-product IVF index with k-means cells, the one
recipe behind correlate's ivf neighbours (:func:`pipeline.supervision.ann.train_cells`) and the recommend
stage's ivf retrieval (:class:`pipeline.recommend.retrieval.ItemIndex`); and the exact best k among listed
candidates (:func:`best_of_candidates`), behind correlate's refinement and recommend's pq re-ranking. faiss is
imported only when used.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def trained_ivf(
    x: np.ndarray, nlist: int, per_cell: int, seed: int, iters: int | None = None
) -> tuple[Any, Any]:
    """An inner-product ``IndexIVFFlat`` over rows like ``x``, its k-means cells trained (empty, nothing added)
    on a seeded sample of ``nlist x per_cell`` rows of ``x``; ``iters``: k-means iterations (None: faiss's).

    Returns ``(index, quantizer)``: the flat inner-product quantizer holds the centroids, and must outlive
    the index, which refers to it.
    """
    import faiss

    d = x.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    if iters is not None:
        ivf.cp.niter = iters
    ivf.cp.seed = seed % 2**31
    ivf.cp.max_points_per_centroid = per_cell  # faiss samples nlist x this (seeded)
    ivf.cp.min_points_per_centroid = 1  # small catalogues: no warning, cells of a few items are fine
    ivf.train(x)
    return ivf, quantizer


def best_of_candidates(
    queries: np.ndarray, base: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``k`` rows of ``base`` among its ``candidates``, by exact inner product.

    Args:
        queries: (m, d) float32; base: (n, d) float32 (both made C-contiguous if they are not).
        candidates: (m, c) int64 rows of ``base``; a row's list ends at its first -1 (faiss's
            ``knn_inner_products_by_idx``: a gather and a dot product per candidate, in C++ over the threads).
        k: results per query.

    Returns:
        ``(values, labels)``, (m, k) float32 and int64, best first; label -1 where a query has fewer than k
        candidates. Among equal scores at the k-th place faiss keeps any.
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    x = np.ascontiguousarray(base, dtype=np.float32)  # no copy when it already is
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    m = len(q)
    values = np.empty((m, k), dtype=np.float32)
    labels = np.empty((m, k), dtype=np.int64)
    ptr = faiss.swig_ptr
    faiss.knn_inner_products_by_idx(
        ptr(q),
        ptr(x),
        ptr(cand),
        x.shape[1],
        m,
        len(x),
        cand.shape[1],
        k,
        ptr(values),
        ptr(labels),
        cand.shape[1],
    )
    return values, labels
