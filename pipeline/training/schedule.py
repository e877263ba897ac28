"""Optimiser parameter groups and the learning-rate schedule, including KDSR's asynchronous rate.

Each group carries an ``lr_scale`` that one scheduler multiplies into the base rate (timm's pattern):
``lr = base_lr * base_factor(step) * lr_scale(group, epoch)``. The ``modality`` group (the modality embedding
tables) starts at a fraction of the base rate that is gradually increased, so the teacher information they were
initialised with survives longer (the paper's asynchronous learning rate).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from torch import nn

GROUPS = ("default", "no_decay", "modality")


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into ``modality`` / ``no_decay`` / ``default`` groups (disjoint, covering).

    ``modality``: the modality embedding tables (asynchronous rate, no decay). ``no_decay``: biases, norms and
    the ID/attribute/position embeddings. ``default``: every other weight, with ``weight_decay``.
    """
    buckets: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("modality_tables."):
            buckets["modality"].append(p)
        elif (
            p.ndim < 2
            or "norm" in name
            or name.startswith(("item_emb.", "attribute_emb."))
            or ".positions." in name
        ):
            buckets["no_decay"].append(p)
        else:
            buckets["default"].append(p)
    groups = []
    for g in GROUPS:
        if buckets[g]:
            decay = weight_decay if g == "default" else 0.0
            groups.append({"name": g, "params": buckets[g], "weight_decay": decay, "lr_scale": 1.0})
    return groups


def async_lr_scale(
    schedule: str, epoch: float, start_scale: float, warmup_epochs: int, step_epochs: list[int], gamma: float
) -> float:
    """The modality group's ``lr_scale`` at a (fractional, 0-based) epoch.

    ``linear``: start_scale rising linearly to 1.0 over ``warmup_epochs`` (the paper's "gradually increased");
    ``exponential``: start_scale rising geometrically to 1.0 over ``warmup_epochs`` (the same factor every
    epoch, so a small start stays small for longer than linear);
    ``step``: start_scale multiplied by ``gamma`` at each epoch in ``step_epochs``, capped at 1.0;
    ``constant``: start_scale throughout (the authors' code uses 1/4); ``none``: 1.0 (no asynchronous rate).
    """
    if schedule == "none":
        return 1.0
    if schedule == "constant":
        return start_scale
    if schedule == "linear":
        return min(1.0, start_scale + (1.0 - start_scale) * epoch / warmup_epochs)
    if schedule == "exponential":  # geometric: equal ratios per epoch, start_scale**(1 - epoch/warmup)
        return start_scale ** max(0.0, 1.0 - epoch / warmup_epochs)
    if schedule == "step":
        n = bisect.bisect_right(sorted(step_epochs), epoch)
        return min(1.0, start_scale * gamma**n)
    raise ValueError(
        f"unknown async_lr schedule {schedule!r} (linear | exponential | step | constant | none)"
    )


def base_lr_factor(step: int, total_steps: int, warmup_steps: int, cosine: bool) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LRScheduler:
    """Sets every group's ``lr`` from the base schedule and the group's ``lr_scale`` once per step."""

    def __init__(
        self,
        optimizer,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_epochs: int,
        cosine: bool,
        async_params: Any,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = steps_per_epoch * warmup_epochs
        self.cosine = cosine
        self.a = async_params
        self.refresh: tuple[int, int, float] | None = None  # (first step, steps, peak factor)

    def start_refresh(self, first_step: int, steps: int, peak: float) -> None:
        """From global step ``first_step`` on (``train.refresh``): the base rate times ``peak``, decayed to 0 by a
        cosine over ``steps`` steps; the asynchronous scale stays at its value at the end of training."""
        self.refresh = (first_step, max(1, steps), peak)

    def set_step(self, step: int) -> dict[str, float]:
        """Apply the rates for global ``step``; returns ``{group name: lr}``."""
        epoch = step / self.steps_per_epoch
        factor = base_lr_factor(step, self.total_steps, self.warmup_steps, self.cosine)
        if self.refresh is not None and step >= self.refresh[0]:
            first, steps, peak = self.refresh
            factor = peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - first) / steps)))
            epoch = first / self.steps_per_epoch
        lrs = {}
        for g in self.optimizer.param_groups:
            if g["name"] == "modality":
                g["lr_scale"] = async_lr_scale(
                    self.a.schedule,
                    epoch,
                    self.a.start_scale,
                    self.a.warmup_epochs,
                    list(self.a.step_epochs),
                    self.a.gamma,
                )
            g["lr"] = self.base_lr * factor * g["lr_scale"]
            lrs[g["name"]] = g["lr"]
        return lrs
