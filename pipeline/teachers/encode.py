"""Teacher vectors of one modality: each distinct input encoded once (or read from the vector cache), then
normalised and the missing rows filled by ``embed.missing_policy`` (:func:`finalize_vectors`)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.devices import resolve_precision
from pipeline.progress import progress_bar
from pipeline.teachers.cache import VectorCache, content_key
from pipeline.teachers.fetch import fetch_images

if TYPE_CHECKING:
    from pipeline.config import EmbedParams
    from pipeline.teachers.image import ImageTeacher
    from pipeline.teachers.text import TextTeacher


@dataclass
class Items:
    """The columns of items.parquet the embed stage reads."""

    item: np.ndarray  # (N,) int32, 1..N
    item_id: list[str]
    text: list[str]
    image: list[str | None] | None  # None when the file has no image column


@dataclass
class Encoded:
    """What :func:`encode_with_cache` produced for one modality."""

    raw: np.ndarray  # (N, dim) float32 encoder outputs; zero rows for items without a usable input
    failures: dict[int, str]  # row -> reason the encoder rejected its input (e.g. not an image)
    computed: int  # distinct inputs encoded in this run
    cache_hits: int  # rows served from the cache
    encode_s: float


@dataclass
class ModalityResult:
    """Final vectors of one modality and how they came about."""

    vectors: np.ndarray  # (N, dim) float32, normalised, missing policy applied
    missing: np.ndarray  # (N,) bool
    failures: dict[int, tuple[str, str]]  # row -> (kind, detail) for every missing row
    teacher: Any
    normalize: bool
    encoded: Encoded
    load_s: float
    seconds: float = 0.0


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit norm in float64 then float32 (rows of zero norm stay zero)."""
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    return np.divide(x64, norms, out=np.zeros_like(x64), where=norms > 0).astype(np.float32)


def finalize_vectors(raw: np.ndarray, missing: np.ndarray, normalize: bool, policy: str) -> np.ndarray:
    """Normalise usable rows and fill missing rows by the missing policy.

    Args:
        raw: (N, dim) float32 encoder outputs (missing rows ignored).
        missing: (N,) bool.
        normalize: Unit-normalise usable rows (and the mean vector).
        policy: ``zero`` | ``mean`` | ``exclude`` (``exclude`` fills like ``mean``).

    Returns:
        (N, dim) float32 final vectors.
    """
    out = np.zeros_like(raw, dtype=np.float32)
    usable = ~missing
    out[usable] = _l2_normalize(raw[usable]) if normalize else raw[usable]
    if policy in ("mean", "exclude") and usable.any() and missing.any():
        mean = out[usable].astype(np.float64).mean(axis=0, keepdims=True)
        out[missing] = _l2_normalize(mean) if normalize else mean.astype(np.float32)
    return out


def encode_with_cache(
    teacher: TextTeacher | ImageTeacher,
    keys: list[bytes | None],
    inputs: list[Any],
    batch_size: int,
    cache_root: Path,
    sort_key: Callable[[Any], Any] | None = None,
    per_call: int | None = None,
) -> Encoded:
    """Raw vectors for rows with a key, from the cache or the encoder (each distinct key encoded once).

    Args:
        teacher: A text or image teacher (``modality``, ``fingerprint``, ``dim``, ``encode(inputs, batch_size)``).
        keys: Content key per row; None for rows without a usable input (left as zero vectors).
        inputs: What ``teacher.encode`` takes, per row (a text or an image file).
        batch_size: Inputs per forward pass.
        cache_root: Folder of the vector cache.
        sort_key: Orders the inputs still to encode (e.g. longest texts first, so batches pad less).
        per_call: Inputs per ``teacher.encode`` call, between which the progress bar moves and the cache
            takes the vectors (default ``4 * batch_size``; more to keep several worker processes busy).
    """
    cache = VectorCache(cache_root, teacher.modality, teacher.fingerprint, teacher.dim)
    rows_of: dict[bytes, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        if key is not None:
            rows_of[key].append(row)
    todo = [k for k in rows_of if k not in cache]
    if sort_key is not None:
        todo.sort(key=lambda k: (sort_key(inputs[rows_of[k][0]]), k))
    hits = sum(len(rows_of[k]) for k in rows_of if k in cache)
    start = time.perf_counter()
    chunk = per_call or batch_size * 4
    with progress_bar(
        total=len(todo), desc=f"embed {teacher.modality}", unit="item", disable=not todo
    ) as bar:
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            vectors, failures = teacher.encode([inputs[rows_of[k][0]] for k in part], batch_size)
            ok = [i for i in range(len(part)) if i not in failures]
            for i, reason in failures.items():
                cache.put_failure(part[i], reason)
            if ok:
                cache.put([part[i] for i in ok], vectors[ok])
            bar.update(len(part))
    cache.flush()
    encode_s = time.perf_counter() - start
    raw = np.zeros((len(keys), teacher.dim), dtype=np.float32)
    row_failures: dict[int, str] = {}
    for key, rows in rows_of.items():
        entry = cache.get(key)
        if isinstance(entry, str):  # the encoder rejected this content (now or in an earlier run)
            row_failures.update(dict.fromkeys(rows, entry))
        else:
            raw[rows] = entry
    return Encoded(raw, row_failures, computed=len(todo), cache_hits=hits, encode_s=encode_s)


def embed_text(items: Items, params: EmbedParams, device: str, cache_root: Path) -> ModalityResult:
    """Text vectors of every item (``params``: the ``embed`` section); empty texts are missing rows."""
    from pipeline.teachers.text import load_text_teacher

    t0 = time.perf_counter()
    precision = resolve_precision(params.text.precision, torch.device(device))
    teacher = load_text_teacher(params.text.model, params.text.max_length, device, precision)
    load_s = time.perf_counter() - t0
    empty = [not t.strip() for t in items.text]
    keys = [
        None if e else content_key(teacher.fingerprint, t.encode())
        for t, e in zip(items.text, empty, strict=True)
    ]
    processes = params.text.processes
    with teacher.processes(processes):  # workers share the batches; each gets 4 per call
        encoded = encode_with_cache(
            teacher,
            keys,
            items.text,
            params.text.batch_size,
            cache_root,
            sort_key=lambda t: -len(t),
            per_call=params.text.batch_size * 4 * processes,
        )
    failures = {row: ("empty_text", "empty text") for row, e in enumerate(empty) if e}
    missing = np.array(empty, dtype=bool)
    return ModalityResult(
        vectors=finalize_vectors(encoded.raw, missing, params.text.normalize, params.missing_policy),
        missing=missing,
        failures=failures,
        teacher=teacher,
        normalize=params.text.normalize,
        encoded=encoded,
        load_s=load_s,
    )


def embed_image(
    items: Items,
    params: EmbedParams,
    device: str,
    cache_root: Path,
    fetch_root: Path,
    local_roots: Sequence[Path] | None = None,
) -> ModalityResult:
    """Image vectors of every item: its image fetched (:func:`~pipeline.teachers.fetch.fetch_images`), then
    encoded; a failed fetch or an undecodable file is a missing row of that kind."""
    from pipeline.teachers.image import load_image_teacher

    p = params.image
    t0 = time.perf_counter()
    precision = resolve_precision(p.precision, torch.device(device))
    teacher = load_image_teacher(p.model, p.weights, device, p.fetch_workers, precision)
    load_s = time.perf_counter() - t0
    assert items.image is not None  # checked by _check_inputs
    sources = fetch_images(
        items.image,
        fetch_root,
        timeout_s=p.fetch_timeout_s,
        retries=p.fetch_retries,
        max_bytes=p.fetch_max_bytes,
        workers=p.fetch_workers,
        local_roots=local_roots,
        allow_private_hosts=p.allow_private_hosts,
    )
    keys = [
        None if s.sha256 is None else content_key(teacher.fingerprint, s.sha256.encode()) for s in sources
    ]
    paths = [s.path for s in sources]
    encoded = encode_with_cache(teacher, keys, paths, p.batch_size, cache_root)
    failures: dict[int, tuple[str, str]] = {}
    for row, s in enumerate(sources):
        if s.failure is not None:
            failures[row] = (s.failure, s.detail)
        elif row in encoded.failures:
            failures[row] = ("not_image", f"{items.image[row]}: {encoded.failures[row]}")
    missing = np.zeros(len(sources), dtype=bool)
    missing[list(failures)] = True
    return ModalityResult(
        vectors=finalize_vectors(encoded.raw, missing, p.normalize, params.missing_policy),
        missing=missing,
        failures=failures,
        teacher=teacher,
        normalize=p.normalize,
        encoded=encoded,
        load_s=load_s,
    )
