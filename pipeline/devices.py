"""Device choice shared by every stage: ``auto`` means CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def resolve_device(setting: str | torch.device | None, key: str = "device") -> torch.device:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a clear error.

    Args:
        setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a device.
        key: the params key the setting came from, named in the error.
    """
    if setting is None or setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{key} is {str(setting)!r} but no CUDA device is available (use auto or cpu)")
    return device
