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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvalParams, MLflowParams, ParamsView, TrainParams, section_dict
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.evaluation.metrics import evaluate_scorer
from pipeline.layout import MODEL_CONFIG
from pipeline.lineage import model_inputs
from pipeline.models import save_student
from pipeline.models.persist import save_selected
from pipeline.progress import progress_bar
from pipeline.tracking import Tracker, file_digest, start_run
from pipeline.training.batches import bucketed_batches
from pipeline.training.checkpoint import (
    TrainState,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    write_curve,
)
from pipeline.training.diagnostics import teacher_agreement_on_pairs
from pipeline.training.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_module_,
    cleanup,
    from_main,
    init_from_env,
)
from pipeline.training.prior import make_posthoc_choices
from pipeline.training.refresh import refresh
from pipeline.training.setup import Training, build_training
from pipeline.training.step import train_step
from pipeline.training.validation import SELECT_METRIC, evaluate_sharded, nan_guard

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003  # rank r > 0 draws its dropout from seed + r * stride (rank 0 as one process)


@dataclass(frozen=True)
class TrainJob:
    """The arguments of :func:`run_train`: what to train, on what, and where its outputs go."""

    train: TrainParams | ParamsView
    score: str
    eval_params: EvalParams | ParamsView
    mlflow_params: MLflowParams | ParamsView
    sequences_path: Path
    supervision_dir: Path
    model_dir: Path
    curve_path: Path
    checkpoint_root: Path
    max_epochs_this_call: int | None = None
    progress: bool = True


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
    job = TrainJob(
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
    )
    summary = TrainRecipe(job, device, dist_info).run()
    cleanup(dist_info)  # not on error: a failing rank exits and torchrun stops the others
    return summary


class TrainRecipe:
    """The loop as a recipe: :meth:`setup`, then per epoch :meth:`train_epoch`, :meth:`diagnose`,
    :meth:`validate` and :meth:`end_epoch`, then :meth:`finish`. :meth:`run` strings them together."""

    def __init__(self, job: TrainJob, device: torch.device, dist_info: DistInfo) -> None:
        self.job, self.train, self.device, self.dist = job, job.train, device, dist_info
        self.info = log.info if dist_info.is_main else log.debug  # one copy of the progress log, from rank 0
        self.t_start = time.perf_counter()
        self.state = TrainState()
        self.tracker = Tracker(None, None)
        self.selected: dict[str, Any] | None = None  # train.refresh: the record of the chosen network

    def run(self) -> dict[str, Any]:
        self.setup()
        with self._start_run() as self.tracker:
            self.tracker.log_params(self._params_logged())
            for row in self.state.curve:  # a resumed run re-logs the epochs it already had
                self.tracker.log_metrics(
                    {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
                )
            stopped_early = False
            for epoch in self._epochs():
                t0 = time.perf_counter()
                row, lrs = self.train_epoch(epoch)
                seq_per_s = len(self.t.windows) / (time.perf_counter() - t0)
                if self.t.modalities:
                    row.update(self.diagnose())
                row.update(lrs)
                row["seq_per_s"] = seq_per_s
                if (epoch + 1) % self.train.eval_every == 0 or epoch + 1 == self.train.epochs:
                    row.update(self.validate(epoch))
                row["seconds"] = time.perf_counter() - t0
                stopped_early = self.end_epoch(row)
                if stopped_early:
                    break
            summary = self.finish(stopped_early)
        if summary["finished"]:
            if self.dist.is_main:
                remove_checkpoint(self.t.ckpt_path)
            self.info(
                "best epoch %d (valid ndcg@10 %.4f); %.1fs to best, %.1fs total",
                self.state.best_epoch,
                self.state.best_metric,
                summary["seconds_to_best"],
                summary["seconds_total"],
            )
        return summary

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Seed, build the model, data and optimiser, and resume from the run's checkpoint if there is one."""
        train, job = self.train, self.job
        torch.manual_seed(train.seed)
        np.random.seed(train.seed)
        self.t: Training = build_training(
            train,
            job.score,
            job.eval_params,
            job.sequences_path,
            job.supervision_dir,
            job.checkpoint_root,
            self.device,
        )
        model = self.t.model
        self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        resumed = load_checkpoint(self.t.ckpt_path, model, self.t.optimizer, lambda d: TrainState(**d))
        if resumed is not None:
            self.best_state, self.state = resumed
            self.info("resumed from %s after epoch %d", self.t.ckpt_path, self.state.epoch)
        if self.dist.distributed:
            broadcast_module_(model)  # identical already (same seed, same checkpoint); make sure of it
            if not self.dist.is_main:
                self.best_state = {}  # only rank 0 writes the model
        self.info(
            "training %s on %s: %d users, %d items, modalities %s, %d steps/epoch",
            train.backbone,
            self.device,
            len(self.t.windows),
            self.t.num_items,
            self.t.modalities or "none (ID only)",
            self.t.steps_per_epoch,
        )
        if self.dist.distributed:
            self.info(
                "data-parallel over %d ranks: %d sequences per rank per batch of %d",
                self.dist.world_size,
                math.ceil(train.batch_size / self.dist.world_size),
                train.batch_size,
            )

    def _params_logged(self) -> dict[str, Any]:
        return {
            "train": section_dict(self.train),
            "correlate": {"score": self.job.score},
            "eval": section_dict(self.job.eval_params),
        }

    def _start_run(self) -> contextlib.AbstractContextManager[Tracker]:
        if not self.dist.is_main:
            return contextlib.nullcontext(Tracker(None, None))
        tags = {"modalities": ",".join(self.t.modalities) or "none", "backbone": self.train.backbone}
        return start_run("train", self.job.mlflow_params, tags=tags)

    def _epochs(self) -> Iterator[int]:
        """The epochs to run: up to ``train.epochs``, at most ``max_epochs_this_call`` of them."""
        limit = self.job.max_epochs_this_call
        first = self.state.epoch
        while self.state.epoch < self.train.epochs and (limit is None or self.state.epoch - first < limit):
            yield self.state.epoch

    # ------------------------------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int, desc: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """One pass over the batches: the curve row so far (loss means, ``grad_*`` columns) and the LRs."""
        train, t, dist = self.train, self.t, self.dist
        # every epoch's randomness derives from (seed, epoch): resuming at an epoch edge is exact
        # (ranks share ``gen``, so they cut the same batches and pairs; dropout differs per rank)
        torch.manual_seed(train.seed * 100_003 + epoch + RANK_SEED_STRIDE * dist.rank)
        gen = torch.Generator().manual_seed(train.seed * 100_003 + epoch)
        t.model.train()
        sums: dict[str, float] = {}
        grad_norms: dict[str, float] = {}
        lrs: dict[str, float] = {}
        bar = progress_bar(
            bucketed_batches(t.lengths, train.batch_size, gen),
            desc=desc or f"epoch {epoch + 1}/{train.epochs}",
            unit="batch",
            disable=not self.job.progress or not dist.is_main,
            leave=False,
        )
        n_batches = 0
        for n_batches, idx in enumerate(bar, start=1):
            lrs = t.scheduler.set_step(self.state.step)
            # once per epoch: each term's gradient on the tables
            step = train_step(t, train, idx, gen, dist, grad_norms=n_batches == 1 and bool(t.modalities))
            grad_norms = step.grad_norms or grad_norms
            self.state.step += 1
            for k, v in step.terms.columns(train.kd).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(step.loss.detach())
            if self.job.progress and n_batches % 10 == 0:
                self._show_loss(bar, sums["loss"], n_batches)
        bar.close()
        if dist.distributed:
            sums = all_reduce_sum(sums, self.device)  # per-rank shares -> the whole epoch's sums
        if not math.isfinite(sums.get("loss", 0.0)):
            raise PipelineError(
                f"training diverged at epoch {epoch + 1} (loss is not finite); lower train.lr (now {train.lr})"
            )
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({k: v / max(1, n_batches) for k, v in sums.items()})
        row.update(grad_norms if t.modalities else {})
        return row, {f"lr_{g}": v for g, v in lrs.items()}

    def _show_loss(self, bar: Any, loss_sum: float, n_batches: int) -> None:
        if self.dist.distributed:  # every rank joins (same ``progress``, same batch count)
            loss_sum = all_reduce_sum({"loss": loss_sum}, self.device)["loss"]
        bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}")

    def diagnose(self) -> dict[str, float]:
        """How much of each teacher's geometry the model keeps, on the fixed diagnostic pairs."""
        t = self.t
        t.model.eval()
        with torch.inference_mode():
            items = t.model.item_representations()  # once for every modality's pairs
        out: dict[str, float] = {}
        for m, (di, dj) in t.diag_pairs.items():
            agreement = teacher_agreement_on_pairs(t.model, m, t.teachers[m], di, dj, t.score_fn, items)
            out.update({f"{k}_{m}": v for k, v in agreement.items()})
        return out

    def validate(self, epoch: int) -> dict[str, float]:
        """Validation metrics (``valid_*`` columns); keeps the best model by ``SELECT_METRIC``."""
        model, ev = self.t.model, self.job.eval_params
        model.eval()
        with torch.inference_mode():  # the catalogue side once per validation, not per batch
            scorer = nan_guard(model.scorer(), epoch + 1, self.train.lr)
        if self.dist.distributed:
            metrics = evaluate_sharded(scorer, self.t.valid_cases, ev, self.device, self.dist)
        else:
            metrics, _ = evaluate_scorer(
                scorer, self.t.valid_cases, ev.ks, ev.mask_history, ev.batch_size, self.device
            )
        state = self.state
        if metrics[SELECT_METRIC] > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = metrics[SELECT_METRIC], epoch + 1, 0
            if self.dist.is_main:
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += self.train.eval_every
        return {f"valid_{k}": v for k, v in metrics.items()}

    def end_epoch(self, row: dict[str, float]) -> bool:
        """Record the epoch (curve, MLflow, log, checkpoint); True to stop early."""
        state = self.state
        state.curve.append(row)
        state.epoch += 1
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=state.epoch)
        self.info(
            "epoch %d: loss %.4f, valid ndcg@10 %.4f (best %.4f @ %d), %.1fs, %.0f seq/s",
            state.epoch,
            row["loss"],
            row.get(f"valid_{SELECT_METRIC}", float("nan")),
            state.best_metric,
            state.best_epoch,
            row["seconds"],
            row["seq_per_s"],
        )
        if self.dist.is_main:
            save_checkpoint(self.t.ckpt_path, self.t.model, self.best_state, self.t.optimizer, state.__dict__)
        if state.bad_epochs >= self.train.patience:
            self.info("early stop: no validation gain for %d epochs", state.bad_epochs)
            return True
        return False

    # ------------------------------------------------------------------------------------------ the end
    def finish(self, stopped_early: bool) -> dict[str, Any]:
        """The summary; when training is over, the best model, the curve and the run's final metrics."""
        state = self.state
        best = state.curve[state.best_epoch - 1] if state.best_epoch > 0 else {}
        summary: dict[str, Any] = {
            "best_epoch": state.best_epoch,
            "best_valid": {k[len("valid_") :]: v for k, v in best.items() if k.startswith("valid_")},
            "epochs_run": state.epoch,
            "finished": state.epoch >= self.train.epochs or stopped_early,
        }
        if not summary["finished"]:
            return summary  # interrupted on purpose: keep the checkpoint, write no model
        best_valid = self._choose(summary["best_valid"]) if self.dist.is_main else summary["best_valid"]
        if self.train.refresh.enabled:
            refresh(self)  # every rank
        if self.dist.is_main:
            self._save_model(best_valid)
        summary["best_valid"] = from_main(best_valid, self.dist, self.device)  # rank 0's, of the saved model
        summary["seconds_total"] = time.perf_counter() - self.t_start
        summary["seconds_to_best"] = sum(r["seconds"] for r in state.curve[: state.best_epoch])
        times = {k: summary[k] for k in ("seconds_to_best", "seconds_total")}
        valid = {f"best_valid_{k}": v for k, v in summary["best_valid"].items()}
        self.tracker.log_metrics({"best_epoch": state.best_epoch, **times, **valid})
        self.tracker.log_artifact(self.job.model_dir / MODEL_CONFIG)
        self.tracker.log_artifact(self.job.curve_path)
        return summary

    def _choose(self, best_valid: dict[str, float]) -> dict[str, float]:
        """The best epoch's weights with the post-hoc choices made on validation (saved now as the chosen
        network with ``train.refresh``: ``selected.safetensors``); their validation metrics."""
        job, model, t = self.job, self.t.model, self.t
        model.load_state_dict(self.best_state)
        args = (job.eval_params, self.device, job.sequences_path, self.tracker)
        chosen = make_posthoc_choices(model, t.valid_cases, self.train, *args)
        self.selected = save_selected(model, job.model_dir) if self.train.refresh.enabled else None
        return chosen or best_valid

    def _save_model(self, best_valid: dict[str, float]) -> None:
        """Save the model (with the post-hoc choices made on validation, refreshed with ``train.refresh``)."""
        job, state, model = self.job, self.state, self.t.model
        weights = save_student(
            model,
            job.model_dir,
            extra={
                "train": section_dict(self.train),
                "correlate": {"score": job.score},
                "best_epoch": state.best_epoch,
                "best_valid": best_valid,
                "epochs_run": state.epoch,
                # lineage: the digests evaluate checks against the sequences it is given
                "inputs": model_inputs(job.sequences_path, job.supervision_dir, self.t.modalities),
            },
            selected=self.selected,
        )
        write_curve(job.curve_path, state.curve)
        self.tracker.set_tags({"model.sha256": file_digest(weights), "best_epoch": state.best_epoch})
