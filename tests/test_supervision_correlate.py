"""Known-answer tests of the correlate stage: reduction, blocked top-k, pair sampling, k-means, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import write_sequences

from pipeline.config import CorrelateParams, MLflowParams, Params, with_overrides
from pipeline.errors import DataError, PipelineError
from pipeline.io import parquet_metadata, read_parquet, vectors_from_column, write_parquet
from pipeline.supervision.autoencoders import autoencoder_reduce
from pipeline.supervision.codebooks import CorrelationCodebook, ProductCodebook, load_codebook, nearest_level
from pipeline.supervision.correlate import AE_DEFAULT_EPOCHS, run_correlate
from pipeline.supervision.kmeans import fit_kmeans, fit_levels_1d, fit_product_levels
from pipeline.supervision.pairs import sample_pairs, training_item_sets
from pipeline.supervision.reduction import pca_reduce, random_rotation
from pipeline.supervision.scores import SCORES, TeacherCorrelation, pair_scores, sub_vector_scores
from pipeline.supervision.topk import bf16_dot_error_bound, blocked_topk

NO_MLFLOW = MLflowParams(enabled=False)


# ------------------------------------------------------------------------------------------ fixtures
def clustered_vectors(n: int, d: int, clusters: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    v = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(
    path: Path, vectors: np.ndarray, missing: np.ndarray | None = None, policy: str = "mean"
) -> None:
    n = len(vectors)
    missing = np.zeros(n, dtype=bool) if missing is None else missing
    write_parquet(
        path,
        {"item": np.arange(1, n + 1, dtype=np.int32), "vector": vectors, "missing": missing},
        metadata={"model": "synthetic", "dim": vectors.shape[1], "normalize": True, "missing_policy": policy},
    )


def random_sequences(n_items: int, users: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=int(rng.integers(4, 12))).tolist() for _ in range(users)]


@pytest.fixture
def params(tiny_params: Params) -> CorrelateParams:
    return with_overrides(tiny_params, {"correlate.dim": 16, "correlate.block_size": 32}).correlate


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny embeddings folder (text: 120 clustered items) and sequences.parquet."""
    (tmp_path / "emb").mkdir()
    write_embeddings(tmp_path / "emb" / "text.parquet", clustered_vectors(120, 24, 6))
    write_sequences(tmp_path / "sequences.parquet", random_sequences(120, 80))
    return tmp_path


def _run(p: CorrelateParams, root: Path, modalities: list[str] | None = None, out: str = "sup") -> dict:
    return run_correlate(
        p,
        ["text"] if modalities is None else modalities,
        NO_MLFLOW,
        root / "emb",
        root / "sequences.parquet",
        root / out,
    )


# ------------------------------------------------------------------------------------------ reduction
def test_pca_of_points_on_a_line_by_hand() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0, 9.0])
    direction = np.array([1.0, -2.0, 2.0]) / 3.0  # unit; largest |loading| is -2/3 -> sign flipped
    x = (t[:, None] * direction + np.array([5.0, 5.0, 5.0])).astype(np.float32)
    red = pca_reduce(x, 1)
    assert red.info["explained_variance_ratio"] == pytest.approx(1.0, abs=1e-9)
    # component = -direction (so that -2/3 becomes +2/3): projection = -(t - mean(t))
    assert np.allclose(red.vectors[:, 0], -(t - t.mean()), atol=1e-5)


def test_pca_fits_on_present_items_only_and_rejects_a_larger_dim() -> None:
    x = clustered_vectors(50, 8, 3)
    missing = np.zeros(50, dtype=bool)
    missing[:5] = True
    assert pca_reduce(x, 4, missing).info["fit_items"] == 45
    with pytest.raises(
        PipelineError, match=r"correlate.dim \(9\) is larger than the teacher dimension \(8\)"
    ):
        pca_reduce(x, 9)


def test_pca_of_a_vector_file_read_block_by_block_equals_the_array_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from pipeline import io
    from pipeline.artifacts.vectors import open_item_vectors, write_item_vectors

    monkeypatch.setattr(io, "VECTOR_BATCH_ROWS", 16)  # 50 rows: written in 4 row groups, read 16 at a time
    x = clustered_vectors(50, 8, 3)
    missing = np.zeros(50, dtype=bool)
    missing[[0, 17, 40]] = True
    write_item_vectors(tmp_path / "text.parquet", x, missing, {"missing_policy": "mean"})
    assert pq.ParquetFile(tmp_path / "text.parquet").metadata.num_row_groups == 4
    source = open_item_vectors(tmp_path / "text.parquet")
    assert source.shape == (50, 8) and [len(b) for _, b in source.blocks()] == [16, 16, 16, 2]
    streamed, whole = pca_reduce(source, 4, source.missing), pca_reduce(x, 4, missing)
    # the same figures; a float may differ in its last bits (block sums are added in another order)
    floats = {k for k, v in whole.info.items() if isinstance(v, float)}
    assert floats and streamed.info.keys() == whole.info.keys() and whole.info["fit_items"] == 47
    assert all(streamed.info[k] == whole.info[k] for k in whole.info.keys() - floats)
    assert {k: streamed.info[k] for k in floats} == pytest.approx(
        {k: whole.info[k] for k in floats}, rel=1e-12
    )
    np.testing.assert_allclose(streamed.vectors, whole.vectors, rtol=0, atol=1e-6)


def test_autoencoder_is_deterministic_and_reconstructs_low_rank_data() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)  # rank 3
    a = autoencoder_reduce(x, 4, epochs=5, seed=1)
    b = autoencoder_reduce(x, 4, epochs=5, seed=1)
    assert a.vectors.shape == (300, 4) and a.vectors.dtype == np.float32
    assert np.array_equal(a.vectors, b.vectors)
    assert autoencoder_reduce(x, 4, epochs=200, seed=1).info["reconstruction_r2"] > 0.8


# ------------------------------------------------------------------------------------------ top-k
def brute_force_topk(v: np.ndarray, k: int, score: str) -> tuple[np.ndarray, np.ndarray]:
    x = v.astype(np.float64)
    if score == "cos":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
    elif score == "dot":
        s = x @ x.T
    elif score == "euclidean":
        s = -np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    else:
        s = -np.abs(x[:, None] - x[None]).sum(-1)
    np.fill_diagonal(s, -np.inf)
    idx = np.empty((len(x), k), dtype=np.int64)
    for r in range(len(x)):
        idx[r] = np.lexsort((np.arange(len(x)), -s[r]))[:k]  # score desc, then index asc
    return np.take_along_axis(s, idx, 1), idx


def assert_same_topk(v, score, values, indices, ref_v, ref_i, rows=None) -> None:
    """Same top-k as the reference up to float rounding: equal scores per rank, every returned item has
    the float64 score of its rank, and nearly every row lists the very same items in the same order."""
    assert np.allclose(values, ref_v, atol=1e-5)
    x = v.astype(np.float64)
    if score == "cos":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    row_ids = np.flatnonzero(rows) if rows is not None else np.arange(len(v))
    if score in ("cos", "dot"):
        got = np.einsum("rkd,rd->rk", x[indices], x[row_ids])
        assert np.allclose(got, ref_v, atol=1e-5)
    assert (indices == ref_i).all(1).mean() > 0.99


@pytest.mark.parametrize("score", SCORES)
def test_blocked_topk_equals_brute_force(score: str) -> None:
    v = np.random.default_rng(7).normal(size=(300, 16)).astype(np.float32)
    # 64-row blocks and 80-column tiles: rows and columns are both split, with ragged ends
    values, indices = blocked_topk(torch.from_numpy(v), 10, score, block_size=64, tile_elements=64 * 80)
    ref_v, ref_i = brute_force_topk(v, 10, score)
    assert np.array_equal(indices.numpy(), ref_i)
    assert np.allclose(values.numpy(), ref_v, atol=1e-4)


@pytest.mark.parametrize("score", SCORES)
def test_blocked_topk_threshold_search_over_segments_equals_brute_force(score: str) -> None:
    # 600-column chunks: two full 256-column segments plus a ragged end in every later chunk, so the
    # segment-maximum search and the entry-by-entry tail are both exercised; clustered data has near ties
    v = clustered_vectors(1500, 8, clusters=6, seed=3)
    values, indices = blocked_topk(torch.from_numpy(v), 12, score, block_size=100, tile_elements=100 * 600)
    ref_v, ref_i = brute_force_topk(v, 12, score)
    assert_same_topk(v, score, values.numpy(), indices.numpy(), ref_v, ref_i)


@pytest.mark.parametrize("score", ["cos", "dot", "euclidean"])  # euclidean: searched in float32 anyway
def test_blocked_topk_bfloat16_search_gives_the_float32_answer(score: str) -> None:
    rng = np.random.default_rng(11)
    v = (clustered_vectors(1200, 32, clusters=5, seed=4) * rng.uniform(0.5, 2.0, (1200, 1))).astype(
        np.float32
    )
    excluded = torch.zeros(1200, dtype=torch.bool)
    excluded[[5, 700, 1199]] = True
    args = dict(block_size=128, excluded=excluded, tile_elements=128 * 512)
    v32, i32 = blocked_topk(torch.from_numpy(v), 15, score, precision="float32", **args)
    v16, i16 = blocked_topk(torch.from_numpy(v), 15, score, precision="bfloat16", **args)
    keep = ~excluded.numpy()
    assert not np.isin(i16.numpy()[keep], [5, 700, 1199]).any()
    # bf16 only chose where to look: the candidates were rescored in float32, so the answer is the float32
    # one up to the order of items whose scores differ in the last float32 bit
    assert_same_topk(
        v, score, v16.numpy()[keep], i16.numpy()[keep], v32.numpy()[keep], i32.numpy()[keep], keep
    )
    with pytest.raises(ValueError, match="precision"):
        blocked_topk(torch.from_numpy(v), 3, score, precision="fp8")


def test_bf16_dot_error_bound_holds() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 128, generator=g), torch.randn(2048, 128, generator=g) * 3
    exact = a.double() @ b.double().T
    approx = (a.bfloat16() @ b.bfloat16().T).double()
    scale = a.norm(dim=1).double()[:, None] * b.norm(dim=1).double()[None]
    worst = float(((approx - exact).abs() / scale).max())
    assert 0 < worst <= bf16_dot_error_bound(128)
    assert bf16_dot_error_bound(128) < 0.015  # a tight enough margin to prune almost everything


def test_blocked_topk_breaks_ties_by_lowest_index() -> None:
    v = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (10, 1))  # ten identical items: all scores tie
    v[9] = [0.0, 1.0]
    values, indices = blocked_topk(torch.from_numpy(v), 3, "cos", block_size=16, tile_elements=16 * 4)
    assert indices[0].tolist() == [1, 2, 3]
    assert indices[5].tolist() == [0, 1, 2]
    assert indices[9].tolist() == [0, 1, 2]  # all at cos 0
    assert values[5].tolist() == [1.0, 1.0, 1.0]


def test_blocked_topk_never_returns_excluded_items() -> None:
    v = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    excluded = torch.zeros(20, dtype=torch.bool)
    excluded[[0, 3, 4]] = True
    _, idx = blocked_topk(torch.from_numpy(v), 50, "dot", block_size=16, excluded=excluded)
    assert idx.shape == (20, 16)  # capped at 17 included items - 1
    assert not np.isin(idx.numpy()[~excluded.numpy()], [0, 3, 4]).any()


# ------------------------------------------------------------------------------------------ pairs
def test_training_item_sets_by_hand() -> None:
    sets = training_item_sets([[1, 2, 2, 3, 9], [4, 5, 6], [7]], train_end=np.array([4, 2, 0]))
    assert sets.items.tolist() == [1, 2, 3, 4, 5]
    assert sets.offsets.tolist() == [0, 3, 5, 5]
    excluded = np.zeros(10, dtype=bool)
    excluded[2] = True
    assert training_item_sets([[1, 2, 3]], np.array([3]), excluded).items.tolist() == [1, 3]
    with pytest.raises(DataError, match=r"row 1: train_end=5 outside 0..3"):
        training_item_sets([[1, 2], [1, 2, 3]], train_end=np.array([1, 5]))


def test_sampled_pairs_never_contain_validation_or_test_items() -> None:
    rng = np.random.default_rng(3)
    sequences, allowed = [], set()
    for u in range(60):
        train = rng.integers(1, 41, size=int(rng.integers(2, 9))).tolist()  # training items: 1..40
        sequences.append(train + [100 + 2 * u, 101 + 2 * u])  # held-out items: unique, all >= 100
        uniq = sorted(set(train))
        allowed |= {(a, b) for a in uniq for b in uniq if a != b}
    ends = np.array([len(s) - 2 for s in sequences])
    sets = training_item_sets(sequences, ends)
    pairs, n_co = sample_pairs(sets, 5000, 0.2, seed=0)
    assert pairs.shape == (5000, 2) and n_co == 4000
    assert pairs.max() <= 40 and pairs.min() >= 1  # no held-out item anywhere, random share included
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert all((int(a), int(b)) in allowed for a, b in pairs[:n_co])  # truly co-occurring in training
    again, _ = sample_pairs(sets, 5000, 0.2, seed=0)
    assert np.array_equal(pairs, again)


def test_pairs_are_uniform_over_user_pair_occurrences() -> None:
    # user 1 has 3 distinct items (3 pairs), user 2 has 2 (1 pair): 3/4 of the pairs come from user 1
    sets = training_item_sets([[1, 2, 3, 9, 9], [4, 5, 9, 9]], train_end=np.array([3, 2]))
    pairs, _ = sample_pairs(sets, 20_000, 0.0, seed=1)
    share_user2 = np.isin(pairs[:, 0], [4, 5]).mean()
    assert share_user2 == pytest.approx(0.25, abs=0.015)
    assert set(map(tuple, np.sort(pairs, 1).tolist())) == {(1, 2), (1, 3), (2, 3), (4, 5)}


# ------------------------------------------------------------------------------------------ k-means
def test_kmeans_recovers_separated_blobs() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [5, 0], [0, 5], [5, 5]], dtype=np.float32)
    x = np.concatenate([c + 0.1 * rng.normal(size=(250, 2)) for c in centres]).astype(np.float32)
    res = fit_kmeans(torch.from_numpy(x), 4, 50, seed=0, progress=False)
    found = res.centroids.numpy()
    assert np.allclose(found[np.lexsort(np.round(found).T)], centres[np.lexsort(centres.T)], atol=0.05)
    assert res.converged and torch.bincount(res.labels, minlength=4).tolist() == [250, 250, 250, 250]
    sk = KMeans(4, n_init=1, random_state=0, max_iter=50).fit(x)
    assert res.inertia <= sk.inertia_ * 1.0001
    again = fit_kmeans(torch.from_numpy(x), 4, 50, seed=0, progress=False)
    assert torch.equal(res.centroids, again.centroids)


def test_cluster_sums_agree_on_both_paths() -> None:
    from pipeline.supervision.kmeans import _cluster_sums

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 2, 2])
    for one_hot in (False, True):  # index_add_ (CPU) and one-hot matmul (GPU) paths
        sums, counts = _cluster_sums(x, labels, 3, one_hot=one_hot)
        assert sums.tolist() == [[3.0, 4.0], [0.0, 0.0], [13.0, 16.0]]
        assert counts.tolist() == [1.0, 0.0, 3.0]


def test_kmeans_reseeds_empty_clusters() -> None:
    x = torch.tensor([[0.0], [0.0], [0.0], [0.0], [10.0]])  # 2 distinct points, 3 codes
    res = fit_kmeans(x, 3, 10, seed=0, progress=False)
    assert res.inertia == pytest.approx(0.0)
    assert set(res.labels.tolist()) >= {int(res.labels[0]), int(res.labels[4])}
    assert res.labels[0] != res.labels[4]


# ------------------------------------------------------------------------------------------ 1-D levels (vq)
def test_1d_quantiser_recovers_the_levels_of_separated_clusters_exactly() -> None:
    # exactly repeated dyadic values (sums exact in float64), unequal sizes, shuffled
    values = np.repeat([-0.5, 0.25, 0.75], [30, 200, 10])
    x = np.random.default_rng(0).permutation(values)
    res = fit_levels_1d(x, 3)
    # every initial quantile falls in the big cluster: three equal levels, the middle cell is empty (ties go
    # to the lower level) and is re-seeded on the farthest value
    assert res.levels.tolist() == [-0.5, 0.25, 0.75] and res.converged and res.reseeded == 1
    # noisy clusters of unequal sizes: the levels are the cluster means (to float64 rounding)
    rng = np.random.default_rng(1)
    clusters = [c + 0.01 * rng.normal(size=m) for c, m in ((-0.6, 100), (0.1, 500), (0.7, 50))]
    res = fit_levels_1d(rng.permutation(np.concatenate(clusters)), 3)
    assert np.allclose(res.levels, [c.mean() for c in clusters], rtol=0, atol=1e-12)


def test_product_levels_fit_each_sub_vector_and_label_by_the_nearest_level() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, size=(600, 2))
    centres = np.array([[-0.5, 0.0, 0.5], [0.0, 0.25, 1.0]])  # (D, K)
    x = centres[[0, 1], truth] + 0.005 * rng.normal(size=(600, 2))
    res = fit_product_levels(torch.from_numpy(x), 3, progress=False)
    assert res.levels.shape == (2, 3) and res.levels.dtype == torch.float32
    for d in range(2):
        means = [x[truth[:, d] == k, d].mean() for k in range(3)]
        assert np.allclose(res.levels[d].numpy(), means, atol=1e-6)  # float32 storage
    assert torch.equal(res.labels, torch.from_numpy(truth))
    assert torch.equal(res.labels, nearest_level(torch.from_numpy(x), res.levels))
    sq = (x - res.levels.double().numpy()[[0, 1], truth]) ** 2
    assert res.sub_vector_inertia == pytest.approx(sq.sum(0).tolist())
    assert res.inertia == pytest.approx(sq.sum()) and all(res.converged)


def test_1d_lloyd_ends_at_a_fixed_point_as_good_as_kmeans() -> None:
    from sklearn.cluster import KMeans

    x = np.tanh(np.random.default_rng(3).normal(size=3000))
    res = fit_levels_1d(x, 8)
    assert res.converged and np.all(np.diff(res.levels) > 0)
    # a fixed point of Lloyd: every level is the mean of the values nearest to it
    labels = np.abs(x[:, None] - res.levels[None]).argmin(1)
    assert np.allclose([x[labels == k].mean() for k in range(8)], res.levels, atol=1e-12)
    inertia = ((x - res.levels[labels]) ** 2).sum()
    sk = KMeans(8, n_init=5, random_state=0).fit(x[:, None])
    assert inertia <= sk.inertia_ * 1.01


def test_1d_quantiser_with_fewer_distinct_values_than_levels() -> None:
    res = fit_levels_1d(np.array([0.0] * 50 + [1.0] * 50), 4)
    assert set(res.levels.tolist()) == {0.0, 1.0} and res.converged
    # duplicate quantiles (many zeros) are re-seeded on the far values
    res = fit_levels_1d(np.array([0.0] * 90 + [0.5, 1.0] * 5), 3)
    assert res.levels.tolist() == [0.0, 0.5, 1.0] and res.reseeded >= 1
    with pytest.raises(PipelineError, match="at least as many samples as levels: 2 samples < 3 levels"):
        fit_levels_1d(np.array([0.0, 1.0]), 3)


# ------------------------------------------------------------------------------------------ the stage
@pytest.mark.slow
def test_run_correlate_outputs(project: Path, params: CorrelateParams) -> None:
    stats = _run(params, project)
    out = project / "sup"
    assert sorted(p.name for p in out.iterdir()) == [
        "codebook_text.safetensors",
        "stats.json",
        "teacher_text.parquet",
        "topk_text.parquet",
    ]
    teacher = read_parquet(out / "teacher_text.parquet")
    assert teacher.schema.field("vector").type == pa.list_(pa.float32(), 16)
    assert teacher.column("item").to_pylist() == list(range(1, 121))
    meta = parquet_metadata(out / "teacher_text.parquet")
    assert meta["reduction"]["method"] == "pca" and 0 < meta["explained_variance_ratio"] <= 1
    topk = read_parquet(out / "topk_text.parquet")
    assert topk.schema.field("neighbors").type == pa.list_(pa.int32())
    assert topk.schema.field("scores").type == pa.list_(pa.float32())
    # the neighbour lists equal a brute-force top-k of the written teacher vectors
    vec = vectors_from_column(teacher.column("vector"))
    ref_v, ref_i = brute_force_topk(vec, params.topk, params.score)
    assert np.array_equal(np.array(topk.column("neighbors").to_pylist()), ref_i + 1)
    assert np.allclose(np.array(topk.column("scores").to_pylist()), ref_v, atol=1e-5)
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(stats))
    cb = stats["text"]["codebook"]
    assert cb["sample_pairs"] == params.sample_pairs and sum(cb["usage"]) == params.sample_pairs
    assert cb["random_pairs"] == round(params.random_pair_fraction * params.sample_pairs)
    assert stats["text"]["topk"]["top1"]["mean"] > stats["text"]["topk"]["random_pairs"]["mean"]
    # TeacherCorrelation reads what the stage wrote and agrees with it
    module = TeacherCorrelation.from_dir(out, "text", params.score)
    i, j = torch.tensor([1, 5, 7]), torch.tensor([2, 6, 9])
    scores, codes, valid = module(i, j)
    t = torch.from_numpy(vec.copy())
    assert torch.allclose(scores, pair_scores(t[i - 1], t[j - 1], "cos"), atol=1e-6)
    assert codes.max() < params.codes and valid.all()
    assert torch.equal(codes, module(j, i)[1])  # c(i, j) is symmetric


@pytest.mark.slow
def test_outputs_are_deterministic(project: Path, params: CorrelateParams) -> None:
    _run(params, project, out="a")
    _run(params, project, out="b")
    for name in ("teacher_text.parquet", "topk_text.parquet", "codebook_text.safetensors", "stats.json"):
        assert (project / "a" / name).read_bytes() == (project / "b" / name).read_bytes(), name


@pytest.mark.slow
def test_codes_are_spread_on_clustered_data(tmp_path: Path, params: CorrelateParams) -> None:
    (tmp_path / "emb").mkdir()
    write_embeddings(tmp_path / "emb" / "text.parquet", clustered_vectors(400, 32, 10, noise=0.5))
    write_sequences(tmp_path / "sequences.parquet", random_sequences(400, 300))
    p = params.model_copy(update={"sample_pairs": 4000})
    cb = _run(p, tmp_path)["text"]["codebook"]
    assert cb["max_code_share"] <= 0.5
    assert cb["codes_used"] == p.codes


def _teacher(folder: Path) -> np.ndarray:
    return vectors_from_column(read_parquet(folder / "teacher_text.parquet").column("vector"))


def test_rotation_in_the_stage_keeps_holistic_scores_and_balances_sub_vectors(
    project: Path, params: CorrelateParams
) -> None:
    p = params.model_copy(update={"sample_pairs": 500, "codes": 4})
    plain = _run(p, project, out="plain")["text"]
    rot = _run(p.model_copy(update={"rotate": True}), project, out="rot")["text"]
    # the written vectors are the PCA vectors times the seeded rotation
    expected = _teacher(project / "plain").astype(np.float64) @ random_rotation(p.dim, p.seed)
    assert np.allclose(_teacher(project / "rot"), expected, atol=1e-5)
    # holistic (cos) neighbours and scores unchanged
    tk_plain = read_parquet(project / "plain" / "topk_text.parquet")
    tk_rot = read_parquet(project / "rot" / "topk_text.parquet")
    assert np.allclose(
        np.array(tk_rot.column("scores").to_pylist()),
        np.array(tk_plain.column("scores").to_pylist()),
        atol=1e-5,
    )
    same = np.array(tk_rot.column("neighbors").to_pylist()) == np.array(
        tk_plain.column("neighbors").to_pylist()
    )
    assert same.all(1).mean() > 0.95  # only near-tied neighbours may swap places
    for key in ("mean", "std", "p50"):
        assert rot["topk"]["random_pairs"][key] == pytest.approx(plain["topk"]["random_pairs"][key], abs=1e-5)
        assert rot["reduction"]["random_pair_cosine"][key] == pytest.approx(
            plain["reduction"]["random_pair_cosine"][key], abs=1e-5
        )
    # the variance shares: PCA's are ordered and unbalanced, the rotated ones much less so
    shares = rot["reduction"]["sub_vector_variance_share"]
    assert "rotated" not in plain["reduction"]["sub_vector_variance_share"]
    assert shares["reduced"] == plain["reduction"]["sub_vector_variance_share"]["reduced"]
    assert shares["reduced"]["shares"] == sorted(shares["reduced"]["shares"], reverse=True)
    assert shares["rotated"]["max_min_ratio"] < shares["reduced"]["max_min_ratio"] / 5
    assert rot["reduction"]["rotate"] is True and rot["reduction"]["rotation"]["seed"] == p.seed
    # recorded with the codebook too, with the code usage
    cb = rot["codebook"]
    assert cb["sub_vector_variance_share"] == shares["rotated"]["shares"]
    assert 1.0 <= cb["effective_codes"] <= cb["codes_used"] <= p.codes and 0 < cb["inertia_ratio"] < 1
    assert len(cb["sub_vector_cosine"]["mean"]) == p.sub_vectors
    assert len(cb["sub_vector_cosine"]["co_occurring_minus_random"]) == p.sub_vectors
    meta = CorrelationCodebook.load(project / "rot" / "codebook_text.safetensors").metadata
    assert meta["rotate"] is True and meta["reduction"] == "pca"
    assert meta["codes_used"] == cb["codes_used"] and meta["max_code_share"] == cb["max_code_share"]
    assert meta["sub_vector_variance_share"] == shares["rotated"]["shares"]
    assert parquet_metadata(project / "rot" / "teacher_text.parquet")["rotate"] is True


def test_sigmoid_ae_stage_writes_codes_in_0_1(project: Path, params: CorrelateParams) -> None:
    p = params.model_copy(
        update={"reduction": "sigmoid_ae", "ae_epochs": 30, "sample_pairs": 500, "codes": 4}
    )
    stats = _run(p, project)["text"]
    codes = _teacher(project / "sup")
    assert codes.shape == (120, 16) and codes.min() > 0.0 and codes.max() < 1.0
    red = stats["reduction"]
    assert red["method"] == "sigmoid_ae" and red["max_epochs"] == 30 and red["holdout_items"] == 12
    assert red["random_pair_cosine"]["min"] > 0.0  # all-positive codes: every cosine is positive
    assert parquet_metadata(project / "sup" / "teacher_text.parquet")["reduction"]["method"] == "sigmoid_ae"
    # rotated: no longer in (0, 1), same holistic cosines
    _run(p.model_copy(update={"rotate": True}), project, out="rot")
    assert _teacher(project / "rot").min() < 0.0
    assert np.allclose(
        _teacher(project / "rot"), codes.astype(np.float64) @ random_rotation(16, p.seed), atol=1e-5
    )


def test_reduction_params() -> None:
    assert CorrelateParams().reduction == "pca" and CorrelateParams().rotate is False
    assert CorrelateParams().ae_epochs is None and AE_DEFAULT_EPOCHS == {"autoencoder": 20, "sigmoid_ae": 200}
    assert CorrelateParams(reduction="sigmoid_ae", rotate=True, ae_epochs=50).ae_epochs == 50
    with pytest.raises(ValueError, match="reduction"):
        CorrelateParams(reduction="ica")
    with pytest.raises(ValueError, match="ae_epochs"):
        CorrelateParams(ae_epochs=0)


def test_missing_items_are_excluded_under_policy_exclude(tmp_path: Path, params: CorrelateParams) -> None:
    (tmp_path / "emb").mkdir()
    missing = np.zeros(60, dtype=bool)
    missing[[0, 9]] = True  # items 1 and 10
    write_embeddings(tmp_path / "emb" / "text.parquet", clustered_vectors(60, 16, 4), missing, "exclude")
    write_sequences(tmp_path / "sequences.parquet", random_sequences(60, 40))
    p = params.model_copy(update={"sample_pairs": 500, "codes": 4})
    stats = _run(p, tmp_path)
    assert stats["text"]["excluded_items"] == 2
    topk = read_parquet(tmp_path / "sup" / "topk_text.parquet").column("neighbors").to_pylist()
    assert topk[0] == [] and topk[9] == []
    assert not any(n in (1, 10) for row in topk for n in row)
    teacher = vectors_from_column(read_parquet(tmp_path / "sup" / "teacher_text.parquet").column("vector"))
    assert np.abs(teacher[[0, 9]]).sum() == 0.0
    module = TeacherCorrelation.from_dir(tmp_path / "sup", "text", "cos")
    assert module(torch.tensor([1, 2]), torch.tensor([3, 10]))[2].tolist() == [False, False]


def test_empty_modalities_write_an_empty_folder(tmp_path: Path, params: CorrelateParams) -> None:
    stats = run_correlate(
        params, [], NO_MLFLOW, tmp_path / "nothing", tmp_path / "none.parquet", tmp_path / "s"
    )
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["stats.json"]
    assert stats["modalities"] == [] and "empty" in stats["note"]


def test_failed_run_keeps_the_previous_output(project: Path, params: CorrelateParams) -> None:
    p = params.model_copy(update={"sample_pairs": 300, "codes": 4})
    _run(p, project)
    before = {f.name: f.read_bytes() for f in (project / "sup").iterdir()}
    with pytest.raises(DataError, match=r"image.parquet: no image embeddings"):
        _run(p, project, ["text", "image"])
    assert {f.name: f.read_bytes() for f in (project / "sup").iterdir()} == before
    assert sorted(f.name for f in project.iterdir()) == ["emb", "sequences.parquet", "sup"]  # no temp dirs


def test_dim_larger_than_teacher_fails_clearly(project: Path, params: CorrelateParams) -> None:
    with pytest.raises(
        PipelineError, match=r"correlate.dim \(32\) is larger than the teacher dimension \(24\)"
    ):
        _run(params.model_copy(update={"dim": 32}), project)


def test_sequence_items_beyond_the_catalogue_fail(project: Path, params: CorrelateParams) -> None:
    write_sequences(project / "sequences.parquet", [[1, 2, 3, 500]])
    with pytest.raises(DataError, match=r"sequences.parquet: item id 500 is beyond the 120 items"):
        _run(params, project)


def test_sub_vectors_match_codebook_dimension(project: Path, params: CorrelateParams) -> None:
    p = params.model_copy(update={"sample_pairs": 300, "codes": 4})
    _run(p, project)
    module = TeacherCorrelation.from_dir(project / "sup", "text", "cos")
    assert module.sub_vectors == p.sub_vectors
    a, b = module.teacher[torch.tensor([3])], module.teacher[torch.tensor([4])]
    assert sub_vector_scores(a, b, p.sub_vectors).shape == (1, p.sub_vectors)


def test_stage_entry_point_reads_declared_params_only(in_tmp_project: Path, base_params: Params) -> None:
    from stages.correlate import run

    if not base_params.train.modalities:
        run()
        assert [p.name for p in (in_tmp_project / "data" / "supervision").iterdir()] == ["stats.json"]
        return
    # the real params.yaml lists modalities; with no embeddings here the stage fails clearly, after having
    # read every params key it needs through its ParamsView (an undeclared read would raise first)
    with pytest.raises(DataError, match=r"data/embeddings/\w+\.parquet: no \w+ embeddings"):
        run()
    assert not (in_tmp_project / "data" / "supervision").exists()
    assert list((in_tmp_project / "data").iterdir()) == []  # the temporary folder is gone


KMEANS_CODEBOOK_META = [
    "co_occurring_pairs",
    "codes",
    "codes_used",
    "dim",
    "effective_codes",
    "inertia",
    "kmeans_iters",
    "max_code_share",
    "modality",
    "reduction",
    "rotate",
    "sample_pairs",
    "seed",
    "sub_vector_variance_share",
    "sub_vectors",
]


def test_kmeans_codebook_file_format_is_unchanged(project: Path, params: CorrelateParams) -> None:
    from safetensors import safe_open

    p = params.model_copy(update={"sample_pairs": 500, "codes": 4})
    assert p.quantizer == "kmeans"  # the default
    stats = _run(p, project)["text"]["codebook"]
    path = project / "sup" / "codebook_text.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["centroids"] and list(f.metadata()) == ["codebook"]
        assert f.get_tensor("centroids").shape == (4, p.sub_vectors)
        assert sorted(json.loads(f.metadata()["codebook"])) == KMEANS_CODEBOOK_META  # no quantizer entry
    assert "quantizer" not in stats and isinstance(stats["usage"][0], int)
    assert isinstance(load_codebook(path), CorrelationCodebook)
    assert TeacherCorrelation.from_dir(project / "sup", "text")(torch.tensor([1]), torch.tensor([2]))[
        1
    ].shape == (1,)


def test_vq_stage_writes_levels_and_the_teacher_reads_d_tuples(
    project: Path, params: CorrelateParams
) -> None:
    p = params.model_copy(update={"sample_pairs": 800, "codes": 5, "quantizer": "vq"})
    stats = _run(p, project)["text"]["codebook"]
    out = project / "sup"
    book = load_codebook(out / "codebook_text.safetensors")
    assert isinstance(book, ProductCodebook) and book.levels.shape == (p.sub_vectors, 5)
    assert book.metadata["quantizer"] == "vq" and "kmeans_iters" not in book.metadata
    assert bool((book.levels.diff(dim=1) >= 0).all())  # ascending per sub-vector
    assert stats["quantizer"] == "vq" and stats["converged"] is True
    usage = np.array(stats["usage"])
    assert usage.shape == (p.sub_vectors, 5) and (usage.sum(1) == p.sample_pairs).all()
    assert stats["codes_used"] == min(stats["codes_used_per_sub_vector"]) == 5
    assert stats["max_code_share"] == max(stats["max_code_share_per_sub_vector"]) <= 0.5
    assert 0 < stats["inertia_ratio"] < 1 and len(stats["sub_vector_inertia_ratio"]) == p.sub_vectors
    # the teacher's codes of some pairs are the nearest levels of their sub-vector cosines, a D-tuple
    vec = torch.from_numpy(_teacher(out).copy())
    module = TeacherCorrelation.from_dir(out, "text", p.score)
    i, j = torch.tensor([1, 5, 7, 40]), torch.tensor([2, 6, 9, 3])
    _, codes, valid = module(i, j)
    expected = nearest_level(sub_vector_scores(vec[i - 1], vec[j - 1], p.sub_vectors), book.levels)
    assert codes.shape == (4, p.sub_vectors) and torch.equal(codes, expected) and valid.all()
    assert torch.equal(codes, module(j, i)[1])
    assert module.code_groups == p.sub_vectors and module.codes == 5
    # deterministic: a second run writes the same bytes
    _run(p, project, out="again")
    assert (out / "codebook_text.safetensors").read_bytes() == (
        project / "again" / "codebook_text.safetensors"
    ).read_bytes()
