"""A faiss inner-product IVF index with k-means cells: the one recipe behind correlate's ivf neighbours
(:func:`pipeline.supervision.ann.train_cells`) and the recommend stage's ivf retrieval
(:class:`pipeline.recommend.retrieval.ItemIndex`). faiss is imported only when an index is built.
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
