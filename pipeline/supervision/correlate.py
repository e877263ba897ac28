"""The correlate stage: teacher embeddings + training sequences -> data/supervision/.

Per modality in ``train.modalities``:

- ``teacher_<m>.parquet``: teacher vectors reduced to ``correlate.dim`` (PCA or an autoencoder; optionally
  rotated by a fixed random rotation, ``correlate.rotate``), with ``missing``;
- ``topk_<m>.parquet``: each item's ``correlate.topk`` most correlated other items (exact: blocked, never
  N x N; or approximate by a faiss index, ``correlate.neighbours``, with its recall on a sample in stats.json);
- ``codebook_<m>.safetensors``: the dissected-correlation codebook, fitted on pairs that co-occur in TRAINING
  sequences plus a share of random pairs: K centroids of the D-dim correlation vectors by k-means
  (``correlate.quantizer: kmeans``), or K scalar levels per sub-vector by 1-D k-means (``vq``, product
  quantisation: a pair's code is a D-tuple);

and one ``stats.json`` (deterministic: no timings; those go to the log and MLflow). Besides the score
distributions it records, per modality, each sub-vector's share of the reduced vectors' variance (before and
after the rotation: PCA without rotation packs most of it in the first sub-vectors, leaving the last ones
near noise), the mean and spread of teacher cosines on random pairs (compressed near 1 for ``sigmoid_ae``
codes, which are all positive), per-sub-vector cosine statistics and the code usage. The folder is built
under a temporary name and swapped in whole, so a failed run leaves the previous one intact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts.neighbours import write_neighbours
from pipeline.artifacts.vectors import VectorFile, open_item_vectors, write_item_vectors
from pipeline.config import CorrelateParams, MLflowParams, ParamsView
from pipeline.devices import resolve_device
from pipeline.errors import DataError
from pipeline.io import staged_dir, write_json
from pipeline.layout import SUPERVISION_STATS, codebook_file, embedding_file, neighbours_file, teacher_file
from pipeline.lineage import (
    FILES_KEY,
    INPUTS_KEY,
    check_embeddings_match_sequences,
    supervision_files,
    supervision_inputs,
)
from pipeline.supervision.ann import faiss_topk, resolve_method
from pipeline.supervision.autoencoders import autoencoder_reduce, sigmoid_autoencoder_reduce
from pipeline.supervision.pairs import read_training_item_sets, sample_pairs
from pipeline.supervision.quantize import fit_kmeans_codebook, fit_vq_codebook
from pipeline.supervision.reduction import Reduction, pca_reduce, rotate, sub_vector_variance_share
from pipeline.supervision.scores import pair_scores, sub_vector_scores
from pipeline.supervision.summaries import describe, format_shares, share_summary
from pipeline.supervision.topk import blocked_topk, topk_search_precision
from pipeline.tracking import start_run

log = logging.getLogger(__name__)

AE_DEFAULT_EPOCHS = {"autoencoder": 20, "sigmoid_ae": 200}  # correlate.ae_epochs: null
RANDOM_STATS_PAIRS = 100_000  # random pairs scored for the baseline distribution in stats.json
_PAIR_CHUNK = 65_536


def _reduce(params: CorrelateParams, source: VectorFile, device: torch.device) -> Reduction:
    missing = source.missing
    if params.reduction == "pca":
        return pca_reduce(source, params.dim, missing)  # block by block: the input is never held whole
    vectors = source.read().vectors  # the autoencoders train on the whole array
    epochs = params.ae_epochs or AE_DEFAULT_EPOCHS[params.reduction]
    if params.reduction == "sigmoid_ae":
        return sigmoid_autoencoder_reduce(
            vectors, params.dim, missing, max_epochs=epochs, seed=params.seed, device=str(device)
        )
    return autoencoder_reduce(
        vectors, params.dim, missing, epochs=epochs, seed=params.seed, device=str(device)
    )


def _pair_tensors(teacher: torch.Tensor, pairs: np.ndarray, fn: Any, device: torch.device) -> torch.Tensor:
    """Apply ``fn(a, b)`` to teacher rows of item pairs (1-based ids) in chunks, results on the CPU."""
    out = []
    for s in range(0, len(pairs), _PAIR_CHUNK):
        p = torch.from_numpy(pairs[s : s + _PAIR_CHUNK] - 1).to(device)
        out.append(fn(teacher[p[:, 0]], teacher[p[:, 1]]).cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Teacher:
    """The reduced teacher vectors of one modality and what the later steps need of the reduction."""

    vectors: np.ndarray  # (N, dim) as written (missing rows zeroed under policy zero/exclude)
    tensor: torch.Tensor  # the same on the device
    excluded: np.ndarray  # (N,) bool
    random_pairs: np.ndarray  # (P, 2) 1-based random pairs of included items, for the baseline statistics
    sub_vector_shares: list[float]  # each sub-vector's share of the variance, after the rotation if any
    stats: dict[str, Any]  # stats.json's ``reduction``


def _random_pairs(excluded: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``RANDOM_STATS_PAIRS`` uniformly random ordered pairs of distinct included items (1-based)."""
    included = np.flatnonzero(~excluded)
    rng = np.random.default_rng(seed)
    n_rand = min(RANDOM_STATS_PAIRS, len(included) * (len(included) - 1))
    ra = rng.integers(0, len(included), size=n_rand)
    rb = rng.integers(0, max(1, len(included) - 1), size=n_rand)
    rb += rb >= ra
    return np.stack([included[ra], included[rb]], axis=1) + 1 if n_rand else np.zeros((0, 2), np.int64)


def reduce_teacher(
    modality: str, params: CorrelateParams, embeddings: VectorFile, out_dir: Path, device: torch.device
) -> Teacher:
    """Reduce (and rotate) the teacher vectors to ``correlate.dim`` and write ``teacher_<m>.parquet``."""
    missing, meta = embeddings.missing, embeddings.metadata
    red = _reduce(params, embeddings, device)
    present = np.flatnonzero(~missing)  # the rows the reduction was fitted on
    shares = {"reduced": share_summary(sub_vector_variance_share(red.vectors, params.sub_vectors, present))}
    if params.rotate:
        red = rotate(red, params.seed)
        shares["rotated"] = share_summary(sub_vector_variance_share(red.vectors, params.sub_vectors, present))
    reduced = red.vectors
    if meta.get("missing_policy") in ("zero", "exclude"):
        # no content: a zero vector (cos 0 with everything), not the projection of an imputed vector
        reduced[missing] = 0.0
    teacher = torch.from_numpy(reduced).to(device)
    excluded = embeddings.excluded.copy()
    rand_pairs = _random_pairs(excluded, params.seed)
    rand_cos = _pair_tensors(teacher, rand_pairs, lambda a, b: pair_scores(a, b, "cos"), device)
    stats = {
        **red.info,
        "rotate": params.rotate,
        "sub_vector_variance_share": shares,
        "random_pair_cosine": describe(rand_cos.numpy()),
    }
    _log_reduction(modality, params, shares, stats["random_pair_cosine"])
    write_item_vectors(
        teacher_file(out_dir, modality),
        reduced,
        missing,
        metadata={
            "modality": modality,
            "reduction": stats,
            "rotate": params.rotate,
            "explained_variance_ratio": red.info.get("explained_variance_ratio"),
            "source_model": meta.get("model"),
            "teacher_dim": embeddings.dim,
            "dim": params.dim,
            "missing_policy": meta.get("missing_policy"),
            "normalize": False,
            "centred": True,
        },
    )
    final_shares = shares.get("rotated", shares["reduced"])["shares"]
    return Teacher(reduced, teacher, excluded, rand_pairs, final_shares, stats)


def _log_reduction(
    modality: str, params: CorrelateParams, shares: dict[str, Any], rc: dict[str, float]
) -> None:
    final = shares.get("rotated", shares["reduced"])
    log.info(
        "%s %s%s -> %d: variance share per sub-vector %s (max/min %s)%s; teacher cosine on random pairs "
        "%.4f +- %.4f",
        modality,
        params.reduction,
        " + rotation" if params.rotate else "",
        params.dim,
        format_shares(shares["reduced"]["shares"]),
        shares["reduced"]["max_min_ratio"],
        f", after rotation {format_shares(final['shares'])} (max/min {final['max_min_ratio']})"
        if params.rotate
        else "",
        rc.get("mean", float("nan")),
        rc.get("std", float("nan")),
    )
    if params.reduction == "sigmoid_ae":
        log.info(
            "%s: sigmoid codes are all positive, so their cosines are all positive and compressed (random "
            "pairs %.3f +- %.3f): related items differ from random ones by the spread, not the sign",
            modality,
            rc.get("mean", float("nan")),
            rc.get("std", float("nan")),
        )


def holistic_neighbours(
    modality: str, params: CorrelateParams, teacher: Teacher, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """Each item's ``correlate.topk`` most correlated items into ``topk_<m>.parquet``; their statistics."""
    excluded = teacher.excluded
    method = resolve_method(params, int((~excluded).sum()))
    if method == "exact":
        search = topk_search_precision(params.topk_precision, device)
        values, indices = blocked_topk(
            teacher.tensor,
            params.topk,
            params.score,
            params.block_size,
            torch.from_numpy(excluded),
            precision=search,
        )
        info: dict[str, Any] = {"method": method}
    else:
        search = "float32"
        values, indices, info = faiss_topk(teacher.vectors, params, method, excluded)
        log.info(
            "%s %s neighbours: recall@%d %s on %d sampled items",
            modality,
            method,
            values.shape[1],
            info["recall"]["recall_at_k"],
            info["recall"]["sample"],
        )
    k_eff = values.shape[1]
    write_neighbours(
        neighbours_file(out_dir, modality),
        values.numpy(),
        indices.numpy(),
        excluded,
        metadata={
            "modality": modality,
            "score": params.score,
            "topk": k_eff,
            "requested_topk": params.topk,
            "excluded_items": int(excluded.sum()),
            "search_precision": search,
            "method": method,
        },
    )
    rand_scores = _pair_tensors(
        teacher.tensor, teacher.random_pairs, lambda a, b: pair_scores(a, b, params.score), device
    )
    kept_v = values.numpy()[~excluded]
    return {
        "k": k_eff,
        "top1": describe(kept_v[:, 0] if k_eff else np.empty(0)),
        "kth": describe(kept_v[:, -1] if k_eff else np.empty(0)),
        "all": describe(kept_v.reshape(-1)),
        "random_pairs": describe(rand_scores.numpy()),
        "search": info,
    }


def dissected_codebook(
    modality: str,
    params: CorrelateParams,
    teacher: Teacher,
    sequences_path: Path,
    out_dir: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Fit the codebook on co-occurring + random pairs' sub-vector correlations; ``codebook_<m>.safetensors``."""
    n = len(teacher.vectors)
    sets = read_training_item_sets(sequences_path, n, np.concatenate([[True], teacher.excluded]))
    pairs, n_co = sample_pairs(sets, params.sample_pairs, params.random_pair_fraction, params.seed)
    corr = _pair_tensors(
        teacher.tensor, pairs, lambda a, b: sub_vector_scores(a, b, params.sub_vectors), device
    )
    base = {
        "codes": params.codes,
        "sub_vectors": params.sub_vectors,
        "sample_pairs": int(len(pairs)),
        "co_occurring_pairs": int(n_co),
        "random_pairs": int(len(pairs) - n_co),
        "users_with_pairs": int((sets.sizes >= 2).sum()),
    }
    cb_meta = {
        "modality": modality,
        "seed": params.seed,
        "sample_pairs": len(pairs),
        "co_occurring_pairs": n_co,
    }
    shares = teacher.sub_vector_shares
    if params.quantizer == "vq":
        stats, codebook = fit_vq_codebook(params, corr, n_co, base, cb_meta, shares)
    else:
        stats, codebook = fit_kmeans_codebook(params, corr, n_co, base, cb_meta, shares, device)
    codebook.save(codebook_file(out_dir, modality))
    if stats["max_code_share"] > 0.5:
        log.warning(
            "%s: one code takes %.0f%% of the sampled pairs%s: the codebook carries little information",
            modality,
            100 * stats["max_code_share"],
            " (of one sub-vector)" if params.quantizer == "vq" else "",
        )
    return stats


def build_modality(
    modality: str,
    params: CorrelateParams,
    embeddings_path: Path,
    sequences_path: Path,
    out_dir: Path,
    device: torch.device,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Write teacher_, topk_ and codebook_ files of one modality into ``out_dir``; return its statistics."""
    if not embeddings_path.exists():
        raise DataError(
            f"{embeddings_path}: no {modality} embeddings, but train.modalities lists {modality!r} "
            f"(run the embed stage with the same train.modalities)"
        )
    t0 = time.perf_counter()
    embeddings = open_item_vectors(embeddings_path)  # the vectors are read by the reduction, in blocks
    if embeddings.excluded.all():
        raise DataError(f"{embeddings_path}: every item is excluded (missing_policy=exclude)")
    teacher = reduce_teacher(modality, params, embeddings, out_dir, device)
    meta, (n_items, teacher_dim) = embeddings.metadata, embeddings.shape
    n_missing = int(embeddings.missing.sum())
    t1 = time.perf_counter()
    topk_stats = holistic_neighbours(modality, params, teacher, out_dir, device)
    t2 = time.perf_counter()
    codebook_stats = dissected_codebook(modality, params, teacher, sequences_path, out_dir, device)
    timings.update(reduce=t1 - t0, topk=t2 - t1, codebook=time.perf_counter() - t2)
    return {
        "items": n_items,
        "excluded_items": int(teacher.excluded.sum()),
        "missing_items": n_missing,
        "missing_policy": meta.get("missing_policy"),
        "source_model": meta.get("model"),
        "teacher_dim": teacher_dim,
        "dim": params.dim,
        "reduction": teacher.stats,
        "score": params.score,
        "topk": topk_stats,
        "codebook": codebook_stats,
    }


def run_correlate(
    correlate_params: CorrelateParams,
    modalities: list[str],
    mlflow_params: MLflowParams | ParamsView,
    embeddings_dir: Path,
    sequences_path: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Build the correlation supervision of every modality in ``modalities`` into ``out_dir``.

    Args:
        correlate_params: the ``correlate`` params section.
        modalities: ``train.modalities``; empty -> an empty supervision folder with only stats.json.
        mlflow_params: the ``mlflow`` params section.
        embeddings_dir: folder with ``<modality>.parquet`` teacher embeddings.
        sequences_path: sequences.parquet (only the training prefixes are read).
        out_dir: the supervision folder, replaced whole on success.

    Returns:
        The statistics written to ``stats.json``.
    """
    modalities = list(modalities)
    params = correlate_params
    device = resolve_device(params.device, "correlate.device")
    stats: dict[str, Any] = {"modalities": modalities}
    timings: dict[str, dict[str, float]] = {}
    with start_run("correlate", mlflow_params) as tracker:
        tracker.log_params({"correlate": params.model_dump(), "train": {"modalities": modalities}})
        with staged_dir(Path(out_dir)) as tmp:
            if not modalities:
                stats["note"] = "train.modalities is empty: no correlation supervision was built"
                log.info("train.modalities is empty: writing an empty %s", out_dir)
            embeddings = {m: embedding_file(embeddings_dir, m) for m in modalities}
            for path in embeddings.values():
                if path.exists():  # a missing file is reported by build_modality
                    check_embeddings_match_sequences(path, sequences_path)
            for modality in modalities:
                log.info("correlate %s on %s", modality, device)
                timings[modality] = {}
                stats[modality] = build_modality(
                    modality,
                    params,
                    embedding_file(embeddings_dir, modality),
                    Path(sequences_path),
                    tmp,
                    device,
                    timings[modality],
                )
                log.info(
                    "%s timings: %s",
                    modality,
                    ", ".join(f"{k} {v:.2f}s" for k, v in timings[modality].items()),
                )
            stats[INPUTS_KEY] = supervision_inputs(sequences_path, embeddings)  # lineage, checked by train
            stats[FILES_KEY] = supervision_files(tmp)  # each file's digest, checked by train
            write_json(tmp / SUPERVISION_STATS, stats)
        tracker.set_tags({"device": str(device)})
        tracker.log_metrics({m: s for m, s in stats.items() if isinstance(s, dict)})
        tracker.log_metrics({f"{m}.seconds": t for m, t in timings.items()})
        tracker.log_dict(stats, "supervision_stats.json")
    return stats
