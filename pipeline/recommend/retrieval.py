"""Top-K retrieval through a faiss inner-product index over the items' output embeddings.

The brute-force path (``index: exact``, :func:`pipeline.recommend.topk.top_k`) scores every item with one
matmul; here the catalogue side of the model's logits (:meth:`Student.logit_factors`: the output embeddings,
L2-normalised for ``scoring: cos``) goes into a faiss index once, and each user's side (the hidden state,
normalised and divided by the temperature for ``cos``) is a query, so the scores are the model's own logits.

- ``flat``: ``IndexFlatIP``, exact (the same ids and order as brute force, ties aside);
- ``hnsw``: ``IndexHNSWFlat`` with inner product, approximate (``hnsw_m`` links per node, ``hnsw_ef_search``
  candidates per query, ``hnsw_ef_construction`` while building);
- ``ivf``: ``IndexIVFFlat`` with inner product, approximate: faiss k-means cells (``ivf_nlist``; default
  sqrt(N), trained on a seeded sample of 64 items per cell), each query scanning its ``ivf_nprobe`` best cells.
  It builds in minutes where an HNSW graph over millions of items takes an hour, and its query scans about
  nprobe x N / nlist items;
- ``pq``: ``IndexPQFastScan`` with inner product and an exact re-ranking: every item is scanned, but as a
  code of ``pq_m`` 4-bit sub-quantizers (``pq_m`` / 2 bytes, scored with in-register lookup tables), and the
  ``pq_rerank`` best candidates of that scan are re-scored with the full vectors. No partition of the space,
  so no item is out of reach: on random (i.i.d.) vectors, where cells and graphs lose most of the top-K, the
  scan's error only reorders near-ties, and the re-ranking repairs that;
- ``auto``: ``exact`` below :data:`EXACT_BELOW` items, ``flat`` from there on (HNSW only when asked for: at its
  default settings its recall@10 was 0.82 on 100,000 random 64-d items).

History masking stays exact: the index is asked for ``k`` + (history length) candidates, history items are
dropped, and rows left with fewer than ``k`` ask again for twice as many, then fall back to scoring every
item (:func:`_exact_rows`), so a history item is never returned and no slot is left empty that an unmasked
item could fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ivf import best_of_candidates

# below this many items the torch matmul answers a batch of users faster than the HNSW graph does (measured
# with benchmarks/bench_recommend.py, 1 thread, hidden 64: see the README's serving section)
EXACT_BELOW = 50_000
KINDS = ("auto", "exact", "flat", "hnsw", "ivf", "pq")
# kinds whose top-K may miss items: the recommend stage measures their recall
APPROXIMATE = ("hnsw", "ivf", "pq")
IVF_TRAIN_PER_CELL = 64  # ivf: k-means training sample per cell (faiss samples nlist x this, seeded)
PQ_ADD_ROWS = 1 << 20  # pq: items coded at once
PQ_TRAIN = 65_536  # pq: items (a seeded sample) that train the codebooks: 4,096 per 4-bit centroid


@dataclass(frozen=True)
class IndexSpec:
    """Which retrieval ranks the catalogue, and the HNSW and IVF settings (the ``recommend`` params' names)."""

    index: str = "auto"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 40
    ivf_nlist: int | None = None  # None: sqrt(N)
    ivf_nprobe: int = 32
    pq_m: int | None = None  # None: dim / 2
    pq_rerank: int = 1000

    def kind(self, n_items: int) -> str:
        """``exact``, ``flat``, ``hnsw``, ``ivf`` or ``pq`` for a catalogue of ``n_items`` (``auto`` resolved)."""
        if self.index not in KINDS:
            raise ValueError(f"recommend.index must be one of {' | '.join(KINDS)}, got {self.index!r}")
        if self.index == "auto":
            return "exact" if n_items < EXACT_BELOW else "flat"
        return self.index


def _history_keys(rows: np.ndarray, indptr: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    """``i * width + item`` for every history item of ``rows[i]`` (the CSR ``indptr``/``items``)."""
    lengths = indptr[rows + 1] - indptr[rows]
    starts = np.repeat(indptr[rows], lengths)
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.arange(len(rows), dtype=np.int64), lengths) * width + items[starts + within]


def _first_k(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` kept candidates in rank order; item 0 / ``-inf`` where fewer are kept."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, 1)
    out_ids = np.where(kept, np.take_along_axis(ids, order, 1), 0)
    out_scores = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf).astype(np.float32)
    return out_ids, out_scores


class ItemIndex:
    """A faiss inner-product index over the item vectors of dense ids 1..N."""

    def __init__(self, vectors: np.ndarray, spec: IndexSpec, kind: str | None = None) -> None:
        """``vectors``: (N, H) float32, row ``i`` the catalogue side of item ``i + 1``'s logit."""
        import faiss  # only when an index is used

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = self.vectors.shape
        self.kind = kind or spec.kind(n)
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, int(spec.hnsw_m), faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = int(spec.hnsw_ef_construction)
            self.index.hnsw.efSearch = int(spec.hnsw_ef_search)
        elif self.kind == "ivf":
            from pipeline.ivf import trained_ivf  # correlate's ivf cells, built the same way

            nlist = min(int(spec.ivf_nlist or max(1, round(n**0.5))), n)
            # the quantizer is held here: the index refers to it
            self.index, self.quantizer = trained_ivf(self.vectors, nlist, IVF_TRAIN_PER_CELL, seed=0)
            self.index.nprobe = min(int(spec.ivf_nprobe), nlist)
        elif self.kind == "pq":
            self.index = _Reranked(self.vectors, spec)
            return
        else:
            raise ValueError(f"no faiss index of kind {self.kind!r} (flat | hnsw | ivf | pq)")
        self.index.add(self.vectors)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        hist_indptr: np.ndarray | None = None,
        hist_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items per query, best first, history items (CSR, dense ids) never among them.

        Returns:
            ``(items, scores)``: (B, min(k, N)) int64 dense ids and float32 inner products; item 0 and
            ``-inf`` in slots only a history item could fill (as :func:`~pipeline.recommend.topk.top_k`).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n, b = len(self), len(queries)
        k = min(k, n)
        if hist_indptr is None:
            hist_indptr, hist_items = np.zeros(b + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        indptr = np.asarray(hist_indptr, dtype=np.int64)
        items = np.asarray(hist_items, dtype=np.int64)
        out_ids = np.zeros((b, k), dtype=np.int64)
        out_scores = np.full((b, k), -np.inf, dtype=np.float32)
        pending = np.arange(b)
        ask = np.minimum(k + np.diff(indptr), n)  # enough candidates per row unless the index misses some
        while len(pending):
            fetch = int(ask[pending].max())
            dist, found = self.index.search(queries[pending], fetch)
            ids = found.astype(np.int64) + 1  # faiss row -> dense id; a missing result (-1) becomes 0
            keys = np.arange(len(pending), dtype=np.int64)[:, None] * (n + 1) + ids
            keep = (ids > 0) & ~np.isin(keys, _history_keys(pending, indptr, items, n + 1))
            got_ids, got_scores = _first_k(ids, dist, keep, k)
            full = keep.sum(1) >= k
            if fetch >= n:  # nothing more to ask the index for: score the rest exactly
                full[:] = True
                short = pending[keep.sum(1) < k]
                if len(short):
                    ex_ids, ex_scores = self._exact_rows(queries[short], short, indptr, items, k)
                    where = np.searchsorted(pending, short)
                    got_ids[where], got_scores[where] = ex_ids, ex_scores
            out_ids[pending[full]], out_scores[pending[full]] = got_ids[full], got_scores[full]
            pending = pending[~full]
            ask[pending] = np.minimum(2 * ask[pending], n)
        return out_ids, out_scores

    def _exact_rows(
        self, queries: np.ndarray, rows: np.ndarray, indptr: np.ndarray, items: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force for a few rows: every item scored, history masked (the fallback of :meth:`search`)."""
        scores = queries @ self.vectors.T  # (R, N)
        keys = _history_keys(rows, indptr, items, len(self) + 1)
        scores[keys // (len(self) + 1), keys % (len(self) + 1) - 1] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(scores, order, 1)
        return np.where(np.isneginf(best), 0, order + 1), best.astype(np.float32)


class _Reranked:
    """A 4-bit product-quantisation scan of every item, its best candidates re-scored exactly (``pq``).

    Quacks like the faiss index :class:`ItemIndex` searches: ``ntotal`` and ``search(queries, k)``, returning
    (B, k) inner products (exact) and rows (-1 where fewer than k exist). ``rerank`` is settable.
    """

    def __init__(self, vectors: np.ndarray, spec: IndexSpec) -> None:
        import faiss

        n, dim = vectors.shape
        # the default codes 2 dimensions per sub-quantizer; an odd width gains a zero column for the codes
        # alone (it changes no inner product)
        self.pad = dim % 2 if spec.pq_m is None else 0
        m = int(spec.pq_m or (dim + self.pad) // 2)
        if (dim + self.pad) % m:
            raise ValueError(f"recommend.pq_m must divide the item vectors' width {dim}, got {m}")
        self.vectors = vectors  # the caller's array, not a copy: the re-ranking reads it
        self.rerank = int(spec.pq_rerank)
        self.index = faiss.IndexPQFastScan(dim + self.pad, m, 4, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors if n <= PQ_TRAIN else vectors[np.sort(rng.choice(n, PQ_TRAIN, replace=False))]
        self.index.train(self._padded(sample))
        for s in range(0, n, PQ_ADD_ROWS):  # a padded copy a block at a time
            self.index.add(self._padded(vectors[s : s + PQ_ADD_ROWS]))

    def _padded(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, self.pad))) if self.pad else x)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows per query by exact inner product among the scan's ``max(k, rerank)`` best."""
        n = self.ntotal
        fetch = min(max(k, self.rerank), n)
        _, cand = self.index.search(self._padded(queries), fetch)
        return best_of_candidates(queries, self.vectors, cand, k)  # exact scores, best first
