"""Codebooks of dissected correlations: the k-means one (one code per pair) and the product one (``vq``: one
code per sub-vector), their files, and the nearest-code searches both the correlate stage and the training loss
use.

- ``correlate.quantizer: kmeans``: a :class:`CorrelationCodebook` (K centroids in the D-dim space): ONE code
  per pair, the nearest centroid in Euclidean distance; codes (P,).
- ``correlate.quantizer: vq``: a :class:`ProductCodebook` (K scalar levels per sub-vector, product
  quantisation): a D-tuple of codes per pair, each sub-vector's cosine mapped to its nearest level; codes
  (P, D).

:func:`load_codebook` reads either kind (the file's metadata names it; files without the entry are k-means).
Only torch is imported at module level; safetensors and pyarrow inside the functions that touch files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.errors import DataError

_META_KEY = "codebook"  # the safetensors metadata entry holding the codebook's JSON metadata
QUANTIZERS = ("kmeans", "vq")  # correlate.quantizer; a file's metadata ``quantizer`` (absent: kmeans)
_ASSIGN_CHUNK_ELEMENTS = 1 << 22  # (rows x K) float64 distances per chunk of the nearest-centroid search


def nearest_centroid(c: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (Euclidean; the lowest index on an exact tie) for each row of ``c``.

    argmin_k ||c - mu_k||^2 = argmin_k (||mu_k||^2 - 2 c . mu_k), evaluated in float64 (so rounding cannot
    flip a decision that float32 vectors resolve) and in row chunks, so memory stays bounded for any P.

    Args:
        c: (P, D) correlation vectors.
        centroids: (K, D) centroids.

    Returns:
        (P,) int64 codes in [0, K).
    """
    if c.ndim != 2 or centroids.ndim != 2 or c.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"nearest_centroid needs (P, D) and (K, D), got {tuple(c.shape)} and {tuple(centroids.shape)}"
        )
    mu = centroids.to(device=c.device, dtype=torch.float64)
    mu_sq = mu.square().sum(1)[None, :]  # (1, K)
    chunk = max(1, _ASSIGN_CHUNK_ELEMENTS // max(1, mu.shape[0]))
    out = torch.empty(c.shape[0], dtype=torch.long, device=c.device)
    for start in range(0, c.shape[0], chunk):
        part = c[start : start + chunk].to(torch.float64)
        out[start : start + chunk] = torch.addmm(mu_sq, part, mu.T, alpha=-2.0).argmin(dim=1)  # (chunk, K)
    return out


def nearest_level(c: Tensor, levels: Tensor) -> Tensor:
    """Per sub-vector, the index of the nearest scalar level (the lowest index on an exact tie).

    Evaluated in float64 (a float32 difference is exact there) and in row chunks, so memory stays bounded.

    Args:
        c: (P, D) correlation vectors.
        levels: (D, K) levels, row d the scalar codebook of sub-vector d.

    Returns:
        (P, D) int64 codes in [0, K).
    """
    if c.ndim != 2 or levels.ndim != 2 or c.shape[1] != levels.shape[0]:
        raise ValueError(
            f"nearest_level needs (P, D) and (D, K), got {tuple(c.shape)} and {tuple(levels.shape)}"
        )
    lv = levels.to(device=c.device, dtype=torch.float64)[None]  # (1, D, K)
    chunk = max(1, _ASSIGN_CHUNK_ELEMENTS // max(1, lv.numel()))
    out = torch.empty(c.shape, dtype=torch.long, device=c.device)
    for start in range(0, c.shape[0], chunk):
        part = c[start : start + chunk].to(torch.float64)[:, :, None]  # (chunk, D, 1)
        out[start : start + chunk] = (part - lv).abs().argmin(dim=2)  # first minimum: the lowest index
    return out


def _save_codebook(path: str | Path, name: str, tensor: Tensor, meta: dict[str, Any]) -> None:
    """Write one tensor and the metadata as safetensors, atomically.

    The metadata goes in ONE safetensors metadata entry (``codebook``, sorted-key JSON): safetensors writes a
    metadata map in hash order, so several entries would make equal codebooks differ in bytes.
    """
    from safetensors.torch import save_file

    from pipeline.io import atomic_path  # pyarrow only when writing files

    header = {_META_KEY: json.dumps(meta, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file({name: tensor.cpu().contiguous()}, str(tmp), metadata=header)


class CorrelationCodebook:
    """K centroids of D-dim dissected-correlation vectors; maps a correlation vector to its nearest code.

    Args:
        centroids: (K, D) float tensor.
        metadata: JSON-serialisable fit settings and statistics stored with the file.
    """

    quantizer = "kmeans"
    code_groups = 0  # one code per pair (codes (P,)); see ProductCodebook

    def __init__(self, centroids: Tensor, metadata: dict[str, Any] | None = None) -> None:
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(
                f"centroids must be a non-empty (K, D) tensor, got shape {tuple(centroids.shape)}"
            )
        if not torch.isfinite(centroids).all():
            raise ValueError("centroids contain NaN or infinite values")
        self.centroids = centroids.detach().to(torch.float32).contiguous()
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def codes(self) -> int:
        """K, the number of codes."""
        return int(self.centroids.shape[0])

    @property
    def sub_vectors(self) -> int:
        """D, the length of a correlation vector."""
        return int(self.centroids.shape[1])

    def assign(self, c: Tensor) -> Tensor:
        """Codes (P,) int64 of correlation vectors ``c`` (P, D): the nearest centroid, lowest index on ties."""
        return nearest_centroid(c, self.centroids.to(c.device))

    def save(self, path: str | Path) -> None:
        """Write the centroids (tensor ``centroids``) and metadata as safetensors, atomically (the format has
        no ``quantizer`` entry: a k-means file reads as it always did)."""
        meta = dict(self.metadata)
        meta.update({"codes": self.codes, "sub_vectors": self.sub_vectors})
        _save_codebook(path, "centroids", self.centroids, meta)

    @classmethod
    def load(cls, path: str | Path) -> CorrelationCodebook:
        """Read a k-means codebook written by :meth:`save`; a missing, corrupt or vq file raises an error
        naming it (:func:`load_codebook` reads either kind)."""
        book = load_codebook(path)
        if not isinstance(book, cls):
            raise DataError(f"{path}: a {book.quantizer} codebook, not a k-means one (use load_codebook)")
        return book


class ProductCodebook:
    """Product quantisation of dissected-correlation vectors: K scalar levels for each of the D sub-vectors.

    A pair's code is the D-tuple of its sub-vectors' nearest levels (:func:`nearest_level`), so codes are
    (P, D) and the student predicts each with its own head.

    Args:
        levels: (D, K) float tensor, row d the levels of sub-vector d (the fit stores them ascending).
        metadata: JSON-serialisable fit settings and statistics stored with the file.
    """

    quantizer = "vq"

    def __init__(self, levels: Tensor, metadata: dict[str, Any] | None = None) -> None:
        if levels.ndim != 2 or levels.shape[0] < 1 or levels.shape[1] < 1:
            raise ValueError(f"levels must be a non-empty (D, K) tensor, got shape {tuple(levels.shape)}")
        if not torch.isfinite(levels).all():
            raise ValueError("levels contain NaN or infinite values")
        self.levels = levels.detach().to(torch.float32).contiguous()
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def codes(self) -> int:
        """K, the number of levels of each sub-vector (each head's output size)."""
        return int(self.levels.shape[1])

    @property
    def sub_vectors(self) -> int:
        """D, the length of a correlation vector."""
        return int(self.levels.shape[0])

    @property
    def code_groups(self) -> int:
        """D: one code per sub-vector (codes (P, D))."""
        return self.sub_vectors

    def assign(self, c: Tensor) -> Tensor:
        """Codes (P, D) int64 of correlation vectors ``c`` (P, D): per sub-vector, the nearest level."""
        return nearest_level(c, self.levels.to(c.device))

    def save(self, path: str | Path) -> None:
        """Write the levels (tensor ``levels``, (D, K)) and metadata, with ``quantizer: vq``, atomically."""
        meta = dict(self.metadata)
        meta.update({"codes": self.codes, "sub_vectors": self.sub_vectors, "quantizer": self.quantizer})
        _save_codebook(path, "levels", self.levels, meta)

    @classmethod
    def load(cls, path: str | Path) -> ProductCodebook:
        """Read a vq codebook written by :meth:`save` (errors as :meth:`CorrelationCodebook.load`)."""
        book = load_codebook(path)
        if not isinstance(book, cls):
            raise DataError(f"{path}: a {book.quantizer} codebook, not a vq one (use load_codebook)")
        return book


Codebook = CorrelationCodebook | ProductCodebook
_TENSOR = {"kmeans": ("centroids", CorrelationCodebook), "vq": ("levels", ProductCodebook)}


def load_codebook(path: str | Path) -> Codebook:
    """Read a codebook file of either kind: the metadata entry ``quantizer`` picks the class (absent:
    ``kmeans``, as every file written before the vq codebook); a missing or corrupt file raises an error
    naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: codebook not found (run the correlate stage first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata: dict[str, Any] = dict(f.metadata() or {})
            if _META_KEY in metadata:
                metadata.update(json.loads(metadata.pop(_META_KEY)))
            quantizer = metadata.get("quantizer", "kmeans")
            if quantizer not in _TENSOR:
                raise DataError(
                    f"{path}: unknown codebook quantizer {quantizer!r} (allowed: {', '.join(QUANTIZERS)})"
                )
            name, cls = _TENSOR[quantizer]
            keys = list(f.keys())
            if name not in keys:
                raise DataError(f"{path}: not a codebook file (no {name!r} tensor; found {keys})")
            tensor = f.get_tensor(name)
    except DataError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt headers/data
        raise DataError(
            f"{path}: corrupt or unreadable codebook file ({type(err).__name__}: {err})"
        ) from None
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise DataError(
            f"{path}: {name!r} must be a 2-D float tensor, got {tensor.dtype} {tuple(tensor.shape)}"
        )
    try:
        return cls(tensor, metadata)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
