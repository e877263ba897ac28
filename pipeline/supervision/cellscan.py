"""The ivf scan: every item's top-k among the members of the cells it probes, cell by cell.

An inverted-file search done query by query reads each probed cell's vectors once per query, so it is
bound by memory. Here all the queries of a chunk that probe a cell are scored against the cell's members in
one matrix product, and each row keeps a running top-k, as :func:`~pipeline.supervision.topk.blocked_topk`
does for the exact search:

1. each row's own cell (probe 0) gives it an exact top-k (the cells' self-joins: small);
2. for every other probed cell, only the entries above the row's current k-th best are merged: the tile's
   maxima over segments of ``SEGMENT`` columns rule out most of it at once. A row scanning c candidates
   after its own cell's m merges about k ln(c / m) of them, so at 10 M items and 20-30 probed cells of
   ~1,200 members the matrix products take most of the time (docs/RESULTS.md, session 23).

The scores are float32: a bf16 product's rounding bound, about 0.013 at 128 dimensions, is wider than the
spread of the best scores inside a dense cluster, so a bf16 pass would rule out little there (in a prototype
on 250,000 items of isotropic noise, 9.5 % of the entries fell within its margin, against 1.1 % in float32).
Queries are taken in cell order, so a chunk's rows share cells; each chunk computes its own probes, so the
probes of all items never sit in memory at once, and the vectors are gathered, never copied in cell order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from pipeline.progress import progress_bar
from pipeline.supervision.topk import merge_candidates, tile_topk

CHUNK_PAIRS = 1 << 25  # (query, probed cell) pairs per chunk of queries: bounds the chunk's probe buffers
MIN_CHUNK = 65_536  # the fewest queries per chunk (small catalogues: one chunk)
TILE_ELEMENTS = 1 << 23  # scores per tile (a cell's members x the rows probing it, a few rows at a time)
SEGMENT = 64  # columns per segment maximum in the threshold search (cells are short rows)
NEG_INF = float("-inf")


def scan_cells(
    x: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    probe: Callable[[np.ndarray, int], np.ndarray],
    nprobe: int,
    k: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Each row's best ``k`` other rows among the members of its ``nprobe`` probed cells, by inner product.

    Args:
        x: (n, d) float32 search vectors (L2-normalised for cos).
        order: (n,) int64, the rows grouped by their own cell; ``starts`` (nlist + 1,): cell c's members are
            ``order[starts[c]:starts[c + 1]]``.
        probe: ``probe(vectors, p)`` -> (m, p) int64, each vector's p nearest cells, nearest (its own) first
            (the faiss quantizer's ``search`` labels).
        nprobe: cells scanned per row, its own included.
        k: results per row.
        progress: a bar over the chunks.

    Returns:
        values (n, k) float32, labels (n, k) int64 (rows of ``x``), each row by score descending then label
        ascending (:func:`drop_self`); complete (n,) bool, the rows that got k results; and the seconds spent on the
        own cells and on the other cells (the chunks' probe searches included).
    """
    n = len(x)
    # the cell of each position in cell order
    cell_of = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    scan = Scan(torch.from_numpy(x), torch.from_numpy(order), starts)
    values = np.empty((n, k), dtype=np.float32)
    labels = np.empty((n, k), dtype=np.int64)
    complete = np.empty(n, dtype=bool)
    times = {"own_cells": 0.0, "other_cells": 0.0}
    chunk = max(MIN_CHUNK, CHUNK_PAIRS // max(1, nprobe))
    chunks = range(0, n, chunk)
    for q0 in progress_bar(chunks, desc="ivf cells", unit="chunk", disable=not progress, leave=False):
        q1 = min(n, q0 + chunk)
        t0 = time.perf_counter()
        best_v, best_i = scan.own_cells(cell_of, q0, q1, k)
        t1 = time.perf_counter()
        if nprobe > 1:
            probes = torch.from_numpy(probe(x[order[q0:q1]], nprobe))
            scan.other_cells(probes, torch.from_numpy(cell_of[q0:q1]), q0, best_v, best_i)
        times["own_cells"] += t1 - t0
        times["other_cells"] += time.perf_counter() - t1
        v = best_v.numpy()
        lab = np.where(np.isfinite(v), order[np.maximum(best_i.numpy(), 0)], -1)  # back to the rows of x
        rows = order[q0:q1]
        values[rows], labels[rows], complete[rows] = drop_self(v, lab, rows, k)
    return values, labels, complete, times


class Scan:
    """The vectors ``xt`` (the rows of x) and the cells (``members``: the rows in cell order, cell c's at
    positions ``starts[c]:starts[c + 1]``); one reused score buffer. Rows are named by their position in
    cell order, chunk-local rows by position - q0."""

    def __init__(self, xt: torch.Tensor, members: torch.Tensor, starts: np.ndarray) -> None:
        self.xt, self.members, self.starts = xt, members, starts
        self.buffer = torch.empty(TILE_ELEMENTS, dtype=xt.dtype)

    def vectors(self, positions: torch.Tensor) -> torch.Tensor:
        """The vectors at these positions in cell order (index_select: a far faster gather than indexing)."""
        return self.xt.index_select(0, self.members.index_select(0, positions))

    def own_cells(self, cell_of: np.ndarray, q0: int, q1: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q1 - q0, k) values and labels (positions in cell order; -inf / -1 where the cell is too small):
        the exact top-k of the positions q0..q1 - 1 within their own cells (a chunk may cut a cell)."""
        best_v = torch.full((q1 - q0, k), NEG_INF)
        best_i = torch.full((q1 - q0, k), -1, dtype=torch.int64)
        for cell in range(int(cell_of[q0]), int(cell_of[q1 - 1]) + 1):
            lo, hi = int(self.starts[cell]), int(self.starts[cell + 1])
            a, b = max(lo, q0), min(hi, q1)  # the cell's positions in this chunk
            if b <= a or hi - lo < 2:
                continue
            tile = self.vectors(torch.arange(a, b)) @ self.vectors(torch.arange(lo, hi)).T
            tile[torch.arange(b - a), torch.arange(a - lo, b - lo)] = NEG_INF  # never your own neighbour
            v, i = tile_topk(tile, min(k, hi - lo - 1))
            best_v[a - q0 : b - q0, : v.shape[1]] = v
            best_i[a - q0 : b - q0, : v.shape[1]] = i + lo
        return best_v, best_i

    def other_cells(
        self, probes: torch.Tensor, mine: torch.Tensor, q0: int, best_v: torch.Tensor, best_i: torch.Tensor
    ) -> None:
        """Merge into the chunk's running top-k (``best_v``/``best_i``: (b, k), from the own cells; in place)
        every member of the rows' other probed cells (``probes``: (b, p); ``mine``: each row's own cell) that
        beats the row's k-th best so far."""
        p = probes.shape[1]
        flat = torch.where(probes != mine[:, None], probes, -1).reshape(-1)  # the own cell: done
        by_cell = torch.argsort(flat, stable=True)  # (row, probe) pairs grouped by cell, rows ascending
        cells, counts = torch.unique_consecutive(flat[by_cell], return_counts=True)
        pos = 0
        for cell, count in zip(cells.tolist(), counts.tolist(), strict=True):
            pairs = by_cell[pos : pos + count]
            pos += count
            lo, hi = (int(self.starts[cell]), int(self.starts[cell + 1])) if cell >= 0 else (0, 0)
            if hi > lo:
                for tile, rows in self.tiles(pairs // p, q0, lo, hi):
                    r, c = entries_above(tile, best_v[:, -1].index_select(0, rows))
                    if len(r):
                        vals = tile.view(-1).index_select(0, r * tile.shape[1] + c)
                        merge_candidates(
                            best_v, best_i, rows.index_select(0, r), lo + c, vals, best_v.shape[1]
                        )

    def tiles(
        self, rows: torch.Tensor, q0: int, lo: int, hi: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The score tiles of the chunk-local ``rows`` against the cell at positions lo..hi - 1, a few rows at
        a time (``TILE_ELEMENTS``); yields (tile, its rows). A tile is a contiguous view of the reused buffer,
        its width the cell's size rounded up to whole segments, the padding columns -inf."""
        m = hi - lo
        width = -(-m // SEGMENT) * SEGMENT
        cell = torch.zeros(width, self.xt.shape[1], dtype=self.xt.dtype)
        cell[:m] = self.vectors(torch.arange(lo, hi))
        step = max(1, TILE_ELEMENTS // width)
        for s in range(0, len(rows), step):
            part = rows[s : s + step]
            tile = self.buffer[: len(part) * width].view(len(part), width)
            torch.mm(self.vectors(q0 + part), cell.T, out=tile)
            tile[:, m:] = NEG_INF
            yield tile, part


def entries_above(tile: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every entry of the contiguous ``tile`` (its width a multiple of ``SEGMENT``)
    strictly above its row's ``threshold``, row-major: segments whose maximum does not beat the threshold
    are ruled out at once, and only the others are compared entry by entry."""
    b, width = tile.shape
    nseg = width // SEGMENT
    segs = tile.view(b * nseg, SEGMENT)
    hit = (tile.view(b, nseg, SEGMENT).amax(dim=2) > threshold[:, None]).view(-1).nonzero().squeeze(1)
    if not len(hit):
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    row = hit // nseg
    above = segs.index_select(0, hit) > threshold.index_select(0, row)[:, None]  # (hits, SEGMENT)
    i, j = above.nonzero().unbind(1)
    return row.index_select(0, i), (hit.index_select(0, i) % nseg) * SEGMENT + j


def drop_self(
    scores: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best ``k`` results other than the row itself, by score descending then label ascending.

    Args:
        scores, labels: (b, k + 1) faiss results (label -1: no result) of queries ``rows`` (b,), in the
            same numbering as the labels (or the ivf scan's (b, k), which never holds the row itself).
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
