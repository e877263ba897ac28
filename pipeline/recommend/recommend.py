"""The ``recommend`` stage: top-K recommendations for every user, streamed to a Parquet file.

The scoring is the serving library's (:class:`pipeline.recommend.topk.Recommender`); the history here is a
user's *whole* sequence, validation and test items included: recommendations are for use, not for evaluation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.artifacts.sequences import check_sequences_schema
from pipeline.config import ParamsView, RecommendParams
from pipeline.errors import DataError
from pipeline.io import atomic_path
from pipeline.lineage import check_recommender
from pipeline.recommend.retrieval import APPROXIMATE, IndexSpec
from pipeline.recommend.topk import Recommender

log = logging.getLogger(__name__)

OUTPUT_SCHEMA_DOC = {
    "user": "dense user id (sequences.parquet `user`)",
    "user_id": "original user id (sequences.parquet `user_id`, when the source has one)",
    "rank": "1 = best",
    "item": "dense item id",
    "item_id": "original item id (ASIN)",
    "score": "model score (higher is better)",
}


RECALL_SEED = 0  # the users whose approximate top-K is checked against exact: the same sample every run


def index_spec(params: RecommendParams | ParamsView) -> IndexSpec:
    """The retrieval the ``recommend`` params ask for."""
    return IndexSpec(
        params.index,
        int(params.hnsw_m),
        int(params.hnsw_ef_search),
        int(params.hnsw_ef_construction),
        None if params.ivf_nlist is None else int(params.ivf_nlist),
        int(params.ivf_nprobe),
        None if params.pq_m is None else int(params.pq_m),
        int(params.pq_rerank),
    )


def _recall(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per row, the share of exact's top-K items (item 0 = empty slot, not counted) that ``approx`` holds."""
    hits = [len(set(a[a > 0].tolist()) & set(e[e > 0].tolist())) for a, e in zip(approx, exact, strict=True)]
    return np.array(hits, dtype=np.float64) / np.maximum((exact > 0).sum(1), 1)


def run_recommend(
    params: RecommendParams | ParamsView,
    sequences_path: Path,
    items_path: Path,
    model_dir: Path,
    out_path: Path,
    recommender: Recommender | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-``params.k`` items for every user from the whole history, streamed in batches of users.

    Memory is one batch of ``params.batch_size`` users (their scores over the catalogue and their rows of
    output), whatever the number of users. Each batch is one row group of ``out_path``.

    Args:
        params: the ``recommend`` params section (k, mask_history, batch_size).
        sequences_path: ``data/processed/sequences.parquet`` (``user``, ``items``, optional ``user_id``).
        items_path: ``data/processed/items.parquet`` (the item-id map).
        model_dir: the trained model (safetensors + config.json).
        out_path: where the recommendations go (written atomically).
        recommender: an already-built recommender instead of loading ``model_dir`` (tests).
        device: where scores are computed (default: cuda when available, else cpu).
        progress: progress bar (plain log lines when stderr is not a terminal).

    With an approximate index (``hnsw``, ``ivf``, ``pq``), the top-K of a fixed seeded sample of ``params.recall_users`` users
    is also ranked exactly, and their mean recall@k is in the summary and the file's metadata.

    Returns:
        ``{"users": U, "rows": R, "k": k, "mask_history": bool, "index": kind}``, plus
        ``"recall_at_k"`` and ``"recall_users"`` with an approximate index.

    Raises:
        LineageError: the model was trained on another catalogue or other sequences (nothing written).
    """
    from pipeline.progress import progress_bar

    k, mask, batch_size = int(params.k), bool(params.mask_history), int(params.batch_size)
    if recommender is None:  # before any work: a model of other data would map its ids onto other items
        check_recommender(model_dir, items_path, sequences_path if Path(sequences_path).exists() else None)
    rec = (
        recommender
        if recommender is not None
        else Recommender.load(model_dir, items_path, device, index_spec(params))
    )
    item_ids = pa.array(rec.catalogue.ids, pa.string())
    try:
        source = pq.ParquetFile(sequences_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{sequences_path}: not found (run the ingest stage first)") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{sequences_path}: cannot be read as Parquet ({err})") from None
    names = source.schema_arrow.names
    check_sequences_schema(
        sequences_path, source.schema_arrow, ("user", "items")
    )  # the shared reader's checks
    columns = ["user", "items"] + (["user_id"] if "user_id" in names else [])
    fields = [pa.field("user", pa.int32())]
    if "user_id" in columns:
        fields.append(pa.field("user_id", pa.string()))
    fields += [
        pa.field("rank", pa.int32()),
        pa.field("item", pa.int32()),
        pa.field("item_id", pa.string()),
        pa.field("score", pa.float32()),
    ]
    meta = {"k": str(k), "mask_history": str(mask).lower(), "columns": json.dumps(OUTPUT_SCHEMA_DOC)}
    meta["index"] = rec.index_kind
    schema = pa.schema(fields, metadata=meta)
    n_users = source.metadata.num_rows
    sample = np.zeros(n_users, dtype=bool)  # users whose top-K is also ranked exactly (an index's recall)
    if rec.index_kind in APPROXIMATE and int(params.recall_users) > 0:
        rng = np.random.default_rng(RECALL_SEED)
        sample[rng.choice(n_users, min(int(params.recall_users), n_users), replace=False)] = True
    recalls: list[np.ndarray] = []
    users_done = rows = 0
    log.info(
        "recommending top-%d for %d users over %d items on %s", k, n_users, len(rec.catalogue), rec.device
    )
    bar = progress_bar(
        total=(n_users + batch_size - 1) // batch_size, desc="recommend", unit="batch", disable=not progress
    )
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=batch_size, columns=columns):
            col = batch.column("items")
            if col.null_count:
                raise DataError(f"{sequences_path}: column 'items' has null rows")
            offsets = col.offsets.to_numpy().astype(np.int64)
            flat = col.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0] : offsets[-1]]
            try:
                items, scores = rec.top_k_csr(flat, offsets - offsets[0], k, mask)
            except DataError as err:
                raise DataError(f"{sequences_path} (users {users_done + 1}..): {err}") from None
            rows_here = np.flatnonzero(sample[users_done : users_done + batch.num_rows])
            if len(rows_here):
                sub_offsets = np.concatenate([[0], np.cumsum(np.diff(offsets)[rows_here])])
                sub_flat = np.concatenate(
                    [flat[offsets[r] - offsets[0] : offsets[r + 1] - offsets[0]] for r in rows_here]
                )
                exact_items, _ = rec.top_k_csr(sub_flat, sub_offsets, k, mask, exact=True)
                recalls.append(_recall(items[rows_here], exact_items))
            keep = items > 0  # (B, K) slots a masked item would have filled are dropped
            row_of, slot = np.nonzero(keep)
            chosen = items[keep]
            cols: dict[str, Any] = {
                "user": batch.column("user").cast(pa.int32()).take(pa.array(row_of)),
            }
            if "user_id" in columns:
                cols["user_id"] = batch.column("user_id").cast(pa.string()).take(pa.array(row_of))
            cols["rank"] = pa.array((slot + 1).astype(np.int32))
            cols["item"] = pa.array(chosen.astype(np.int32))
            cols["item_id"] = item_ids.take(pa.array(chosen - 1))
            cols["score"] = pa.array(scores[keep].astype(np.float32))
            writer.write_table(pa.table(cols, schema=schema))
            users_done += batch.num_rows
            rows += int(keep.sum())
            bar.update(1)
        summary: dict[str, Any] = {"users": users_done, "rows": rows, "k": k, "mask_history": mask}
        summary["index"] = rec.index_kind
        if recalls:
            recall = np.concatenate(recalls)
            summary.update(recall_at_k=round(float(recall.mean()), 6), recall_users=len(recall))
            writer.add_key_value_metadata(
                {f"recall_at_{k}": str(summary["recall_at_k"]), "recall_users": str(len(recall))}
            )
    bar.close()
    log.info("wrote %d recommendations for %d users to %s", rows, users_done, out_path)
    if recalls:
        log.info(
            "%s recall@%d against exact ranking: %.4f over %d users",
            rec.index_kind,
            k,
            recall.mean(),
            len(recall),
        )
    return summary
