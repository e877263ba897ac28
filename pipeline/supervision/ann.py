"""Approximate holistic neighbours with faiss, and their recall against an exact search.

``correlate.neighbours: ivf`` (an inverted-file index: k-means cells, each item scans the ``nprobe`` cells
nearest to it) and ``hnsw`` (a navigable small-world graph) search by inner product: on L2-normalised
vectors for score ``cos``, on the vectors as they are for ``dot``. Every included item is both indexed and
a query; excluded items are neither. Each item's own entry is dropped from its results (never your own
neighbour), the rest are ordered by score descending then index ascending, like the exact search. A row
the index returns too few neighbours for (an ivf item whose probed cells hold fewer than topk + 1 items)
is searched exactly.

The recall is measured at every approximate run on a fixed seeded sample of items: an exact search
(faiss's flat inner-product index) gives each sampled item its k-th best score, and an approximate
neighbour counts as found when its score reaches that (so items with equal vectors, whose exact order
among themselves is arbitrary, do not lower it). Time and memory are linear in the items for a fixed
``nprobe``/``nlist`` ratio, except the ivf default nlist, which grows with sqrt(items).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import faiss
import numpy as np
import torch

from pipeline.config import CorrelateParams
from pipeline.config.inputs import INNER_PRODUCT_SCORES, AnnParams
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

SEARCH_BATCH = 16_384  # queries per faiss search call: bounds the result buffers, feeds the progress bar
APPROXIMATE = ("ivf", "hnsw")


def resolve_method(params: CorrelateParams, included: int) -> str:
    """The search ``correlate.neighbours`` names for a catalogue of ``included`` items: ``auto`` is exact
    up to ``exact_max_items`` and for scores other than cos/dot, ivf above."""
    if params.neighbours != "auto":
        return params.neighbours
    if included <= params.exact_max_items:
        return "exact"
    if params.score not in INNER_PRODUCT_SCORES:
        log.warning(
            "correlate.neighbours auto: %d items, but score %s has no faiss index: searching exactly "
            "(time quadratic in items; score cos or dot allows ivf)",
            included,
            params.score,
        )
        return "exact"
    return "ivf"


def default_nlist(items: int, nprobe: int) -> int:
    """sqrt(items x nprobe) as a power of two, at most items / 39 (faiss's least training points per cell)
    and at least 1: assigning items to cells costs items x nlist, scanning items^2 x nprobe / nlist."""
    best = math.sqrt(items * nprobe)
    nlist = 2 ** max(0, round(math.log2(best))) if best >= 1 else 1
    return max(1, min(nlist, items // 39))


def search_vectors(vectors: np.ndarray, score: str) -> np.ndarray:
    """float32, C-contiguous, L2-normalised for ``cos`` (a zero vector stays zero): inner product = score."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if score == "cos":
        faiss.normalize_L2(x)
    elif score != "dot":
        raise ValueError(f"faiss neighbours need score cos or dot, got {score!r}")
    return x


def build_index(x: np.ndarray, method: str, ann: AnnParams, k: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """A faiss inner-product index over the rows of ``x``; also the parameters it was built with."""
    n, d = x.shape
    if method == "ivf":
        nlist = min(ann.nlist or default_nlist(n, ann.nprobe), n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = ann.train_iters
        index.cp.seed = seed % 2**31
        index.cp.max_points_per_centroid = ann.train_per_list  # faiss samples nlist x this (seeded)
        index.cp.min_points_per_centroid = 1  # small catalogues: no warning, cells of a few items are fine
        index.train(x)
        index.add(x)
        index.nprobe = min(ann.nprobe, nlist)
        info = {"nlist": nlist, "nprobe": index.nprobe, "train_iters": ann.train_iters}
        info["list_imbalance"] = round(float(index.invlists.imbalance_factor()), 4)
        return index, info
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, ann.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ann.ef_construction
        index.add(x)
        index.hnsw.efSearch = max(ann.ef_search, k + 1)
        return index, {"m": ann.m, "ef_construction": ann.ef_construction, "ef_search": index.hnsw.efSearch}
    raise ValueError(f"unknown approximate neighbour search {method!r} (ivf or hnsw)")


def drop_self(
    scores: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best ``k`` results other than the row itself, by score descending then label ascending.

    Args:
        scores, labels: (b, k + 1) faiss results (label -1: no result) of queries ``rows`` (b,), in the
            same numbering as the labels.
        k: neighbours kept.

    Returns:
        values (b, k) float32, labels (b, k) int64 and (b,) bool: the rows that got k results.
    """
    invalid = (labels < 0) | (labels == rows[:, None])
    key_scores = np.where(invalid, -np.inf, scores)
    key_labels = np.where(invalid, np.iinfo(np.int64).max, labels)
    order = np.lexsort((key_labels, -key_scores), axis=-1)[:, :k]
    values = np.take_along_axis(key_scores, order, 1).astype(np.float32)
    chosen = np.take_along_axis(key_labels, order, 1)
    complete = ~np.take_along_axis(invalid, order, 1).any(1)
    return values, chosen, complete


def search_all(
    index: Any, x: np.ndarray, rows: np.ndarray, k: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`drop_self` results of the queries ``x[rows]`` against ``index``, in batches."""
    values = np.empty((len(rows), k), dtype=np.float32)
    labels = np.empty((len(rows), k), dtype=np.int64)
    complete = np.empty(len(rows), dtype=bool)
    batches = range(0, len(rows), SEARCH_BATCH)
    for s in progress_bar(batches, desc="faiss search", unit="batch", disable=not progress, leave=False):
        r = rows[s : s + SEARCH_BATCH]
        d, i = index.search(x[r], k + 1)
        values[s : s + len(r)], labels[s : s + len(r)], complete[s : s + len(r)] = drop_self(d, i, r, k)
    return values, labels, complete


def exact_search(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (self dropped) of the rows ``rows`` of ``x`` among all rows, by faiss's flat index."""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    values, labels, _ = search_all(flat, x, rows, k)
    return values, labels


def sample_recall(
    x: np.ndarray, labels: np.ndarray, k: int, sample: int, seed: int
) -> dict[str, float | int]:
    """Recall@k of the approximate ``labels`` (n, k) on a seeded sample of rows of ``x`` (see the module)."""
    n = len(x)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    exact_v, _ = exact_search(x, rows, k)
    kth = exact_v[:, -1].astype(np.float64)
    found = np.einsum("rkd,rd->rk", x[labels[rows]].astype(np.float64), x[rows].astype(np.float64))
    tol = 1e-5 * np.maximum(1.0, np.abs(kth))  # float32 rounding of the exact scores
    per_row = (found >= (kth - tol)[:, None]).sum(1) / k
    return {
        "recall_at_k": round(float(per_row.mean()), 6),
        "min_row_recall": round(float(per_row.min()), 6),
        "sample": len(rows),
    }


def faiss_topk(
    vectors: np.ndarray,
    params: CorrelateParams,
    method: str,
    excluded: np.ndarray,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Approximate top-k of every item with the contract of :func:`~pipeline.supervision.topk.blocked_topk`.

    Args:
        vectors: (N, d) teacher vectors.
        params: the correlate section (score, topk, ann, seed).
        method: ``ivf`` or ``hnsw``.
        excluded: (N,) bool; excluded items are never neighbours (their rows are zero and dropped).
        progress: show a bar over the search batches.

    Returns:
        values (N, k') float32 and indices (N, k') int64 0-based, k' = min(topk, included - 1), and the
        search statistics (method, index parameters, recall on the sample).
    """
    included = np.flatnonzero(~excluded)
    k = max(0, min(params.topk, len(included) - 1))
    out_v = torch.zeros(len(vectors), k, dtype=torch.float32)
    out_i = torch.zeros(len(vectors), k, dtype=torch.int64)
    info: dict[str, Any] = {"method": method}
    if k == 0:
        return out_v, out_i, info
    faiss.omp_set_num_threads(torch.get_num_threads())  # the stage's thread decision, not every core
    x = search_vectors(vectors[included], params.score)
    index, info["index"] = build_index(x, method, params.ann, k, params.seed)
    rows = np.arange(len(x))
    values, labels, complete = search_all(index, x, rows, k, progress)
    del index
    short = np.flatnonzero(~complete)
    if len(short):
        log.info(
            "%d items got fewer than %d neighbours from the %s index: searched exactly", len(short), k, method
        )
        values[short], labels[short] = exact_search(x, short, k)
    info["exact_fallback_items"] = int(len(short))
    info["recall"] = sample_recall(x, labels, k, params.ann.recall_sample, params.seed)
    out_v[torch.from_numpy(included)] = torch.from_numpy(values)
    out_i[torch.from_numpy(included)] = torch.from_numpy(included[labels])
    return out_v, out_i, info
