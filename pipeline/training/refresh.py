"""The refresh (``train.refresh``): after the epoch and the post-hoc priors are chosen on validation, the model
learns every user's validation step too.

Leave-one-out holds out each user's last interaction for test and the one before it for validation. Training
must not see the validation targets while validation chooses the epoch and the priors' weights, but once those
choices are made, the validation step is simply the newest interaction the system knows of, the one closest in
time to the test step (or, in production, to the next purchase). Refreshing the chosen model with it:

1. the transition prior's table is rebuilt over the training steps plus each user's validation step (the
   weight chosen on validation stays);
2. the network trains ``train.refresh.epochs`` more epochs over training windows that end at the validation
   target, at ``train.refresh.lr_scale`` x ``train.lr`` decayed to 0 by a cosine, with the training objective
   (distillation included) and the optimiser's moments carried on from the last training epoch; with
   ``train.refresh.update: items`` only the item side learns (the ID, modality and attribute tables and their
   projections) and the sequence encoder keeps the weights validation chose (:func:`freeze_encoder`). Each target
   weighs what it weighed in training (the loss keeps the training windows' targets per batch as its
   normaliser), so the logged loss reads higher than the training epochs': every window holds one target more.
   Every epoch's randomness derives from (seed, epoch) as in training, so a refresh is as reproducible as the
   epochs before it.

Test targets are never seen. The network as chosen (its weights and its training-only table) is kept beside the
refreshed one (:data:`SELECTED_WEIGHTS`, recorded in config.json with its digest) so that the validation
metrics of the evaluate stage always come from the model that validation chose, never from one that learned the
validation targets (``pipeline.models.persist.load_student(..., selected=True)``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from pipeline.artifacts.sequences import Sequences, read_sequences
from pipeline.models.student import Student
from pipeline.models.transitions import transition_table
from pipeline.training.batches import training_windows
from pipeline.training.distributed import broadcast_module_

#: the fields of a student's config that are chosen on validation after training (pipeline.training.prior)
POSTHOC_FIELDS = ("last_item_prior", "exclude_seen", "transition_prior")


def through_validation(seqs: Sequences) -> Sequences:
    """``seqs`` with each user's validation targets moved into the training part (test targets stay held out)."""
    return dataclasses.replace(seqs, train_end=seqs.valid_end.copy())


def rebuild_transitions(model: Student, seqs: Sequences, window: int, decay: float) -> None:
    """Give ``model`` the transition table over the training and validation steps of ``seqs`` when its chosen
    transition weight is not 0 (the weight stays); a model without the prior is left as it is."""
    if model.cfg.transition_prior > 0:
        model.attach_transitions(transition_table(through_validation(seqs), model.num_items, window, decay))


def carry_choices(chosen: Student, refreshed: Student, seqs: Sequences, window: int, decay: float) -> None:
    """Give ``refreshed`` the post-hoc choices made on validation with ``chosen``, the network validation
    chose before the refresh (:data:`POSTHOC_FIELDS`), and the transition table over the training and
    validation steps of ``seqs`` when the transition weight is not 0."""
    refreshed.detach_transitions()
    refreshed.cfg = dataclasses.replace(refreshed.cfg, **{k: getattr(chosen.cfg, k) for k in POSTHOC_FIELDS})
    rebuild_transitions(refreshed, seqs, window, decay)


def freeze_encoder(model: Student) -> list[torch.nn.Parameter]:
    """Stop the gradients of the sequence encoder's weights (``model.backbone``), so that the optimiser leaves
    them as they are (it skips a parameter without a gradient); the parameters it froze, to thaw afterwards."""
    frozen = [p for p in model.backbone.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def refresh(recipe: Any) -> None:
    """Refresh the model of ``recipe`` (a :class:`~pipeline.training.train.TrainRecipe`), which holds the
    chosen weights and post-hoc choices on rank 0 (every rank calls it; under ``torchrun`` rank 0's weights are
    broadcast first): ``train.refresh.epochs`` epochs over windows that end at each user's validation target,
    then the transition table over the new steps too."""
    t, train, model = recipe.t, recipe.train, recipe.t.model
    r = train.refresh
    if recipe.dist.distributed:
        broadcast_module_(model, buffers=False)  # rank 0 alone has attached the chosen table
    seqs = read_sequences(recipe.job.sequences_path)
    if r.epochs > 0:
        windows = training_windows(through_validation(seqs), train.max_len)
        t.lengths, t.windows = (windows != 0).sum(1), windows.to(recipe.device)
        steps = math.ceil(len(windows) / train.batch_size) * r.epochs
        t.scheduler.start_refresh(recipe.state.step, steps, r.lr_scale)
        frozen = freeze_encoder(model) if r.update == "items" else []
        try:
            for i in range(r.epochs):  # epoch numbers after the budget: their own (seed, epoch) randomness
                t0 = time.perf_counter()
                row, _ = recipe.train_epoch(train.epochs + i, desc=f"refresh {i + 1}/{r.epochs}")
                recipe.info(
                    "refresh epoch %d/%d (%s): loss %.4f, %.1fs",
                    i + 1,
                    r.epochs,
                    "the item side" if frozen else "all weights",
                    row["loss"],
                    time.perf_counter() - t0,
                )
                recipe.tracker.log_metrics({"refresh_loss": row["loss"]}, step=recipe.state.epoch + i + 1)
        finally:
            for p in frozen:
                p.requires_grad_(True)
    model.eval()
    rebuild_transitions(model, seqs, train.transition_window, train.transition_decay)
    recipe.info(
        "refreshed with each user's validation step: %d epochs%s",
        r.epochs,
        ", the transition table over the validation steps too" if model.cfg.transition_prior > 0 else "",
    )
