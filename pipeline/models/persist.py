"""Model weights as safetensors plus a JSON of the resolved config (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, file_digest, write_json
from pipeline.layout import MODEL_CONFIG, MODEL_WEIGHTS
from pipeline.models.student import Student, StudentConfig

WEIGHTS, CONFIG = MODEL_WEIGHTS, MODEL_CONFIG


SELECTED = "selected.safetensors"  # beside a refreshed model: the network validation chose (train.refresh)


def _write_weights(model: Student, path: Path) -> Path:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return path


def save_selected(model: Student, model_dir: str | Path) -> dict[str, Any]:
    """Write ``model`` as ``selected.safetensors``: the network validation chose, before ``train.refresh``
    updates it. Returns what :func:`save_student`'s ``selected`` records of it in config.json (its file, digest
    and student config), so that :func:`load_student` with ``selected=True`` can rebuild and check it."""
    path = _write_weights(model, Path(model_dir) / SELECTED)
    return {"weights": SELECTED, "sha256": file_digest(path), "student": model.cfg.to_dict()}


def save_student(
    model: Student,
    model_dir: str | Path,
    extra: dict[str, Any] | None = None,
    selected: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (student config + ``extra``) atomically.

    ``selected``: :func:`save_selected`'s record of the network validation chose, for a refreshed model; without
    it a ``selected.safetensors`` left in ``model_dir`` by an earlier run is removed, so that it cannot be taken
    for this model's."""
    model_dir = Path(model_dir)
    _write_weights(model, model_dir / WEIGHTS)
    config = {"student": model.cfg.to_dict(), **(extra or {})}
    if selected is not None:
        config["selected"] = selected
    write_json(model_dir / CONFIG, config)
    if selected is None:
        (model_dir / SELECTED).unlink(missing_ok=True)
    return model_dir / WEIGHTS


def is_refreshed(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a refreshed model, with the network validation chose beside it."""
    cfg_path = Path(model_dir) / CONFIG
    try:
        return "selected" in json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError, TypeError):
        return False


def load_student(
    model_dir: str | Path, device: str | torch.device = "cpu", selected: bool = False
) -> Student:
    """Rebuild a trained student from ``model_dir`` in eval mode; clear errors for missing/corrupt files.

    ``selected``: the network validation chose (``selected.safetensors``) when the model was refreshed
    (``train.refresh``), the model itself otherwise: what validation metrics must be measured with."""
    model_dir = Path(model_dir)
    cfg_path, w_path = model_dir / CONFIG, model_dir / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise PipelineError(f"{p}: not found (run the train stage first)")
    try:
        config = json.loads(cfg_path.read_text())
        record = config.get("selected") if selected else None
        if record is not None:
            w_path = model_dir / record["weights"]
            config = record
        cfg = StudentConfig.from_dict(config["student"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise PipelineError(f"{cfg_path}: not a valid student config ({err})") from None
    if record is not None:
        if not w_path.exists():
            raise PipelineError(f"{w_path}: not found, but {cfg_path} names it (rerun the train stage)")
        if file_digest(w_path) != record.get("sha256"):
            raise PipelineError(
                f"{w_path}: not the file {cfg_path} records (its sha256 differs): the network validation chose "
                "was replaced (rerun the train stage)"
            )
    model = Student(cfg)
    try:
        state = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise PipelineError(f"{w_path}: corrupt or not a safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PipelineError(f"{w_path}: weights do not match {cfg_path} ({err})") from None
    return model.to(device).eval()
