"""The serving library: top-K recommendations from a trained student for a history (:class:`Recommender`,
:func:`top_k`); the ``recommend`` stage's batch over every user is :mod:`pipeline.recommend.recommend`.

The scoring, the input windows and the masking are the evaluator's own (:mod:`pipeline.evaluation.metrics`:
:func:`history_windows`, :func:`mask_scores_`), so item ``r`` of a top-K list is exactly the item the
evaluator would rank at ``r - 1`` for the same history. The history here is a user's *whole* sequence,
validation and test items included: recommendations are for use, not for evaluation.

Only torch and numpy are imported (no polars, dvc or mlflow), so the MLflow pyfunc model can use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.errors import DataError, PipelineError
from pipeline.evaluation.cases import history_windows
from pipeline.evaluation.metrics import mask_scores_
from pipeline.recommend.retrieval import IndexSpec, ItemIndex, _history_keys

log = logging.getLogger(__name__)

ITEMS_JSON = "items.json"  # the item-id map inside an MLflow model: {"item_ids": [...]} in dense-id order


class UnknownItemsError(PipelineError, ValueError):
    """A history names item ids the model's catalogue does not know."""


class Scorer(Protocol):
    """What recommending needs from a model (``pipeline.models.Student`` satisfies it)."""

    num_items: int
    max_len: int

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded int64 inputs -> (B, N+1) next-item scores."""
        ...


# --------------------------------------------------------------------------------------------- item map
@dataclass(frozen=True)
class ItemCatalogue:
    """Original item ids (ASINs) of the dense ids 1..N, and optionally each item's text.

    Attributes:
        ids: (N,) original ids; ``ids[i]`` is dense item ``i + 1``.
        text: (N,) item text (what the text teacher embedded), or None.
    """

    ids: list[str]
    text: list[str] | None = None
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({item_id: i + 1 for i, item_id in enumerate(self.ids)})
        if len(self._index) != len(self.ids):
            raise DataError("item ids are not unique: cannot map original ids to dense ids")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_parquet(cls, path: str | Path, with_text: bool = False) -> ItemCatalogue:
        """Read ``data/processed/items.parquet`` (``item`` dense 1..N, ``item_id`` original id, ``text``)."""
        from pipeline.artifacts.items import read_items

        cols = ["item", "item_id"] + (["text"] if with_text else [])
        table = read_items(Path(path), cols)
        ids = [str(x) for x in table.column("item_id").to_pylist()]
        text = [t or "" for t in table.column("text").to_pylist()] if with_text else None
        return cls(ids, text)

    def to_json(self, path: str | Path) -> None:
        """Write ``{"item_ids": [...]}`` (dense order), the item map shipped inside the MLflow model."""
        Path(path).write_text(json.dumps({"item_ids": self.ids}))

    @classmethod
    def from_json(cls, path: str | Path) -> ItemCatalogue:
        path = Path(path)
        try:
            ids = json.loads(path.read_text())["item_ids"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not an item map ({err})") from None
        return cls([str(x) for x in ids])

    def dense(self, original: Sequence[str]) -> np.ndarray:
        """Dense ids of ``original`` ids, in order (int64).

        Raises:
            UnknownItemsError: naming every id the catalogue does not hold.
        """
        out = np.fromiter((self._index.get(str(x), 0) for x in original), dtype=np.int64, count=len(original))
        if (out == 0).any():
            unknown = list(dict.fromkeys(str(x) for x, d in zip(original, out, strict=True) if d == 0))
            shown = ", ".join(unknown[:20]) + (
                f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
            )
            raise UnknownItemsError(
                f"unknown item id(s): {shown}; the model's catalogue has {len(self)} items "
                f"(original ids as in data/processed/items.parquet, column item_id)"
            )
        return out


# --------------------------------------------------------------------------------------------- top-k
def top_k(
    scores: torch.Tensor,
    k: int,
    hist_indptr: np.ndarray | None = None,
    hist_items: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items of each row, best first; padding and (when given) history items never appear.

    Args:
        scores: (B, N+1) next-item scores (column 0 is padding). Not modified.
        k: items per row (at most N).
        hist_indptr, hist_items: CSR histories to mask (see :func:`mask_scores_`), or None.

    Returns:
        ``(items, scores)``, both (B, min(k, N)): int64 dense ids and float32 scores; a slot that only a
        masked item could fill (k larger than the unmasked catalogue) holds item 0 and score ``-inf``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = mask_scores_(scores.to(dtype=torch.float32, copy=True), hist_indptr, hist_items)
    vals, idx = torch.topk(s, min(k, s.shape[1] - 1), dim=1, sorted=True)
    idx = torch.where(torch.isneginf(vals), torch.zeros_like(idx), idx)
    return idx, vals


class Recommender:
    """A trained student with its item map: histories of item ids in, top-K ids and scores out."""

    def __init__(
        self,
        model: Scorer,
        catalogue: ItemCatalogue,
        device: str | torch.device | None = None,
        index: IndexSpec | None = None,
    ) -> None:
        if int(model.num_items) != len(catalogue):
            raise DataError(
                f"the model scores {model.num_items} items but the item map has {len(catalogue)}: "
                "they come from different data (rerun the train stage)"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.catalogue = catalogue
        # a served model's weights do not change: its item representations are computed once, not per call
        # (on Beauty's 12,101 items that was most of one user's latency)
        # and so is the catalogue side of its logits (Student.item_side, the last-item prior's covariance included)
        self._items: torch.Tensor | None = None
        self._side: Any = None
        # for the transition prior's re-ranking (_rerank): the item rows on the CPU and their covariance
        self._cpu_keys: torch.Tensor | None = None
        self._keys_cov: torch.Tensor | None = None
        if isinstance(model, torch.nn.Module) and hasattr(model, "item_side"):
            with torch.inference_mode():
                self._items = model.item_representations()
                self._side = model.item_side(self._items)
        # the retrieval (pipeline.recommend.retrieval): "exact" scores every item with one matmul; a faiss
        # index holds the catalogue side of the model's logits (Student.item_side) once
        self.index: ItemIndex | None = None
        kind = (index or IndexSpec()).kind(len(catalogue))
        if kind != "exact":
            if self._side is None:
                raise DataError(f"recommend.index: {kind} needs a trained student (its item representations)")
            keys = self._side.keys[1:].detach().float().cpu().numpy()
            self.index = ItemIndex(keys, index or IndexSpec(), kind)
            log.info("%s index over %d items", kind, len(catalogue))

    @property
    def index_kind(self) -> str:
        """``exact``, ``flat``, ``hnsw``, ``ivf`` or ``pq``: how :meth:`top_k_csr` ranks the catalogue."""
        return "exact" if self.index is None else self.index.kind

    def _query_rows(self, inputs: torch.Tensor) -> torch.Tensor:
        """The user side of the logits (Student.query_side) of left-padded inputs."""
        model: Any = self.model
        hidden, recent = model.user_states(inputs, items=self._items)
        return model.query_side(hidden, recent, self._side)

    @property
    def _transitions_on(self) -> bool:
        cfg = getattr(self.model, "cfg", None)
        return getattr(cfg, "transition_prior", 0.0) > 0 and self.model.transitions is not None

    def _rerank(
        self, inputs: torch.Tensor, k: int, hist_indptr: np.ndarray | None, hist_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K through the index for a model with a transition prior (not an inner product): the index's
        best K by the inner product, united with each user's transition candidates, all scored exactly. With an
        exact index (flat) that is the exact top-K: the prior only adds (w >= 0, T >= 0), so an item outside the
        index's K has at least K items above it in the final scores too. ``hist_indptr`` None: the history is
        not masked."""
        from pipeline.models.transitions import transition_entries

        model: Any = self.model
        hidden, recent = model.user_states(inputs, items=self._items)
        q_dev = model.query_side(hidden, recent, self._side).float()
        if self._cpu_keys is None:  # once: the index and the candidates live on the CPU; the covariance of
            # the item rows gives each user's score std without scoring every item
            self._cpu_keys = self._side.keys.float().cpu()
            rows = self._cpu_keys[1:] - self._cpu_keys[1:].mean(0)
            self._keys_cov = rows.T @ rows / max(1, len(rows) - 1)
        q, keys = q_dev.cpu(), self._cpu_keys
        sd = ((q @ self._keys_cov) * q).sum(1).clamp_min(0).sqrt()
        scale = (model.cfg.transition_prior * sd).to(q_dev.device)
        b, j, w = (x.cpu() for x in transition_entries(model.transitions, *model._recency(recent), scale))
        n1 = keys.shape[0]
        t_keys, t_inv = torch.unique(b * n1 + j, return_inverse=True)
        t_vals = torch.zeros(len(t_keys)).index_add_(0, t_inv, w.float())
        if hist_indptr is None:
            ids, _ = self.index.search(q.numpy(), k)
        else:
            ids, _ = self.index.search(q.numpy(), k, hist_indptr, hist_items)
        ids_t = torch.from_numpy(ids)
        i_keys = (torch.arange(len(q))[:, None] * n1 + ids_t)[ids_t > 0]
        cand = torch.unique(torch.cat([i_keys, t_keys]))
        if hist_indptr is not None:  # a transition candidate may be a history item
            rows = np.arange(len(q), dtype=np.int64)
            hist = torch.from_numpy(_history_keys(rows, np.asarray(hist_indptr), np.asarray(hist_items), n1))
            cand = cand[~torch.isin(cand, hist)]
        cb, cj = cand // n1, cand % n1
        score = (q[cb] * keys[cj]).sum(1)
        if len(t_keys):  # the transition term of the candidates that have one (t_keys is sorted)
            pos = torch.searchsorted(t_keys, cand).clamp_max(len(t_keys) - 1)
            score = score + torch.where(t_keys[pos] == cand, t_vals[pos], torch.zeros_like(score))
        order = np.lexsort((-score.numpy(), cb.numpy()))  # by user, best first
        cb_o, cj_o, s_o = cb.numpy()[order], cj.numpy()[order], score.numpy()[order]
        first = np.searchsorted(cb_o, np.arange(len(q)))
        rank = np.arange(len(cb_o)) - first[cb_o]
        keep = rank < k
        out_ids = np.zeros((len(q), min(k, n1 - 1)), dtype=np.int64)
        out_scores = np.full(out_ids.shape, -np.inf, dtype=np.float32)
        out_ids[cb_o[keep], rank[keep]] = cj_o[keep]
        out_scores[cb_o[keep], rank[keep]] = s_o[keep]
        return out_ids, out_scores

    def _exact_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every item's score of left-padded inputs, as the model's ``user_scores`` ranks them (without its
        exclusion, which :meth:`top_k_csr` applies as history masking)."""
        model: Any = self.model
        hidden, recent = model.user_states(inputs, items=self._items)
        scores = model.query_side(hidden, recent, self._side) @ self._side.keys.T
        return model.add_transition_prior_(scores, recent)

    def _queries(self, inputs: torch.Tensor) -> np.ndarray:
        return self._query_rows(inputs).detach().float().cpu().numpy()

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        catalogue: ItemCatalogue | str | Path,
        device: str | torch.device | None = None,
        index: IndexSpec | None = None,
    ) -> Recommender:
        """Load ``model_dir`` (safetensors + config.json) and an item map (an ItemCatalogue or items.parquet);
        ``index``: the retrieval (default: ``auto``)."""
        from pipeline.models import load_student  # torch-heavy, only when used

        if not isinstance(catalogue, ItemCatalogue):
            catalogue = ItemCatalogue.from_parquet(catalogue)
        return cls(load_student(model_dir, "cpu"), catalogue, device, index)

    def top_k_csr(
        self, flat: np.ndarray, offsets: np.ndarray, k: int, mask_history: bool, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of B histories given in CSR form (``flat[offsets[b]:offsets[b+1]]``, dense ids, oldest first).

        Ranked by the index when there is one (``exact``: every item scored, whatever the index).

        Returns:
            ``(items, scores)``: (B, min(k, N)) int64 / float32 numpy arrays; item 0 / ``-inf`` where fewer
            than k items are left after masking.
        """
        flat = np.asarray(flat, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        # a student that excludes the items it is given (chosen on validation) masks them whatever is asked
        mask_history = mask_history or bool(getattr(getattr(self.model, "cfg", None), "exclude_seen", False))
        if len(lengths) and lengths.min() < 1:
            raise DataError(
                f"history {int(np.argmin(lengths))} of the batch is empty: nothing to recommend from"
            )
        if len(flat) and (flat.min() < 1 or flat.max() > len(self.catalogue)):
            raise DataError(f"item ids must be in 1..{len(self.catalogue)}, found {flat.min()}..{flat.max()}")
        inputs, hist_indptr, hist_items = history_windows(
            flat, offsets[:-1], lengths, int(self.model.max_len)
        )
        with torch.inference_mode():
            inputs = inputs.to(self.device)
            if self.index is not None and not exact:
                if self._transitions_on:
                    return self._rerank(inputs, k, hist_indptr if mask_history else None, hist_items)
                if mask_history:
                    return self.index.search(self._queries(inputs), k, hist_indptr, hist_items)
                return self.index.search(self._queries(inputs), k)
            # a student: its user_scores, from the side computed once; another scorer: its own user_scores
            scores = self.model.user_scores(inputs) if self._side is None else self._exact_scores(inputs)
            if mask_history:
                items, vals = top_k(scores, k, hist_indptr, hist_items)
            else:
                items, vals = top_k(scores, k)
        return items.cpu().numpy(), vals.cpu().numpy()

    def recommend(
        self, histories: Sequence[Sequence[str]], k: int, mask_history: bool = True
    ) -> list[tuple[list[str], list[float]]]:
        """Top-K original ids and scores for histories of original ids (oldest first).

        Raises:
            UnknownItemsError: an id is not in the catalogue (all unknown ids named at once).
            DataError: an empty history.
        """
        histories = [list(h) for h in histories]
        dense = self.catalogue.dense([x for h in histories for x in h])
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum([len(h) for h in histories], out=offsets[1:])
        items, vals = self.top_k_csr(dense, offsets, k, mask_history)
        out = []
        for row_items, row_vals in zip(items, vals, strict=True):
            keep = row_items > 0
            out.append(
                ([self.catalogue.ids[i - 1] for i in row_items[keep]], [float(v) for v in row_vals[keep]])
            )
        return out
