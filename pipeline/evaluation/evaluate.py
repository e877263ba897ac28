"""The evaluate stage: trained student + sequences -> reports/metrics.json and reports/per_user.parquet.

Full ranking over the whole catalogue for the validation and the test part (docs/DESIGN.md: Evaluation), with
the popularity baseline computed alongside as the floor a model must beat. With ``eval.max_users`` only a fixed,
seeded sample of users is ranked (:func:`sample_users`), still against the whole catalogue. Metrics are mirrored to
the MLflow run of the training that produced the model (found by the ``model.sha256`` tag), or to a new run when
there is none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from pipeline.arrays import sorted_unique
from pipeline.artifacts import Sequences, read_sequences
from pipeline.config import EvalParams, MLflowParams, ParamsView
from pipeline.devices import resolve_device
from pipeline.errors import DataError, PipelineError
from pipeline.evaluation.cases import EvalCases, cases_from_sequences
from pipeline.evaluation.metrics import evaluate_scorer, popularity_scores
from pipeline.io import atomic_path, write_json, write_parquet
from pipeline.layout import MODEL_CONFIG, MODEL_WEIGHTS
from pipeline.lineage import check_model

log = logging.getLogger(__name__)

PARTS = ("valid", "test")


class Scorer(Protocol):
    """What the evaluator needs from a model (``pipeline.models.Student`` satisfies it)."""

    num_items: int
    max_len: int

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded int64 inputs -> (B, N+1) next-item scores."""
        ...


def _load_model(model_dir: Path, device: torch.device, selected: bool = False) -> Scorer:
    from pipeline.models import load_student  # the models package is optional for tests

    try:
        return load_student(model_dir, device, selected=selected)
    except FileNotFoundError as err:
        raise PipelineError(
            f"{model_dir}: cannot load the model ({err}); run the train stage first"
        ) from None


def _scorer(model: Scorer) -> Callable[[torch.Tensor], torch.Tensor]:
    return model.scorer() if hasattr(model, "scorer") else model.user_scores


def is_refreshed(model_dir: Path) -> bool:
    from pipeline.models.persist import is_refreshed as refreshed  # the models package is optional for tests

    return refreshed(model_dir)


def sample_users(users: np.ndarray, max_users: int | None, seed: int) -> np.ndarray | None:
    """The sorted ids of a fixed sample of ``max_users`` of ``users``, or None when every user is to be ranked
    (``max_users`` None or not below the number of users).

    Drawn with ``numpy.random.default_rng(seed)`` without replacement from the sorted distinct ids: it depends
    on the set of user ids, ``max_users`` and ``seed`` only (not on the row order nor on the part), so the
    validation and the test part rank the same users, in every run.
    """
    ids = sorted_unique(np.asarray(users, dtype=np.int64))
    if max_users is None or int(max_users) >= len(ids):
        return None
    pick = np.random.default_rng(seed).choice(len(ids), size=int(max_users), replace=False)
    return ids[np.sort(pick)]


def _users_with_targets(seqs: Sequences, part: str, rows: np.ndarray | None) -> int:
    """How many users (of ``rows``, default all) have at least one ``part`` target."""
    start, stop = (seqs.train_end, seqs.valid_end) if part == "valid" else (seqs.valid_end, seqs.lengths)
    has = stop > start
    return int(has.sum() if rows is None else has[rows].sum())


def _per_user_table(cases: dict[str, EvalCases], ranks: dict[str, np.ndarray]) -> pa.Table:
    """One row per evaluation case: user, part, target, rank (valid rows first, then test)."""
    return pa.table(
        {
            "user": pa.array(np.concatenate([cases[p].users for p in PARTS]).astype(np.int32), pa.int32()),
            "part": pa.array([p for p in PARTS for _ in range(len(cases[p]))], pa.string()),
            "target": pa.array(
                np.concatenate([cases[p].targets.numpy() for p in PARTS]).astype(np.int32), pa.int32()
            ),
            "rank": pa.array(np.concatenate([ranks[p] for p in PARTS]).astype(np.int32), pa.int32()),
        }
    )


def _mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``{"test": {"ndcg_at_20": x}, "popularity": {"test": {...}}}`` -> ``{"test_ndcg_at_20": x, ...}``."""
    out: dict[str, float] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            name = f"{prefix}_{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, name)
            else:
                out[name] = float(v)

    walk(report, "")
    return out


def _log_to_mlflow(
    report: dict[str, Any], eval_params: Any, mlflow_params: Any, model_dir: Path, metrics_path: Path
) -> None:
    """Mirror the metrics to the training run that made the model (a new run when it cannot be found)."""
    from pipeline.tracking import file_digest, find_run_by_tag, start_run, tracking_enabled

    if not tracking_enabled(mlflow_params):
        return
    weights = model_dir / MODEL_WEIGHTS
    digest = file_digest(weights) if weights.exists() else None
    run_id = find_run_by_tag(mlflow_params, "model.sha256", digest) if digest else None
    if digest and run_id is None:
        log.info("no MLflow run is tagged with this model's sha256: logging to a new run")
    with start_run("evaluate", mlflow_params, run_id=run_id) as tracker:
        if not tracker.active:
            return
        try:
            if run_id is None:  # a resumed training run already holds the params
                tracker.set_tags({"model.sha256": digest} if digest else {})
                dump = getattr(eval_params, "model_dump", None)
                tracker.log_params({"eval": dump() if dump else dict(eval_params)})
            tracker.log_metrics(_mlflow_metrics(report))
            tracker.log_artifact(metrics_path, artifact_path="evaluate")
            if run_id is not None:
                _tag_registered_versions(run_id, report["test"])
        except Exception as err:  # tracking must never fail the stage
            log.warning("MLflow logging failed (%s): outputs are written, tracking skipped", err)


def _tag_registered_versions(run_id: str, test: dict[str, float]) -> None:
    """Tag every registered model version of training run ``run_id`` with the test metrics (``test.<name>``):
    the train stage registers the model before it is evaluated, so its card gets them here."""
    import mlflow  # the caller's tracking URI is set

    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        for name, value in test.items():
            client.set_model_version_tag(version.name, version.version, f"test.{name}", f"{value:.6f}")


def run_evaluate(
    eval_params: EvalParams | ParamsView,
    mlflow_params: MLflowParams | ParamsView,
    sequences_path: Path,
    model_dir: Path,
    metrics_path: Path,
    per_user_path: Path,
    student: Scorer | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    valid_student: Scorer | None = None,
) -> dict[str, Any]:
    """Evaluate the trained student on the validation and test parts with full ranking.

    Args:
        eval_params: the ``eval`` params section (ks, mask_history, batch_size, max_users, sample_seed).
        mlflow_params: the ``mlflow`` params section.
        sequences_path: ``data/processed/sequences.parquet``.
        model_dir: folder with ``model.safetensors`` and ``config.json`` (read by ``load_student``).
        metrics_path: where the metrics JSON is written.
        per_user_path: where the per-case ranks are written.
        student: an already-built model to evaluate instead of loading ``model_dir`` (tests).
        device: where scores are computed (default: cuda when available, else cpu).
        progress: show progress bars.
        valid_student: with ``student``, the model that ranks validation (default: ``student``): for a model
            refreshed with the validation targets (``train.refresh``), the network validation chose. Without
            ``student``, a refreshed ``model_dir``'s chosen network (``selected.safetensors``) ranks validation.

    Scores are computed ``eval.batch_size`` cases at a time, so peak memory is a few (batch_size, N+1) float
    blocks however many users are ranked (nothing of shape (users, N) is built); with ``eval.max_users`` below
    the number of users only the cases of :func:`sample_users`' sample are built and ranked, by the model and
    the popularity baseline alike, and ``per_user_path`` holds only their rows.

    Returns:
        The report written to ``metrics_path``: ``{"valid": {...}, "test": {...}, "popularity": {"valid":
        {...}, "test": {...}}, "cases": {"valid": C_v, "test": C_t}}``; with a sample also
        ``"users_ranked"`` and ``"users_total"`` (``{"test": n, "valid": n}``: the users with targets in that
        part, sampled and in all), the metrics then being estimates on the sample.

    Raises:
        PipelineError: the model cannot be loaded, or the sequences do not fit it.
        LineageError: the model was trained on other sequences than ``sequences_path`` (by the digest
            recorded in its config.json), even of the same size.
    """
    model_dir, sequences_path = Path(model_dir), Path(sequences_path)
    if student is None and sequences_path.exists() and (model_dir / MODEL_CONFIG).exists():
        check_model(model_dir, sequences_path)  # before any work: a stale model must not be evaluated
    dev = resolve_device(device)
    model = student if student is not None else _load_model(model_dir, dev)
    # a refreshed model (train.refresh) learned the validation targets: validation is ranked by the network
    # validation chose, kept beside it, and test by the refreshed one
    valid_model = valid_student if valid_student is not None else model
    if student is None and is_refreshed(model_dir):
        valid_model = _load_model(model_dir, dev, selected=True)
        log.info("%s: a refreshed model; validation is ranked by the network validation chose", model_dir)
    if isinstance(model, torch.nn.Module):
        model = model.to(dev).eval()
    if isinstance(valid_model, torch.nn.Module):
        valid_model = valid_model.to(dev).eval()
    num_items, max_len = int(model.num_items), int(model.max_len)

    seqs = read_sequences(sequences_path)
    if not seqs.num_users:
        raise DataError(f"{sequences_path}: no users")
    top = seqs.num_items
    if top > num_items:
        raise DataError(
            f"{sequences_path}: item id {top} is outside the model's catalogue 1..{num_items} "
            f"({model_dir}): the model was trained on other data; rerun the train stage"
        )
    sample = sample_users(seqs.users, eval_params.max_users, int(eval_params.sample_seed))
    rows = None if sample is None else np.flatnonzero(np.isin(seqs.users, sample))
    if sample is not None:
        log.info(
            "eval.max_users: ranking a fixed sample of %d of %d users (eval.sample_seed %d): the metrics are "
            "estimates on the sample",
            len(sample),
            len(sorted_unique(seqs.users)),
            int(eval_params.sample_seed),
        )
    cases: dict[str, EvalCases] = {}
    for part in PARTS:
        try:
            cases[part] = cases_from_sequences(seqs, part, max_len, rows=rows)
        except ValueError as err:
            raise DataError(f"{sequences_path}: {err}") from None
        if len(cases[part]) == 0:
            among = f" among the eval.max_users sample of {len(sample)} users" if sample is not None else ""
            raise DataError(f"{sequences_path}: no {part} targets to evaluate{among}")

    pop = popularity_scores(seqs, num_items).to(dev)  # (N+1,)

    def popularity_fn(inputs: torch.Tensor) -> torch.Tensor:
        return pop.expand(inputs.shape[0], -1)

    ks, mask, bs = list(eval_params.ks), bool(eval_params.mask_history), int(eval_params.batch_size)
    report: dict[str, Any] = {"popularity": {}, "cases": {}}
    ranks: dict[str, np.ndarray] = {}
    with torch.inference_mode():  # a student's catalogue side once, not per batch
        model_fn = {p: _scorer(valid_model if p == "valid" else model) for p in PARTS}
    for part in PARTS:
        log.info("evaluating %d %s cases over %d items on %s", len(cases[part]), part, num_items, dev)
        report[part], ranks[part] = evaluate_scorer(
            model_fn[part], cases[part], ks, mask, bs, device=dev, progress=progress
        )
        report["popularity"][part], _ = evaluate_scorer(popularity_fn, cases[part], ks, mask, bs, device=dev)
        report["cases"][part] = len(cases[part])
        top_k = 20 if 20 in ks else max(ks)  # the headline cut-off of the log line
        log.info(
            "%s: hr@%d=%.4f ndcg@%d=%.4f (popularity hr@%d=%.4f)",
            part,
            top_k,
            report[part][f"hr_at_{top_k}"],
            top_k,
            report[part][f"ndcg_at_{top_k}"],
            top_k,
            report["popularity"][part][f"hr_at_{top_k}"],
        )

    # the file's key order is the column order of `dvc exp show`: the model's test and validation metrics
    # first (HR, NDCG, MRR at each k), then the popularity floor, then the case counts
    report = {
        **{p: report[p] for p in ("test", "valid")},
        "popularity": report["popularity"],
        "cases": report["cases"],
    }
    report["popularity"] = {p: report["popularity"][p] for p in ("test", "valid")}
    report["cases"] = {p: report["cases"][p] for p in ("test", "valid")}
    if rows is not None:  # a sample: say how many users the estimates rest on (absent: every user ranked)
        report["users_ranked"] = {p: _users_with_targets(seqs, p, rows) for p in ("test", "valid")}
        report["users_total"] = {p: _users_with_targets(seqs, p, None) for p in ("test", "valid")}
    # both files to temporaries first, then both renamed: a failed write (a full disk) leaves the old pair
    with atomic_path(per_user_path) as per_user_tmp, atomic_path(metrics_path) as metrics_tmp:
        write_parquet(per_user_tmp, _per_user_table(cases, ranks))
        write_json(metrics_tmp, report, sort_keys=False)
    _log_to_mlflow(report, eval_params, mlflow_params, model_dir, Path(metrics_path))
    return report


UNMASKED_DIR = "unmasked"  # beside a run's metrics.json: the evaluation without history masking


def run_evaluate_unmasked(
    eval_params: EvalParams | ParamsView,
    sequences_path: Path,
    model_dir: Path,
    out_dir: Path,
    student: Scorer | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    valid_student: Scorer | None = None,
) -> dict[str, Any]:
    """Evaluate the model once more WITHOUT history masking (RecBole's protocol: the user's own past items stay
    in the ranking), into ``out_dir/metrics.json`` and ``out_dir/per_user.parquet``.

    The same cases, cut-offs and ranking as :func:`run_evaluate` with ``eval.mask_history: false``; the masked
    report is neither read nor overwritten, and nothing is logged to MLflow (mirroring these metrics into the
    training run would replace its masked ``test_*`` metrics).

    Returns:
        The report written to ``out_dir/metrics.json`` (the layout of :func:`run_evaluate`'s).
    """
    unmasked = EvalParams(
        ks=list(eval_params.ks),
        mask_history=False,
        batch_size=int(eval_params.batch_size),
        max_users=eval_params.max_users,
        sample_seed=int(eval_params.sample_seed),
    )
    out_dir = Path(out_dir)
    return run_evaluate(
        unmasked,
        MLflowParams(enabled=False),
        sequences_path,
        model_dir,
        out_dir / "metrics.json",
        out_dir / "per_user.parquet",
        student=student,
        device=device,
        progress=progress,
        valid_student=valid_student,
    )
