"""Approximate holistic neighbours with faiss, and their recall against an exact search.

``correlate.neighbours: ivf`` (inverted file: k-means cells, each item scans the ``nprobe`` cells nearest
to it, computed cell by cell as matrix products) and ``hnsw`` (a navigable small-world graph) search by inner
product: on L2-normalised vectors for score ``cos``, on the vectors as they are for ``dot``. Every included item is both indexed and
a query; excluded items are neither. Each item's own entry is dropped from its results (never your own
neighbour), the rest are ordered by score descending then index ascending, like the exact search. A row
the search returns too few neighbours for (an ivf item whose probed cells hold fewer than topk + 1 items)
is searched exactly.

The recall is measured at every approximate run on a fixed seeded sample of items: an exact search
(faiss's flat inner-product index) gives each sampled item its k-th best score, and an approximate
neighbour counts as found when its score reaches that (so items with equal vectors, whose exact order
among themselves is arbitrary, do not lower it). Time and memory are linear in the items for a fixed
``nprobe``/``nlist`` ratio, except the ivf default nlist, which grows with sqrt(items). Before the ivf scan,
``correlate.ann.target_recall`` raises ``nprobe`` until the recall the scan would reach on another seeded
sample holds (:mod:`pipeline.supervision.nprobe`); after the search (ivf or hnsw), rounds of
neighbour-of-neighbour refinement run until that sample's recall holds (:mod:`pipeline.supervision.refine`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import torch

from pipeline.config import CorrelateParams
from pipeline.config.inputs import INNER_PRODUCT_SCORES, AnnParams
from pipeline.ivf import trained_ivf
from pipeline.progress import progress_bar
from pipeline.supervision.cellscan import drop_self, scan_cells
from pipeline.supervision.nprobe import STALL, choose_nprobe, rows_recall
from pipeline.supervision.refine import refine_to_target

log = logging.getLogger(__name__)

SEARCH_BATCH = 16_384  # queries per faiss search call: bounds the result buffers, feeds the progress bar
APPROXIMATE = ("ivf", "hnsw")
LOW_RECALL = 0.9  # a sampled recall@k below it is logged as a warning, with the parameter to raise


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


def search_vectors(vectors: np.ndarray, score: str, rows: np.ndarray | None = None) -> np.ndarray:
    """A float32, C-contiguous copy of ``vectors`` (of its ``rows`` only, when given), L2-normalised in place
    for ``cos`` (a zero vector stays zero): inner product = score. One copy, whatever the input."""
    if rows is None:
        x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    else:
        x = np.ascontiguousarray(vectors[rows], dtype=np.float32)  # the row selection is the copy
    if score == "cos":
        faiss.normalize_L2(x)
    elif score != "dot":
        raise ValueError(f"faiss neighbours need score cos or dot, got {score!r}")
    return x


def train_cells(x: np.ndarray, ann: AnnParams, seed: int) -> tuple[Any, dict[str, Any]]:
    """The ivf cells: faiss k-means centroids (a seeded sample of ``nlist x train_per_list`` items) in a
    flat inner-product quantizer, which both assigns items to cells and finds each item's probed cells."""
    n = x.shape[0]
    nlist = min(ann.nlist or default_nlist(n, ann.nprobe), n)
    # only the quantizer is used: the scan is ivf_search's own
    _, quantizer = trained_ivf(x, nlist, ann.train_per_list, seed, ann.train_iters)
    return quantizer, {"nlist": nlist, "nprobe": min(ann.nprobe, nlist), "train_iters": ann.train_iters}


def probed_cells(quantizer: Any, x: np.ndarray, nprobe: int) -> np.ndarray:
    """(n, nprobe) int64: each row's cells by centroid inner product, nearest first (the first: its own)."""
    out = np.empty((len(x), nprobe), dtype=np.int64)
    for s in range(0, len(x), SEARCH_BATCH):
        out[s : s + SEARCH_BATCH] = quantizer.search(x[s : s + SEARCH_BATCH], nprobe)[1]
    return out


def ivf_search(
    x: np.ndarray,
    ann: AnnParams,
    k: int,
    seed: int,
    progress: bool = False,
    tuning: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Every row's top-k among the rows of the ``nprobe`` cells nearest to it (self dropped), as faiss's
    inverted-file index finds them, but scanned cell by cell (:func:`~pipeline.supervision.cellscan.scan_cells`:
    all the queries of a chunk that probe a cell are scored against its members in one matrix product)
    instead of one memory-bound scan of the probed cells per query. Beyond ``x`` the memory is the results,
    one chunk's probes and running top-k, and one score tile (10 M items, 20 neighbours: 5.1 GB of 128-d
    ``x``, 2.4 GB of results, about 1.5 GB per chunk).

    ``tuning``: the rows of the tuning sample and their exact k-th best scores (:func:`tuning_sample`), if
    the caller has them; otherwise they are drawn here when ``ann.target_recall`` needs them.

    Returns values, labels, complete (as :func:`drop_self`) and the cells' parameters (nlist, nprobe,
    train_iters, list_imbalance: nlist x the sum of squared cell sizes / items^2, 1 when balanced).
    """
    n = len(x)
    t0 = time.perf_counter()
    quantizer, info = train_cells(x, ann, seed)
    t1 = time.perf_counter()
    nprobe, nlist = info["nprobe"], info["nlist"]
    own = probed_cells(quantizer, x, 1)[:, 0]  # each row's own cell
    sizes = np.bincount(own, minlength=nlist)
    order = np.argsort(own, kind="stable")  # rows grouped by cell; a cell's members are one slice
    starts = np.concatenate([[0], np.cumsum(sizes)])
    limit = min(ann.max_nprobe, nlist)
    # correlate.ann.target_recall: raise nprobe until the recall on a tuning sample holds (nprobe.py)
    if ann.target_recall is not None and nprobe < limit:
        rows, kth = tuning if tuning is not None else tuning_sample(x, ann, k, seed)
        stall = STALL if ann.refine_rounds else None  # the refinement goes on from there
        chosen, tried = choose_nprobe(
            x, quantizer, order, starts, rows, kth, k, nprobe, limit, ann.target_recall, stall
        )
        info["nprobe_tuning"] = {str(p): r for p, r in tried.items()}  # JSON keys: stats.json, MLflow
        log.info(
            "ivf nprobe %d for recall@%d >= %g on %d tuning items (recall by nprobe: %s)",
            chosen,
            k,
            ann.target_recall,
            len(rows),
            ", ".join(f"{p}: {r:.4f}" for p, r in tried.items()),
        )
        nprobe = info["nprobe"] = chosen
    t2 = time.perf_counter()
    info["list_imbalance"] = round(float(nlist * (sizes.astype(np.float64) ** 2).sum() / n**2), 4)
    values, labels, complete, times = scan_cells(
        x, order, starts, lambda v, p: quantizer.search(v, p)[1], nprobe, k, progress
    )
    log.info(
        "ivf over %d items, %d cells, nprobe %d: k-means %.1fs, cell assignment (and nprobe) %.1fs, scan %.1fs "
        "(own cells %.1fs, other cells %.1fs)",
        n,
        nlist,
        nprobe,
        t1 - t0,
        t2 - t1,
        time.perf_counter() - t2,
        times["own_cells"],
        times["other_cells"],
    )
    return values, labels, complete, info


def build_hnsw(x: np.ndarray, ann: AnnParams, k: int) -> tuple[Any, dict[str, Any]]:
    """A faiss graph (hnsw) inner-product index over the rows of ``x``; also the parameters it was built
    with."""
    index = faiss.IndexHNSWFlat(x.shape[1], ann.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ann.ef_construction
    index.add(x)
    index.hnsw.efSearch = max(ann.ef_search, k + 1)
    return index, {"m": ann.m, "ef_construction": ann.ef_construction, "ef_search": index.hnsw.efSearch}


def search_all(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    rows: np.ndarray,
    k: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`drop_self` results of the queries ``x[rows]``, in batches; ``search(queries, n)`` returns faiss's
    (scores, labels) of each query's best ``n`` (an index's ``search``, or a brute-force one)."""
    values = np.empty((len(rows), k), dtype=np.float32)
    labels = np.empty((len(rows), k), dtype=np.int64)
    complete = np.empty(len(rows), dtype=bool)
    batches = range(0, len(rows), SEARCH_BATCH)
    for s in progress_bar(batches, desc="faiss search", unit="batch", disable=not progress, leave=False):
        r = rows[s : s + SEARCH_BATCH]
        d, i = search(x[r], k + 1)
        values[s : s + len(r)], labels[s : s + len(r)], complete[s : s + len(r)] = drop_self(d, i, r, k)
    return values, labels, complete


def exact_search(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (self dropped) of the rows ``rows`` of ``x`` among all rows: faiss's brute-force
    inner-product search (a flat index's, without copying ``x`` into one)."""
    values, labels, _ = search_all(
        lambda q, n: faiss.knn(q, x, n, metric=faiss.METRIC_INNER_PRODUCT), x, rows, k
    )
    return values, labels


def sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    """A seeded sample of ``sample`` of the rows 0..n-1 (all when fewer), sorted."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def tuning_sample(x: np.ndarray, ann: AnnParams, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The tuning sample of ``correlate.ann.target_recall`` (``recall_sample`` rows seeded by seed + 1, not
    the sample that reports the recall) and each row's exact k-th best score."""
    rows = sample_rows(len(x), ann.recall_sample, seed + 1)
    return rows, exact_search(x, rows, k)[0][:, -1]


def sample_recall(
    x: np.ndarray, labels: np.ndarray, k: int, sample: int, seed: int
) -> dict[str, float | int]:
    """Recall@k of the approximate ``labels`` (n, k) on a seeded sample of rows of ``x`` (see the module)."""
    rows = sample_rows(len(x), sample, seed)
    per_row = rows_recall(x, labels[rows], rows, exact_search(x, rows, k)[0][:, -1])
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
    every = len(included) == len(vectors)
    k = max(0, min(params.topk, len(included) - 1))
    info: dict[str, Any] = {"method": method}
    if k == 0:
        return torch.zeros(len(vectors), k), torch.zeros(len(vectors), k, dtype=torch.int64), info
    faiss.omp_set_num_threads(torch.get_num_threads())  # the stage's thread decision, not every core
    x = search_vectors(vectors, params.score, None if every else included)
    ann = params.ann
    # the refinement's tuning sample, shared with the ivf ladder (which draws it itself when alone)
    refine = ann.target_recall is not None and ann.refine_rounds > 0
    tuning = tuning_sample(x, ann, k, params.seed) if refine else None
    if method == "ivf":
        values, labels, complete, info["index"] = ivf_search(x, ann, k, params.seed, progress, tuning)
    else:
        index, info["index"] = build_hnsw(x, ann, k)
        values, labels, complete = search_all(index.search, x, np.arange(len(x)), k, progress)
        del index
    if tuning is not None:  # neighbours of neighbours, until the target holds
        info["refine"] = refine_to_target(x, values, labels, complete, *tuning, ann, progress)
    short = np.flatnonzero(~complete)
    if len(short):
        log.info(
            "%d items got fewer than %d neighbours from the %s index: searched exactly", len(short), k, method
        )
        values[short], labels[short] = exact_search(x, short, k)
    info["exact_fallback_items"] = int(len(short))
    info["recall"] = sample_recall(x, labels, k, ann.recall_sample, params.seed)
    del x
    if info["recall"]["recall_at_k"] < LOW_RECALL:
        if ann.target_recall is None:
            knob = "correlate.ann.nprobe" if method == "ivf" else "correlate.ann.ef_search"
            knob += " (or set target_recall)"
        else:  # the ivf tuning and the refinement stopped at their limits
            knob = "correlate.ann.max_nprobe" if method == "ivf" else "correlate.ann.ef_search"
            knob += " or correlate.ann.refine_rounds"
        log.warning(
            "%s neighbours: recall@%d %.3f against exact on %d sampled items: many true neighbours are "
            "missed; raise %s (or set correlate.neighbours: exact)",
            method,
            k,
            info["recall"]["recall_at_k"],
            info["recall"]["sample"],
            knob,
        )
    if every:  # the results are already in the caller's numbering: no (N, k) copies
        return torch.from_numpy(values), torch.from_numpy(labels), info
    out_v = torch.zeros(len(vectors), k, dtype=torch.float32)
    out_i = torch.zeros(len(vectors), k, dtype=torch.int64)
    out_v[torch.from_numpy(included)] = torch.from_numpy(values)
    out_i[torch.from_numpy(included)] = torch.from_numpy(included[labels])
    return out_v, out_i, info
