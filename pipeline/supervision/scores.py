"""Teacher correlation scores and codes: the ONE implementation used offline and by the training loss.

Holistic correlation r(i, j) = xi(t_i, t_j) with xi one of ``cos`` (cosine), ``euclidean`` (-||a - b||_2),
``dot`` (a . b) or ``manhattan`` (-||a - b||_1). Dissected correlation: split each vector into D equal
sub-vectors; the D per-sub-vector cosines form c(i, j), which a codebook (:mod:`pipeline.supervision.codebooks`:
k-means or vq) maps to a discrete code. :class:`TeacherCorrelation` computes both for batches of pairs.

Only torch (and the tiny ``pipeline.errors``) is imported at module level, so the trainer can use this on a
machine without polars, dvc or mlflow; pyarrow and safetensors are imported inside the functions that read
or write files.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.layout import codebook_file, teacher_file
from pipeline.supervision.codebooks import (
    Codebook,
    ProductCodebook,
    load_codebook,
    nearest_centroid,
    nearest_level,
)

SCORES = ("cos", "euclidean", "dot", "manhattan")
EPS = 1e-8  # norms below this count as zero: the cosine with a zero vector is 0, not NaN


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
        from pipeline.artifacts.vectors import read_item_vectors

        teacher_vectors = read_item_vectors(teacher_file(Path(supervision_dir), modality))
        vectors = torch.from_numpy(teacher_vectors.vectors.copy())
        teacher = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])
        excluded = torch.cat(
            [torch.ones(1, dtype=torch.bool), torch.from_numpy(teacher_vectors.excluded.copy())]
        )
        codebook = load_codebook(codebook_file(supervision_dir, modality))
        return cls(teacher, codebook, score, excluded)
