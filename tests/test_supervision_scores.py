"""Known-answer tests of the shared correlation scores, the codebook and TeacherCorrelation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.artifacts.neighbours import read_neighbours
from pipeline.config import CorrelateParams
from pipeline.errors import DataError
from pipeline.io import write_parquet
from pipeline.supervision import codebooks as S
from pipeline.supervision.codebooks import (
    CorrelationCodebook,
    ProductCodebook,
    load_codebook,
    nearest_centroid,
    nearest_level,
)
from pipeline.supervision.scores import (
    SCORES,
    TeacherCorrelation,
    block_scores,
    pair_scores,
    sub_vector_scores,
)


# ------------------------------------------------------------------------------------------ scores
@pytest.mark.parametrize(
    ("score", "expected"),
    [("cos", 0.0), ("euclidean", -math.sqrt(2.0)), ("dot", 0.0), ("manhattan", -2.0)],
)
def test_scores_of_orthogonal_unit_vectors(score: str, expected: float) -> None:
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert pair_scores(a, b, score).item() == pytest.approx(expected, abs=1e-6)
    assert block_scores(a, b, score).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("score", "expected"),
    # a=[3, 4], b=[6, 8] (parallel): cos 1; |a-b| = [3, 4] -> euclid -5, manhattan -7; dot 18 + 32 = 50
    [("cos", 1.0), ("euclidean", -5.0), ("dot", 50.0), ("manhattan", -7.0)],
)
def test_scores_of_parallel_vectors(score: str, expected: float) -> None:
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])
    assert pair_scores(a, b, score).item() == pytest.approx(expected, abs=1e-5)


def test_cosine_with_a_zero_vector_is_zero_not_nan() -> None:
    a, b = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert pair_scores(a, b, "cos").tolist() == [0.0, 0.0]
    assert block_scores(a, b, "cos").abs().sum().item() == 0.0


@pytest.mark.parametrize("score", SCORES)
def test_pair_scores_match_block_scores(score: str) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    block = block_scores(a, b, score)  # (40, 40)
    assert torch.allclose(torch.diagonal(block), pair_scores(a, b, score), atol=1e-4)
    # every entry, not only the diagonal: row r against all columns
    for r in (0, 17, 39):
        assert torch.allclose(block[r], pair_scores(a[r].expand_as(b), b, score), atol=1e-4)


def test_unknown_score_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown correlation score 'cosine'"):
        pair_scores(torch.zeros(1, 2), torch.zeros(1, 2), "cosine")


def test_sub_vector_cosines_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 1.0, 0.0], [1.0, 0.0, 2.0, 2.0]])
    # row 0: cos([1,0],[2,0]) = 1, cos([0,1],[1,0]) = 0; row 1: zero sub-vector -> 0, cos([1,1],[2,2]) = 1
    assert torch.allclose(sub_vector_scores(a, b, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), atol=1e-6)
    # D = 1 is the holistic cosine
    assert torch.allclose(sub_vector_scores(a, b, 1)[:, 0], pair_scores(a, b, "cos"), atol=1e-6)


def test_sub_vectors_must_divide_the_dimension() -> None:
    with pytest.raises(ValueError, match=r"sub_vectors \(3\) must divide the vector dimension \(4\)"):
        sub_vector_scores(torch.ones(2, 4), torch.ones(2, 4), 3)
    with pytest.raises(ValidationError, match="sub_vectors"):
        CorrelateParams(dim=30, sub_vectors=8)


# ------------------------------------------------------------------------------------------ codebook
def test_nearest_centroid_by_hand_with_tie_to_lowest_index() -> None:
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    c = torch.tensor([[1.0, 0.0], [6.0, 0.0], [5.0, 0.0], [1.0, 9.0]])  # [5, 0] is equidistant from 0 and 1
    assert nearest_centroid(c, centroids).tolist() == [0, 1, 0, 2]


def test_assign_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "_ASSIGN_CHUNK_ELEMENTS", 13 * 100)  # 100-row chunks: exercise the chunking
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, size=(5000, 8)).astype(np.float32)
    mu = rng.uniform(-1, 1, size=(13, 8)).astype(np.float32)
    brute = ((c[:, None, :].astype(np.float64) - mu[None, :, :]) ** 2).sum(-1).argmin(1)
    codes = CorrelationCodebook(torch.from_numpy(mu)).assign(torch.from_numpy(c))
    assert codes.dtype == torch.int64
    assert np.array_equal(codes.numpy(), brute)


def test_codebook_round_trip(tmp_path: Path) -> None:
    mu = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 7
    path = tmp_path / "codebook_text.safetensors"
    CorrelationCodebook(mu, {"modality": "text", "inertia": 1.5}).save(path)
    loaded = CorrelationCodebook.load(path)
    assert torch.equal(loaded.centroids, mu)
    assert (loaded.codes, loaded.sub_vectors) == (6, 4)
    assert loaded.metadata["modality"] == "text" and loaded.metadata["inertia"] == 1.5
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers


def test_corrupt_codebook_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    CorrelationCodebook(torch.ones(3, 2)).save(good)
    garbage = tmp_path / "codebook_text.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(DataError, match="codebook_text.safetensors"):
        CorrelationCodebook.load(garbage)
    truncated = tmp_path / "codebook_image.safetensors"
    truncated.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(DataError, match="codebook_image.safetensors"):
        CorrelationCodebook.load(truncated)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.ones(2)}, str(other))
    with pytest.raises(DataError, match=r"other.safetensors: not a codebook file \(no 'centroids'"):
        CorrelationCodebook.load(other)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        CorrelationCodebook.load(tmp_path / "absent.safetensors")


# ------------------------------------------------------------------------------------------ vq codebook
def test_nearest_level_by_hand_with_tie_to_lowest_index() -> None:
    levels = torch.tensor([[-0.5, 0.0, 0.5], [0.0, 0.25, 1.0]])  # (D=2, K=3)
    # col 0: 0.25 is equidistant from levels 1 and 2 -> 1; col 1: 0.625 is equidistant from 1 and 2 -> 1
    c = torch.tensor([[-0.9, 0.1], [0.25, 0.625], [0.3, 0.9], [-0.2, -3.0]])
    assert nearest_level(c, levels).tolist() == [[0, 0], [1, 1], [2, 2], [1, 0]]
    assert ProductCodebook(levels).assign(c).dtype == torch.int64


def test_nearest_level_equals_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "_ASSIGN_CHUNK_ELEMENTS", 8 * 13 * 100)  # 100-row chunks
    rng = np.random.default_rng(2)
    c = rng.uniform(-1, 1, size=(2500, 8)).astype(np.float32)
    levels = np.sort(rng.uniform(-1, 1, size=(8, 13)).astype(np.float32), axis=1)
    brute = np.abs(c[:, :, None].astype(np.float64) - levels[None]).argmin(2)
    assert np.array_equal(nearest_level(torch.from_numpy(c), torch.from_numpy(levels)).numpy(), brute)


def test_product_codebook_round_trip_and_load_picks_the_class(tmp_path: Path) -> None:
    from safetensors import safe_open

    levels = torch.linspace(-1, 1, 12).reshape(3, 4)
    path = tmp_path / "codebook_text.safetensors"
    ProductCodebook(levels, {"modality": "text"}).save(path)
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["levels"]
    book = load_codebook(path)
    assert isinstance(book, ProductCodebook) and torch.equal(book.levels, levels)
    assert (book.codes, book.sub_vectors, book.code_groups) == (4, 3, 3)
    assert book.metadata["quantizer"] == "vq" and book.metadata["modality"] == "text"
    assert torch.equal(ProductCodebook.load(path).levels, levels)
    with pytest.raises(DataError, match="a vq codebook, not a k-means one"):
        CorrelationCodebook.load(path)
    # a k-means file (no quantizer entry, as every file before vq) still loads as a CorrelationCodebook
    km = tmp_path / "codebook_image.safetensors"
    CorrelationCodebook(torch.eye(3)).save(km)
    assert isinstance(load_codebook(km), CorrelationCodebook) and load_codebook(km).code_groups == 0
    assert "quantizer" not in load_codebook(km).metadata
    with pytest.raises(DataError, match="a kmeans codebook, not a vq one"):
        ProductCodebook.load(km)


def test_vq_codes_of_constructed_pairs_equal_the_hand_computed_levels() -> None:
    # d = 4, D = 2 sub-vectors of 2 dims
    teacher = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # padding
            [1.0, 0.0, 1.0, 0.0],  # item 1
            [1.0, 0.0, 0.0, 1.0],  # item 2
            [0.0, 1.0, -1.0, 0.0],  # item 3
            [1.0, 1.0, 1.0, 1.0],  # item 4
        ]
    )
    # sub-vector cosines: (1,2) = [1, 0]; (1,3) = [0, -1]; (2,3) = [0, 0]; (1,4) = [0.7071, 0.7071]
    levels = torch.tensor([[-0.9, 0.1, 0.8], [-1.0, -0.2, 0.5]])
    module = TeacherCorrelation(teacher, ProductCodebook(levels), "cos")
    i, j = torch.tensor([1, 1, 2, 1]), torch.tensor([2, 3, 3, 4])
    scores, codes, valid = module(i, j)
    # sub 0: 1 -> 0.8 (2); 0 -> 0.1 (1); 0 -> 1; 0.707 -> 0.8 (2)
    # sub 1: 0 -> -0.2 (1) (0.2 < 0.5); -1 -> -1.0 (0); 0 -> 1; 0.707 -> 0.5 (2)
    assert codes.tolist() == [[2, 1], [1, 0], [1, 1], [2, 2]]
    assert codes.dtype == torch.int64 and valid.all()
    assert torch.allclose(scores, pair_scores(teacher[i], teacher[j], "cos"))
    assert (module.codes, module.code_groups, module.quantizer) == (3, 2, "vq")
    assert {n for n, _ in module.named_buffers()} == {"teacher", "levels", "excluded"}
    assert torch.equal(module(j, i)[1], codes)  # symmetric


# ------------------------------------------------------------------------------------------ TeacherCorrelation
def _teacher(n: int = 30, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.zeros(1, d), torch.randn(n, d, generator=g)])


@pytest.mark.parametrize("score", SCORES)
def test_teacher_correlation_equals_direct_computation(score: str) -> None:
    teacher = _teacher()
    codebook = CorrelationCodebook(torch.rand(5, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    module = TeacherCorrelation(teacher, codebook, score)
    i = torch.tensor([1, 2, 3, 30, 7, 7])
    j = torch.tensor([2, 1, 29, 4, 8, 7])
    scores, codes, valid = module(i, j)
    assert torch.allclose(scores, pair_scores(teacher[i], teacher[j], score), atol=1e-6)
    assert torch.equal(codes, codebook.assign(sub_vector_scores(teacher[i], teacher[j], 4)))
    assert valid.all()
    assert (module.num_items, module.codes, module.code_groups, module.quantizer) == (30, 5, 0, "kmeans")


def test_teacher_correlation_masks_padding_and_excluded() -> None:
    teacher = _teacher(n=10)
    excluded = torch.zeros(11, dtype=torch.bool)
    excluded[4] = True
    module = TeacherCorrelation(teacher, CorrelationCodebook(torch.eye(4)), "cos", excluded)
    i = torch.tensor([0, 1, 4, 2, 3])
    j = torch.tensor([1, 0, 5, 4, 5])
    _, codes, valid = module(i, j)
    assert valid.tolist() == [False, False, False, False, True]
    assert codes.shape == (5,) and codes.dtype == torch.int64
    assert {n for n, _ in module.named_buffers()} == {"teacher", "centroids", "excluded"}
    assert module.to(torch.device("cpu")).teacher.device.type == "cpu"


def test_teacher_correlation_rejects_mismatched_codebook() -> None:
    with pytest.raises(ValueError, match=r"sub_vectors \(3\) must divide the teacher dimension \(8\)"):
        TeacherCorrelation(_teacher(), CorrelationCodebook(torch.ones(4, 3)), "cos")


def test_teacher_correlation_from_dir(tmp_path: Path) -> None:
    vectors = _teacher(n=6, d=4)[1:].numpy()
    missing = np.array([False, True, False, False, False, False])
    write_parquet(
        tmp_path / "teacher_text.parquet",
        {"item": np.arange(1, 7, dtype=np.int32), "vector": vectors, "missing": missing},
        metadata={"missing_policy": "exclude"},
    )
    CorrelationCodebook(torch.eye(2)).save(tmp_path / "codebook_text.safetensors")
    module = TeacherCorrelation.from_dir(tmp_path, "text", "dot")
    assert torch.equal(module.teacher[1:], torch.from_numpy(vectors))
    assert module.teacher[0].abs().sum() == 0
    scores, _, valid = module(torch.tensor([1, 1, 3]), torch.tensor([2, 3, 0]))
    assert valid.tolist() == [False, True, False]  # item 2 is missing under policy exclude; 0 is padding
    assert scores[1].item() == pytest.approx(float(vectors[0] @ vectors[2]), abs=1e-5)


def test_read_neighbours_makes_dense_lists_with_counts(tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "topk_text.parquet"
    lists = pa.array([[2, 3], [], [1, 4], [3]], pa.list_(pa.int32()))  # item 2 was excluded: no list
    write_parquet(path, pa.table({"item": pa.array([1, 2, 3, 4], pa.int32()), "neighbors": lists}))
    table, counts = read_neighbours(path, num_items=5)  # item 5 is not in the file at all
    assert counts.tolist() == [0, 2, 0, 2, 1, 0]
    assert table.tolist() == [[0, 0], [2, 3], [0, 0], [1, 4], [3, 0], [0, 0]]
    with pytest.raises(DataError, match=r"topk_text.parquet: item ids must lie in 1\.\.3, found 1\.\.4"):
        read_neighbours(path, num_items=3)
    write_parquet(path, pa.table({"item": pa.array([1], pa.int32())}))
    with pytest.raises(DataError, match="topk_text.parquet: missing column 'neighbors'"):
        read_neighbours(path, num_items=5)
