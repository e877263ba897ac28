"""Training checkpoints: written atomically, restored all-or-nothing.

A checkpoint holds the model, the best model so far, the optimiser and the loop state (a JSON string). It
lives under a folder named by :func:`checkpoint_key`, a digest of everything that makes two runs the same
run, mixed with :data:`CHECKPOINT_SCHEMA` and the package version, so a checkpoint of another layout or
code version is never picked up.

:func:`load_checkpoint` reads with ``torch.load(weights_only=True)`` (no code is unpickled), checks every
part against the live model and optimiser (names, shapes, dtypes, parameter groups, per-parameter optimiser
state) and builds the loop state before it touches anything; only then are the parts applied, and if
applying still fails the model and optimiser get their previous state back. So a checkpoint either restores
completely or is ignored with the model untouched, which is what the "starting from scratch" log line says.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import io
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipeline.io import atomic_path, json_digest
from pipeline.training.optim import SplitAdam

log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = 2  # layout version: bump when the checkpoint's content or the meaning of resuming changes
_PARTS = ("schema", "model", "best", "optimizer", "state")

T = TypeVar("T")


@dataclass
class TrainState:
    """What a checkpoint holds besides model and optimiser: enough to resume bit-for-bit at an epoch edge."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)


def remove_checkpoint(path: Path) -> None:
    """Delete a finished run's checkpoint and its (then empty) folder."""
    if path.exists():
        path.unlink()
        path.parent.rmdir()


def _code_version() -> str:
    try:
        return importlib.metadata.version("kdsr-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_key(payload: Mapping[str, Any]) -> str:
    """16 hex digits identifying a run: ``payload`` (config and input digests) + schema + code version."""
    keyed = {"schema": CHECKPOINT_SCHEMA, "code": _code_version(), "run": payload}
    return json_digest(keyed)[:16]


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    best_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | SplitAdam,
    state: Mapping[str, Any],
) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact).

    Args:
        path: the checkpoint file.
        model: the live model (its state dict is saved).
        best_state: the best model's state dict so far.
        optimizer: the live optimiser.
        state: the loop state as a JSON-able mapping (e.g. ``TrainState.__dict__``).
    """
    blob = {
        "schema": CHECKPOINT_SCHEMA,
        "model": model.state_dict(),
        "best": dict(best_state),
        "optimizer": optimizer.state_dict(),
        "state": json.dumps(dict(state)),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _check_tensors(name: str, saved: Any, live: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"{name}: not a state dict")
    if set(saved) != set(live):
        missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
        raise ValueError(f"{name}: keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, ref in live.items():
        value = saved[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}.{key}: not a tensor")
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(
                f"{name}.{key}: {tuple(value.shape)} {value.dtype}, the model has {tuple(ref.shape)} {ref.dtype}"
            )


def _check_optimizer(
    saved: Any, optimizer: torch.optim.Optimizer | SplitAdam, name: str = "optimizer"
) -> None:
    """Check a saved optimiser state against the live optimiser; one made of parts (``SplitAdam``: dense and
    sparse) is checked part by part."""
    parts = getattr(optimizer, "parts", None)
    if parts is not None:
        if not isinstance(saved, dict) or set(saved) != set(parts):
            found = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"{name}: parts {found}, the optimizer has {sorted(parts)}")
        for part, opt in parts.items():
            _check_optimizer(saved[part], opt, f"{name}.{part}")
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        raise ValueError(f"{name}: not an optimizer state dict")
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"{name}: {len(groups)} parameter groups, the optimizer has {len(optimizer.param_groups)}"
        )
    params: dict[int, torch.Tensor] = {}
    for i, (g, live) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        ids = g.get("params") if isinstance(g, dict) else None
        if not isinstance(ids, list) or len(ids) != len(live["params"]):
            raise ValueError(f"{name}: parameter group {i} does not match the model's")
        params.update(zip(ids, live["params"], strict=True))
    state = saved.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"{name}: no per-parameter state")
    for pid, entry in state.items():
        if pid not in params or not isinstance(entry, dict):
            raise ValueError(f"{name}: state for unknown parameter {pid!r}")
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[pid].shape:
                raise ValueError(
                    f"{name}: state {k!r} of parameter {pid} has shape {tuple(v.shape)}, "
                    f"the parameter {tuple(params[pid].shape)}"
                )


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | SplitAdam,
    make_state: Callable[[dict[str, Any]], T],
) -> tuple[dict[str, torch.Tensor], T] | None:
    """Restore model and optimiser from ``path`` all-or-nothing.

    Args:
        path: the checkpoint file (absent: None).
        model: the live model; changed only when everything restores.
        optimizer: the live optimiser; likewise.
        make_state: builds the loop state from the saved mapping (e.g. ``lambda d: TrainState(**d)``); an
            exception there refuses the checkpoint too.

    Returns:
        ``(best_state, state)``, or None when there is no usable checkpoint (a warning says why, and the
        model and optimiser are exactly as they were).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or any(k not in blob for k in _PARTS):
            raise ValueError(
                f"not a checkpoint of this pipeline (parts {sorted(blob) if isinstance(blob, dict) else type(blob).__name__})"
            )
        if blob["schema"] != CHECKPOINT_SCHEMA:
            raise ValueError(f"checkpoint schema {blob['schema']!r}, this code reads {CHECKPOINT_SCHEMA}")
        live = model.state_dict()
        _check_tensors("model", blob["model"], live)
        _check_tensors("best", blob["best"], live)
        _check_optimizer(blob["optimizer"], optimizer)
        saved_state = json.loads(blob["state"])
        if not isinstance(saved_state, dict):
            raise ValueError("state: not a mapping")
        state = make_state(saved_state)
    except Exception as err:  # a bad checkpoint is discarded, never trusted
        log.warning("ignoring unusable checkpoint %s (%s); starting from scratch", path, err)
        return None
    # everything checked: apply, and put the previous state back should applying still fail
    model_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    try:
        optimizer.load_state_dict(blob["optimizer"])
        model.load_state_dict(blob["model"], strict=True)
    except Exception as err:
        model.load_state_dict(model_before, strict=True)
        optimizer.load_state_dict(optimizer_before)
        log.warning("ignoring unusable checkpoint %s (%s); starting from scratch", path, err)
        return None
    return dict(blob["best"]), state


def write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    """The training curve: one row per epoch; columns are the union over epochs (validation columns may be
    sparse)."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
