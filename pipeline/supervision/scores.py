"""Teacher correlation scores and codes: the ONE implementation used offline and by the training loss.

Holistic correlation r(i, j) = xi(t_i, t_j) with xi one of ``cos`` (cosine), ``euclidean`` (-||a - b||_2),
``dot`` (a . b) or ``manhattan`` (-||a - b||_1). Dissected correlation: split each vector into D equal
sub-vectors; the D per-sub-vector cosines form c(i, j), which a codebook maps to a discrete code:

- ``correlate.quantizer: kmeans``: a :class:`CorrelationCodebook` (K centroids in the D-dim space): ONE code
  per pair, the nearest centroid in Euclidean distance; codes (P,).
- ``correlate.quantizer: vq``: a :class:`ProductCodebook` (K scalar levels per sub-vector, product
  quantisation): a D-tuple of codes per pair, each sub-vector's cosine mapped to its nearest level; codes
  (P, D).

:func:`load_codebook` reads either kind (the file's metadata names it; files without the entry are k-means).

Only torch (and the tiny ``pipeline.errors``) is imported at module level, so the trainer can use this on a
machine without polars, dvc or mlflow; pyarrow and safetensors are imported inside the functions that read
or write files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import DataError
from pipeline.layout import codebook_file, teacher_file

SCORES = ("cos", "euclidean", "dot", "manhattan")
_META_KEY = "codebook"  # the safetensors metadata entry holding the codebook's JSON metadata
QUANTIZERS = ("kmeans", "vq")  # correlate.quantizer; a file's metadata ``quantizer`` (absent: kmeans)
EPS = 1e-8  # norms below this count as zero: the cosine with a zero vector is 0, not NaN
_ASSIGN_CHUNK_ELEMENTS = 1 << 22  # (rows x K) float64 distances per chunk of the nearest-centroid search


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"unknown correlation score {score!r} (allowed: {', '.join(SCORES)})")


def pair_scores(a: Tensor, b: Tensor, score: str) -> Tensor:
    """Row-wise correlation of two equally shaped batches of vectors.

    Args:
        a: (P, d) vectors.
        b: (P, d) vectors.
        score: one of ``cos``, ``euclidean``, ``dot``, ``manhattan``.

    Returns:
        (P,) scores; higher means more correlated for every score.
    """
    _check_score(score)
    if a.shape != b.shape:
        raise ValueError(f"pair_scores needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if score == "cos":
        return (F.normalize(a, dim=-1, eps=EPS) * F.normalize(b, dim=-1, eps=EPS)).sum(-1)
    if score == "dot":
        return (a * b).sum(-1)
    if score == "euclidean":
        return -torch.linalg.vector_norm(a - b, ord=2, dim=-1)
    return -torch.linalg.vector_norm(a - b, ord=1, dim=-1)


def block_scores(a: Tensor, b: Tensor, score: str) -> Tensor:
    """All-pairs correlation of two sets of vectors (used for the top-k neighbour search).

    Args:
        a: (n, d) vectors.
        b: (m, d) vectors.
        score: one of ``cos``, ``euclidean``, ``dot``, ``manhattan``.

    Returns:
        (n, m) scores, entry (r, c) = ``pair_scores(a[r], b[c])`` up to float rounding (the Euclidean
        distance uses the matmul expansion for large blocks).
    """
    _check_score(score)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"block_scores needs (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if score == "cos":
        return F.normalize(a, dim=-1, eps=EPS) @ F.normalize(b, dim=-1, eps=EPS).T
    if score == "dot":
        return a @ b.T
    if score == "euclidean":
        return -torch.cdist(a, b, p=2.0)
    return -torch.cdist(a, b, p=1.0)


def sub_vector_scores(a: Tensor, b: Tensor, sub_vectors: int) -> Tensor:
    """Dissected correlation: the cosine of each of ``sub_vectors`` equal slices of two batches of vectors.

    Args:
        a: (P, d) vectors.
        b: (P, d) vectors.
        sub_vectors: D, which must divide d.

    Returns:
        (P, D) cosines; a zero sub-vector gives 0.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"sub_vector_scores needs equal (P, d) shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    d = a.shape[1]
    if sub_vectors < 1 or d % sub_vectors != 0:
        raise ValueError(
            f"sub_vectors ({sub_vectors}) must divide the vector dimension ({d}) into equal sub-vectors"
        )
    a = F.normalize(a.reshape(a.shape[0], sub_vectors, d // sub_vectors), dim=-1, eps=EPS)  # (P, D, d/D)
    b = F.normalize(b.reshape(b.shape[0], sub_vectors, d // sub_vectors), dim=-1, eps=EPS)
    return (a * b).sum(-1)  # (P, D)


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


class TeacherCorrelation(torch.nn.Module):
    """On-the-fly teacher correlations and codes for batches of item pairs (nothing O(N^2) is stored).

    Args:
        teacher: (N + 1, d) reduced teacher vectors; row 0 is the padding item.
        codebook: the modality's codebook (k-means or vq); its D must divide d.
        score: holistic score name (``cos``, ``euclidean``, ``dot``, ``manhattan``).
        excluded: optional (N + 1,) bool mask of items whose pairs carry no supervision.
    """

    def __init__(
        self,
        teacher: Tensor,
        codebook: Codebook,
        score: str = "cos",
        excluded: Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_score(score)
        if teacher.ndim != 2 or teacher.shape[0] < 2:
            raise ValueError(f"teacher must be (N + 1, d) with N >= 1, got shape {tuple(teacher.shape)}")
        if teacher.shape[1] % codebook.sub_vectors != 0:
            raise ValueError(
                f"codebook sub_vectors ({codebook.sub_vectors}) must divide the teacher dimension "
                f"({teacher.shape[1]})"
            )
        mask = torch.zeros(teacher.shape[0], dtype=torch.bool)
        if excluded is not None:
            if excluded.shape != (teacher.shape[0],):
                raise ValueError(
                    f"excluded must have shape ({teacher.shape[0]},), got {tuple(excluded.shape)}"
                )
            mask |= excluded.to(torch.bool).cpu()
        mask[0] = True  # padding
        self.score = score
        self.sub_vectors = codebook.sub_vectors
        self.quantizer = codebook.quantizer
        self.register_buffer("teacher", teacher.detach().to(torch.float32).contiguous())
        if isinstance(codebook, ProductCodebook):
            self.register_buffer("levels", codebook.levels.clone())  # (D, K)
        else:
            self.register_buffer("centroids", codebook.centroids.clone())  # (K, D)
        self.register_buffer("excluded", mask)

    @property
    def num_items(self) -> int:
        """N, the number of real items (rows 1..N)."""
        return int(self.teacher.shape[0]) - 1

    @property
    def codes(self) -> int:
        """K, the number of codes (the classifier's output size; per sub-vector for vq)."""
        return int(self.levels.shape[1] if self.quantizer == "vq" else self.centroids.shape[0])

    @property
    def code_groups(self) -> int:
        """0 for k-means (one code per pair, codes (P,)); D for vq (one code per sub-vector, codes (P, D))."""
        return self.sub_vectors if self.quantizer == "vq" else 0

    @torch.no_grad()
    def forward(self, i: Tensor, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher scores, codes and validity for the pairs (i[p], j[p]).

        Args:
            i: (P,) item indices in [0, N].
            j: (P,) item indices in [0, N].

        Returns:
            scores (P,) float32, codes int64 ((P,) k-means: the nearest centroid; (P, D) vq: each sub-vector's
            nearest level), valid (P,) bool: False when either item is padding (0) or excluded. Scores and
            codes of invalid pairs are computed all the same; mask them with ``valid``.
        """
        a = self.teacher[i]  # (P, d)
        b = self.teacher[j]
        scores = pair_scores(a, b, self.score)
        c = sub_vector_scores(a, b, self.sub_vectors)
        codes = (
            nearest_level(c, self.levels) if self.quantizer == "vq" else nearest_centroid(c, self.centroids)
        )
        valid = ~(self.excluded[i] | self.excluded[j])
        return scores, codes, valid

    @classmethod
    def from_dir(cls, supervision_dir: str | Path, modality: str, score: str = "cos") -> TeacherCorrelation:
        """Build from ``<dir>/teacher_<modality>.parquet`` and ``<dir>/codebook_<modality>.safetensors``.

        Items flagged ``missing`` are excluded when the embeddings' missing_policy was ``exclude``.
        """
        from pipeline.io import parquet_metadata, read_parquet, vectors_from_column

        supervision_dir = Path(supervision_dir)
        path = teacher_file(supervision_dir, modality)
        table = read_parquet(path)
        for col in ("item", "vector", "missing"):
            if col not in table.column_names:
                raise DataError(f"{path}: missing column {col!r} (found {table.column_names})")
        items = table.column("item").to_numpy()
        n = len(items)
        if n == 0 or items[0] != 1 or items[-1] != n or (n > 1 and not (items[1:] > items[:-1]).all()):
            raise DataError(f"{path}: column 'item' must be 1..N sorted")
        vectors = torch.from_numpy(vectors_from_column(table.column("vector")).copy())
        teacher = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])
        meta: dict[str, Any] = parquet_metadata(path)
        excluded = None
        if meta.get("missing_policy") == "exclude":
            missing = torch.from_numpy(table.column("missing").to_numpy(zero_copy_only=False).astype(bool))
            excluded = torch.cat([torch.ones(1, dtype=torch.bool), missing])
        codebook = load_codebook(codebook_file(supervision_dir, modality))
        return cls(teacher, codebook, score, excluded)


def read_neighbours(path: str | Path, num_items: int) -> tuple[Tensor, Tensor]:
    """The holistic neighbour lists of a ``topk_<m>.parquet`` as dense tensors.

    Args:
        path: the file the correlate stage wrote (columns ``item`` and ``neighbors``, ids 1..N).
        num_items: N; rows of items the file does not list get no neighbours.

    Returns:
        neighbours (N + 1, k) int64 (0 past an item's count) and counts (N + 1,) int64; row 0 (padding)
        and excluded items have count 0.

    Raises:
        DataError: a missing column, or an item or neighbour id outside 1..N.
    """
    import numpy as np

    from pipeline.io import read_parquet

    path = Path(path)
    table = read_parquet(path)
    for col in ("item", "neighbors"):
        if col not in table.column_names:
            raise DataError(f"{path}: missing column {col!r} (found {table.column_names})")
    items = table.column("item").to_numpy().astype(np.int64)
    lists = table.column("neighbors").combine_chunks()
    flat = lists.flatten().to_numpy().astype(np.int64)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    for name, ids in (("item", items), ("neighbors", flat)):
        if ids.size and (ids.min() < 1 or ids.max() > num_items):
            raise DataError(f"{path}: {name} ids must lie in 1..{num_items}, found {ids.min()}..{ids.max()}")
    k = int(lengths.max()) if lengths.size else 0
    neighbours = np.zeros((num_items + 1, max(k, 1)), dtype=np.int64)
    counts = np.zeros(num_items + 1, dtype=np.int64)
    counts[items] = lengths
    rows = np.repeat(items, lengths)
    cols = np.arange(flat.size) - np.repeat(offsets[:-1], lengths)
    neighbours[rows, cols] = flat
    return torch.from_numpy(neighbours), torch.from_numpy(counts)
