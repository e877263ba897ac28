"""The training loop: next-item CE + per-modality correlation distillation, asynchronous LR, early stopping.

``run_train`` is what the ``train`` stage calls. It never imports polars or dvc, and mlflow only through
:mod:`pipeline.tracking` (optional), so the same code runs on a bare GPU machine. Under ``torchrun`` it trains
data-parallel over the ranks (see :mod:`pipeline.training.distributed`); alone it is a single process.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvalParams, MLflowParams, ParamsView, TrainParams, section_dict
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.evaluation.metrics import (
    evaluate_scorer,
)
from pipeline.layout import MODEL_CONFIG
from pipeline.lineage import model_inputs
from pipeline.models import save_student
from pipeline.progress import progress_bar
from pipeline.tracking import Tracker, file_digest, start_run
from pipeline.training.batches import (
    bucketed_batches,
    trim_left_padding,
)
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint, write_curve
from pipeline.training.diagnostics import table_gradient_norms, teacher_agreement_on_pairs
from pipeline.training.distributed import (
    DistInfo,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_module_,
    cleanup,
    init_from_env,
)
from pipeline.training.objective import batch_loss, kd_weight
from pipeline.training.setup import build_training
from pipeline.training.validation import evaluate_sharded, nan_guard

log = logging.getLogger(__name__)

SELECT_METRIC = "ndcg_at_10"
RANK_SEED_STRIDE = 1_000_003  # rank r > 0 draws its dropout from seed + r * stride (rank 0 as one process)


@dataclass
class TrainState:
    """What a checkpoint holds besides model and optimiser: enough to resume bit-for-bit at an epoch edge."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)


def run_train(
    train: TrainParams | ParamsView,
    score: str,
    eval_params: EvalParams | ParamsView,
    mlflow_params: MLflowParams | ParamsView,
    sequences_path: Path,
    supervision_dir: Path,
    model_dir: Path,
    curve_path: Path,
    checkpoint_root: Path,
    max_epochs_this_call: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a student and write ``model_dir`` and ``curve_path``; returns a summary.

    Args:
        train: the ``train`` params section.
        score: ``correlate.score``, the correlation function ξ shared with the teacher side.
        eval_params: the ``eval`` section (ks, mask_history, batch_size) for validation.
        mlflow_params: the ``mlflow`` section.
        max_epochs_this_call: stop after this many epochs and keep the checkpoint (tests of resuming).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this with the same arguments and the ranks train
    one model data-parallel: ``train.batch_size`` stays the global batch, each rank computes the loss of its
    rows (``rank::world_size``) of every batch and of its share of the batch's distillation pairs, and the
    gradients are summed so each step equals the single-process step up to summation order (with dropout
    0 and the full softmax; dropout masks and sampled negatives are drawn per rank). Rank 0 alone writes the
    checkpoint, the model, the curve and the MLflow run; other ranks return the same summary.
    """
    device = resolve_device(train.device, "train.device")
    dist_info = init_from_env(device)
    if dist_info.distributed and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    summary = _run_train(
        train,
        score,
        eval_params,
        mlflow_params,
        sequences_path,
        supervision_dir,
        model_dir,
        curve_path,
        checkpoint_root,
        max_epochs_this_call,
        progress,
        device,
        dist_info,
    )
    cleanup(dist_info)  # not on error: a failing rank exits and torchrun stops the others
    return summary


def _run_train(
    train: TrainParams | ParamsView,
    score: str,
    eval_params: EvalParams | ParamsView,
    mlflow_params: MLflowParams | ParamsView,
    sequences_path: Path,
    supervision_dir: Path,
    model_dir: Path,
    curve_path: Path,
    checkpoint_root: Path,
    max_epochs_this_call: int | None,
    progress: bool,
    device: torch.device,
    dist_info: DistInfo,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    is_main = dist_info.is_main
    info = log.info if is_main else log.debug  # one copy of the progress log, from rank 0
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)

    setup = build_training(
        train, score, eval_params, sequences_path, supervision_dir, checkpoint_root, device
    )
    modalities, num_items, teachers, model = setup.modalities, setup.num_items, setup.teachers, setup.model
    windows, lengths = setup.windows, setup.lengths
    valid_cases, steps_per_epoch = setup.valid_cases, setup.steps_per_epoch
    optimizer, scheduler, score_fn = setup.optimizer, setup.scheduler, setup.score_fn
    diag_pairs, autocast, ckpt_path = setup.diag_pairs, setup.autocast, setup.ckpt_path
    grad_norms: dict[str, float] = {}
    state = TrainState()
    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    resumed = load_checkpoint(ckpt_path, model, optimizer, lambda d: TrainState(**d))
    if resumed is not None:
        best_state, state = resumed
        info("resumed from %s after epoch %d", ckpt_path, state.epoch)
    if dist_info.distributed:
        broadcast_module_(model)  # identical already (same seed, same checkpoint); make sure of it
        if not is_main:
            best_state = {}  # only rank 0 writes the model

    info(
        "training %s on %s: %d users, %d items, modalities %s, %d steps/epoch",
        train.backbone,
        device,
        len(windows),
        num_items,
        modalities or "none (ID only)",
        steps_per_epoch,
    )
    if dist_info.distributed:
        info(
            "data-parallel over %d ranks: %d sequences per rank per batch of %d",
            dist_info.world_size,
            math.ceil(train.batch_size / dist_info.world_size),
            train.batch_size,
        )
    params_logged = {
        "train": section_dict(train),
        "correlate": {"score": score},
        "eval": section_dict(eval_params),
    }
    stopped_early = False
    run_ctx = (
        start_run(
            "train",
            mlflow_params,
            tags={"modalities": ",".join(modalities) or "none", "backbone": train.backbone},
        )
        if is_main
        else contextlib.nullcontext(Tracker(None, None))
    )
    with run_ctx as tracker:
        tracker.log_params(params_logged)
        for row in state.curve:  # a resumed run re-logs the epochs it already had
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        epochs_run = 0
        while state.epoch < train.epochs:
            if max_epochs_this_call is not None and epochs_run >= max_epochs_this_call:
                break
            epoch = state.epoch
            t0 = time.perf_counter()
            # every epoch's randomness derives from (seed, epoch): resuming at an epoch edge is exact
            # (ranks share ``gen``, so they cut the same batches and pairs; dropout differs per rank)
            torch.manual_seed(train.seed * 100_003 + epoch + RANK_SEED_STRIDE * dist_info.rank)
            gen = torch.Generator().manual_seed(train.seed * 100_003 + epoch)
            model.train()
            sums: dict[str, float] = {}
            n_batches = 0
            lrs: dict[str, float] = {}
            batches = bucketed_batches(lengths, train.batch_size, gen)
            bar = progress_bar(
                batches,
                desc=f"epoch {epoch + 1}/{train.epochs}",
                unit="batch",
                disable=not progress or not is_main,
                leave=False,
            )
            for idx in bar:
                lrs = scheduler.set_step(state.step)
                seq = trim_left_padding(windows[idx.to(device)])  # (B, T+1), the whole batch
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, terms = batch_loss(setup, train, seq, gen, dist_info)
                if n_batches == 0 and modalities:  # once per epoch: each term's gradient on the tables
                    weights = {name: kd_weight(name, train.kd) for name in terms if name != "ce"}
                    grad_norms = table_gradient_norms(model, terms, weights)
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:  # always in one process; a rank with an empty share has no graph
                    loss.backward()
                if dist_info.distributed:
                    all_reduce_gradients(model.parameters())  # the shares sum to the whole batch's gradient
                optimizer.step()
                state.step += 1
                n_batches += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                if progress and n_batches % 10 == 0:
                    shown = sums["loss"]
                    if dist_info.distributed:  # every rank joins (same ``progress``, same batch count)
                        shown = all_reduce_sum({"loss": shown}, device)["loss"]
                    bar.set_postfix(loss=f"{shown / n_batches:.3f}")
            bar.close()
            if dist_info.distributed:
                sums = all_reduce_sum(sums, device)  # per-rank shares -> the whole epoch's sums
            if not math.isfinite(sums.get("loss", 0.0)):
                raise PipelineError(
                    f"training diverged at epoch {epoch + 1} (loss is not finite); "
                    f"lower train.lr (now {train.lr})"
                )
            train_seconds = time.perf_counter() - t0
            row: dict[str, float] = {"epoch": epoch + 1}
            row.update({k: v / max(1, n_batches) for k, v in sums.items()})
            if modalities:
                row.update(grad_norms)
                model.eval()
                with torch.inference_mode():
                    items = model.item_representations()  # once for every modality's pairs
                for m, (di, dj) in diag_pairs.items():
                    agreement = teacher_agreement_on_pairs(model, m, teachers[m], di, dj, score_fn, items)
                    row.update({f"{k}_{m}": v for k, v in agreement.items()})
            row.update({f"lr_{g}": v for g, v in lrs.items()})
            row["seq_per_s"] = len(windows) / train_seconds
            if (epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs:
                model.eval()
                if dist_info.distributed:
                    metrics = evaluate_sharded(
                        nan_guard(model.user_scores, epoch + 1, train.lr),
                        valid_cases,
                        eval_params,
                        device,
                        dist_info,
                    )
                else:
                    metrics, _ = evaluate_scorer(
                        nan_guard(model.user_scores, epoch + 1, train.lr),
                        valid_cases,
                        eval_params.ks,
                        eval_params.mask_history,
                        eval_params.batch_size,
                        device,
                    )
                row.update({f"valid_{k}": v for k, v in metrics.items()})
                if metrics[SELECT_METRIC] > state.best_metric:
                    state.best_metric, state.best_epoch, state.bad_epochs = (
                        metrics[SELECT_METRIC],
                        epoch + 1,
                        0,
                    )
                    if is_main:
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    state.bad_epochs += train.eval_every
            row["seconds"] = time.perf_counter() - t0
            state.curve.append(row)
            state.epoch += 1
            epochs_run += 1
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            info(
                "epoch %d: loss %.4f, valid ndcg@10 %.4f (best %.4f @ %d), %.1fs, %.0f seq/s",
                epoch + 1,
                row["loss"],
                row.get(f"valid_{SELECT_METRIC}", float("nan")),
                state.best_metric,
                state.best_epoch,
                row["seconds"],
                row["seq_per_s"],
            )
            if is_main:
                save_checkpoint(ckpt_path, model, best_state, optimizer, state.__dict__)
            if state.bad_epochs >= train.patience:
                info("early stop: no validation gain for %d epochs", state.bad_epochs)
                stopped_early = True
                break

        finished = state.epoch >= train.epochs or stopped_early
        summary = {
            "best_epoch": state.best_epoch,
            "best_valid": {
                k[len("valid_") :]: v
                for k, v in state.curve[state.best_epoch - 1].items()
                if k.startswith("valid_")
            }
            if state.best_epoch > 0
            else {},
            "epochs_run": state.epoch,
            "finished": finished,
        }
        if not finished:
            return summary  # interrupted on purpose: keep the checkpoint, write no model
        if is_main:
            model.load_state_dict(best_state)
            weights = save_student(
                model,
                model_dir,
                extra={
                    "train": section_dict(train),
                    "correlate": {"score": score},
                    "best_epoch": state.best_epoch,
                    "best_valid": summary["best_valid"],
                    "epochs_run": state.epoch,
                    # lineage: the digests evaluate checks against the sequences it is given
                    "inputs": model_inputs(sequences_path, supervision_dir, modalities),
                },
            )
            write_curve(curve_path, state.curve)
            tracker.set_tags({"model.sha256": file_digest(weights), "best_epoch": state.best_epoch})
        summary["seconds_total"] = time.perf_counter() - t_start
        summary["seconds_to_best"] = sum(r["seconds"] for r in state.curve[: state.best_epoch])
        tracker.log_metrics(
            {
                "best_epoch": state.best_epoch,
                "seconds_to_best": summary["seconds_to_best"],
                "seconds_total": summary["seconds_total"],
                **{f"best_valid_{k}": v for k, v in summary["best_valid"].items()},
            }
        )
        tracker.log_artifact(model_dir / MODEL_CONFIG)
        tracker.log_artifact(curve_path)
    if is_main and ckpt_path.exists():
        ckpt_path.unlink()
        ckpt_path.parent.rmdir()
    info(
        "best epoch %d (valid ndcg@10 %.4f); %.1fs to best, %.1fs total",
        state.best_epoch,
        state.best_metric,
        summary["seconds_to_best"],
        summary["seconds_total"],
    )
    return summary
