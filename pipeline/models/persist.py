"""Model weights as safetensors plus a JSON of the resolved config (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, write_json
from pipeline.layout import MODEL_CONFIG, MODEL_WEIGHTS
from pipeline.models.student import Student, StudentConfig

WEIGHTS, CONFIG = MODEL_WEIGHTS, MODEL_CONFIG


def save_student(model: Student, model_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (student config + ``extra``) atomically."""
    model_dir = Path(model_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(model_dir / CONFIG, {"student": model.cfg.to_dict(), **(extra or {})})
    return model_dir / WEIGHTS


def load_student(model_dir: str | Path, device: str | torch.device = "cpu") -> Student:
    """Rebuild a trained student from ``model_dir`` in eval mode; clear errors for missing/corrupt files."""
    model_dir = Path(model_dir)
    cfg_path, w_path = model_dir / CONFIG, model_dir / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise PipelineError(f"{p}: not found (run the train stage first)")
    try:
        cfg = StudentConfig.from_dict(json.loads(cfg_path.read_text())["student"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{cfg_path}: not a valid student config ({err})") from None
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
