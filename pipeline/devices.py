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


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls are fast on ``device``: any CUDA GPU, or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return True
    try:  # private probes (torch.cpu), absent from some builds: then assume no native bf16
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` where :func:`native_bf16`, else ``float32``; ``float32`` / ``bfloat16`` as given."""
    if setting == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if setting not in ("float32", "bfloat16"):
        raise PipelineError(f"precision must be auto, float32 or bfloat16, got {setting!r}")
    return setting
