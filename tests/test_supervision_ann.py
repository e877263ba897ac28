"""correlate.neighbours: faiss ivf/hnsw neighbours, their recall against exact, and when auto uses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_sequences
from test_supervision_correlate import (
    NO_MLFLOW,
    brute_force_topk,
    clustered_vectors,
    random_sequences,
    write_embeddings,
)

from pipeline.config import CorrelateParams, MLflowParams, Params, with_overrides
from pipeline.config.base import ConfigError
from pipeline.config.inputs import AnnParams
from pipeline.io import parquet_metadata, read_parquet
from pipeline.supervision.ann import (
    default_nlist,
    drop_self,
    exact_search,
    faiss_topk,
    ivf_search,
    probed_cells,
    resolve_method,
    sample_recall,
    sample_rows,
    search_vectors,
    train_cells,
)
from pipeline.supervision.correlate import run_correlate
from pipeline.supervision.nprobe import cells_recall
from pipeline.supervision.topk import blocked_topk


def _params(**update) -> CorrelateParams:
    return CorrelateParams(dim=16, sub_vectors=8, topk=10, device="cpu").model_copy(update=update)


def _recall(indices: np.ndarray, ref_v: np.ndarray, v: np.ndarray, score: str) -> float:
    """Recall@k of ``indices`` against the float64 brute force, ties at the k-th score counted as found."""
    x = v.astype(np.float64)
    if score == "cos":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = np.einsum("rkd,rd->rk", x[indices], x)
    return float((got >= ref_v[:, -1:] - 1e-6).mean())


# ------------------------------------------------------------------------------------------ exact
@pytest.mark.parametrize("score", ["cos", "dot"])
def test_faiss_exact_search_equals_the_blocked_exact_topk(score: str) -> None:
    v = np.random.default_rng(3).normal(size=(400, 16)).astype(np.float32)
    ref_v, ref_i = blocked_topk(torch.from_numpy(v), 10, score, block_size=64, tile_elements=64 * 80)
    values, labels = exact_search(search_vectors(v, score), np.arange(400), 10)
    assert np.array_equal(labels, ref_i.numpy())
    assert np.allclose(values, ref_v.numpy(), atol=1e-5)


def test_drop_self_by_hand() -> None:
    # row 0 finds itself first; row 1 does not find itself; row 2 has a missing result (-1)
    scores = np.array([[1.0, 0.9, 0.5], [0.8, 0.7, 0.6], [1.0, 0.4, -np.inf]], dtype=np.float32)
    labels = np.array([[0, 5, 6], [3, 4, 9], [7, 4, -1]])
    rows = np.array([0, 1, 2])
    values, chosen, complete = drop_self(scores, labels, rows, 2)
    assert chosen.tolist() == [[5, 6], [3, 4], [7, 4]]
    assert np.allclose(values, [[0.9, 0.5], [0.8, 0.7], [1.0, 0.4]])
    assert complete.tolist() == [True, True, True]
    # equal scores: the lower label first; self dropped although it is not first
    tied, _, _ = drop_self(np.array([[0.5, 0.5, 0.5]]), np.array([[8, 3, 1]]), np.array([3]), 2)
    chosen = drop_self(np.array([[0.5, 0.5, 0.5]]), np.array([[8, 3, 1]]), np.array([3]), 2)[1]
    assert chosen.tolist() == [[1, 8]] and tied.tolist() == [[0.5, 0.5]]
    # a row left with fewer than k results is reported incomplete
    _, _, complete = drop_self(np.array([[1.0, 0.3, 0.0]]), np.array([[4, 2, -1]]), np.array([4]), 2)
    assert complete.tolist() == [False]


# ------------------------------------------------------------------------------------------ approximate
@pytest.mark.parametrize("method", ["ivf", "hnsw"])
@pytest.mark.parametrize("score", ["cos", "dot"])
def test_approximate_neighbours_reach_the_recall_target_on_clustered_data(method: str, score: str) -> None:
    v = clustered_vectors(3000, 32, 30, seed=1, noise=0.25)
    if score == "dot":
        v = v * np.random.default_rng(2).uniform(0.5, 2.0, size=(3000, 1)).astype(np.float32)
    p = _params(neighbours=method, score=score)
    values, indices, info = faiss_topk(v, p, method, np.zeros(3000, bool), progress=False)
    ref_v, _ = brute_force_topk(v, 10, score)
    assert values.shape == (3000, 10) and indices.dtype == torch.int64
    assert not (indices == torch.arange(3000)[:, None]).any()  # never your own neighbour
    assert _recall(indices.numpy(), ref_v, v, score) >= 0.95
    # the figure written to stats.json agrees with the one measured here on every item
    assert info["method"] == method and info["recall"]["sample"] == 1000
    assert info["recall"]["recall_at_k"] >= 0.95
    assert abs(info["recall"]["recall_at_k"] - _recall(indices.numpy(), ref_v, v, score)) < 0.02
    # each row is ordered by score, and the scores are the items' true scores
    assert (values[:, :-1] >= values[:, 1:]).all()
    x = search_vectors(v, score)
    assert np.allclose(np.einsum("rkd,rd->rk", x[indices.numpy()], x), values.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("chunk", "nlist", "tile"),
    [(65_536, 32, 1 << 22), (300, 32, 1 << 22), (65_536, 4, 1 << 22), (700, 4, 2_000)],
)
def test_ivf_finds_each_rows_best_among_the_members_of_its_probed_cells(
    monkeypatch, chunk: int, nlist: int, tile: int
) -> None:
    # the known answer: a brute force restricted to the items of each row's nprobe nearest cells (its own
    # cell first), whether the rows are scanned in one chunk of queries or in several (a chunk then cuts
    # cells), and whether a cell's queries fit one score tile or not (tile 2,000: a few rows of a ~500-item
    # cell at a time)
    monkeypatch.setattr("pipeline.supervision.cellscan.MIN_CHUNK", chunk)
    monkeypatch.setattr("pipeline.supervision.cellscan.CHUNK_PAIRS", chunk)
    monkeypatch.setattr("pipeline.supervision.cellscan.TILE_ELEMENTS", tile)
    x = search_vectors(clustered_vectors(2000, 16, 12, seed=8), "cos")
    ann = AnnParams(nlist=nlist, nprobe=3, target_recall=None)
    values, labels, complete, info = ivf_search(x, ann, 5, seed=0)
    quantizer, _ = train_cells(x, ann, 0)
    probes = probed_cells(quantizer, x, 3)
    cell = probes[:, 0]
    for r in range(0, 2000, 7):
        members = np.flatnonzero(np.isin(cell, probes[r]) & (np.arange(2000) != r))
        s = x[members] @ x[r]
        best = members[np.lexsort((members, -s))[:5]]
        assert labels[r].tolist() == best.tolist(), r
        assert np.allclose(values[r], np.sort(s)[::-1][:5], atol=1e-6)
    assert complete.all() and info["nlist"] == nlist and info["nprobe"] == 3
    assert info["list_imbalance"] >= 1.0


def test_sample_recall_known_answers() -> None:
    x = search_vectors(clustered_vectors(500, 16, 5, seed=4), "cos")
    _, exact = exact_search(x, np.arange(500), 4)
    assert sample_recall(x, exact, 4, 200, seed=0) == {
        "recall_at_k": 1.0,
        "min_row_recall": 1.0,
        "sample": 200,
    }
    # half of each row replaced by the item's least similar one: recall exactly 0.5
    worst = np.argmin(x @ x.T, axis=1)
    half = exact.copy()
    half[:, 2:] = worst[:, None]
    assert sample_recall(x, half, 4, 500, seed=0)["recall_at_k"] == 0.5


def test_self_and_excluded_items_never_appear_even_among_duplicates() -> None:
    v = clustered_vectors(600, 16, 4, seed=5)
    v[100:140] = v[100]  # 40 identical vectors: each must list the others, not itself
    excluded = np.zeros(600, bool)
    excluded[[101, 300, 301]] = True
    for method in ("ivf", "hnsw"):
        _, idx, _ = faiss_topk(v, _params(topk=12), method, excluded, progress=False)
        idx = idx.numpy()
        keep = np.flatnonzero(~excluded)
        assert not (idx[keep] == keep[:, None]).any()
        assert not np.isin(idx[keep], [101, 300, 301]).any()
        dup = [r for r in range(100, 140) if r != 101]
        for r in dup:
            assert set(idx[r]) <= set(dup) - {r}, method


def test_rows_with_too_few_results_are_searched_exactly() -> None:
    # 128 cells of ~4 items, one probed, 20 neighbours wanted: no item gets 21 results from the index, so
    # every row is searched exactly and the answer is the brute-force one
    v = clustered_vectors(512, 16, 8, seed=6)
    ann = _params().ann.model_copy(update={"nlist": 128, "nprobe": 1, "target_recall": None})
    p = _params(topk=20).model_copy(update={"ann": ann})
    values, idx, info = faiss_topk(v, p, "ivf", np.zeros(512, bool), progress=False)
    assert info["exact_fallback_items"] == 512 and info["index"]["nlist"] == 128
    ref_v, ref_i = brute_force_topk(v, 20, "cos")
    assert (idx.numpy() == ref_i).all(1).mean() > 0.99 and np.allclose(values.numpy(), ref_v, atol=1e-5)
    assert info["recall"]["recall_at_k"] == 1.0


def test_a_low_sampled_recall_is_a_warning_naming_the_parameter_to_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # i.i.d. Gaussian rows have no local structure: one probed cell of 64 misses most true neighbours
    v = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float32)
    for nprobe, warned in ((1, True), (64, False)):  # every cell probed: the exact answer
        ann = _params().ann.model_copy(update={"nlist": 64, "nprobe": nprobe, "target_recall": None})
        caplog.clear()
        _, _, info = faiss_topk(v, _params().model_copy(update={"ann": ann}), "ivf", np.zeros(3000, bool))
        assert (info["recall"]["recall_at_k"] < 0.9) is warned
        assert ("raise correlate.ann.nprobe" in caplog.text) is warned


def test_the_tuning_recall_is_the_recall_the_scan_reaches() -> None:
    # the known answer: the recall that a scan at nprobe p reaches on the tuning rows, measured on its results
    x = search_vectors(np.random.default_rng(4).normal(size=(3000, 16)).astype(np.float32), "cos")
    k, rows = 10, sample_rows(3000, 300, seed=1)
    kth = exact_search(x, rows, k)[0][:, -1]
    quantizer, _ = train_cells(x, AnnParams(nlist=64), 0)
    own = probed_cells(quantizer, x, 1)[:, 0]
    order = np.argsort(own, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(own, minlength=64))])
    curve = cells_recall(x, quantizer.search(x[rows], 16)[1], order, starts, rows, kth, k).mean(
        0
    )  # nprobe 1..16
    assert len(curve) == 16 and (np.diff(curve) >= 0).all()
    for p in (1, 4, 9, 16):
        _, labels, _, _ = ivf_search(x, AnnParams(nlist=64, nprobe=p, target_recall=None), k, seed=0)
        found = np.einsum("rkd,rd->rk", x[labels[rows]], x[rows]) >= (kth - 1e-5)[:, None]
        assert curve[p - 1] == pytest.approx(found.mean(), abs=1e-9), p
    assert curve[0] < curve[3] < curve[8] < curve[15] < 1.0  # a real range of recalls, not 1.0 throughout


def test_target_recall_raises_nprobe_until_the_tuning_sample_reaches_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float32)
    # the refinement off: the ladder alone (tests/test_supervision_refine.py has the two together)
    update = {"nlist": 64, "nprobe": 1, "target_recall": 0.95, "refine_rounds": 0}
    ann = _params().ann.model_copy(update=update)
    _, _, info = faiss_topk(v, _params().model_copy(update={"ann": ann}), "ivf", np.zeros(3000, bool))
    tuning = {int(p): r for p, r in info["index"]["nprobe_tuning"].items()}
    chosen = info["index"]["nprobe"]
    # the doublings up to the first that reaches the target, and the least nprobe that does (between them)
    doublings = [p for p in (1, 2, 4, 8, 16, 32, 64) if p < 2 * chosen]
    assert list(tuning) == sorted({*doublings, chosen}) and doublings[-2] < chosen <= doublings[-1]
    assert tuning[chosen] >= 0.95 and all(r < 0.95 for p, r in tuning.items() if p < chosen) and chosen > 1
    assert info["recall"]["recall_at_k"] >= 0.93  # measured on another sample of items
    # not reachable within max_nprobe: the limit is used, and the warning names it
    ann = ann.model_copy(update={"max_nprobe": 2})
    caplog.clear()
    _, _, info = faiss_topk(v, _params().model_copy(update={"ann": ann}), "ivf", np.zeros(3000, bool))
    assert info["index"]["nprobe"] == 2 and list(info["index"]["nprobe_tuning"]) == ["1", "2"]
    assert "raise correlate.ann.max_nprobe" in caplog.text


# ------------------------------------------------------------------------------------------ choosing
def test_auto_is_exact_at_benchmark_scale_and_ivf_above_the_threshold() -> None:
    p = CorrelateParams()  # the shipped defaults
    assert p.neighbours == "auto"
    assert resolve_method(p, 12_101) == "exact"  # Beauty
    assert resolve_method(p, 20_000) == "exact"  # Scientific and kin
    assert resolve_method(p, p.exact_max_items + 1) == "ivf"
    assert resolve_method(p.model_copy(update={"score": "euclidean"}), 10**6) == "exact"
    assert resolve_method(p.model_copy(update={"neighbours": "hnsw"}), 10) == "hnsw"


def test_default_nlist() -> None:
    assert default_nlist(1_000_000, 8) == 2048  # sqrt(8e6) = 2828 -> 2^11
    assert default_nlist(100_000, 8) == 1024  # 894 -> 2^10
    assert default_nlist(100, 8) == 2  # capped at items / 39
    assert default_nlist(10, 8) == 1


def test_ivf_or_hnsw_with_a_score_faiss_cannot_search_is_refused(base_params: Params) -> None:
    with pytest.raises(
        ConfigError, match=r"correlate.*neighbours ivf .* needs score cos or dot, not euclidean"
    ):
        with_overrides(base_params, {"correlate.neighbours": "ivf", "correlate.score": "euclidean"})
    with pytest.raises(ConfigError, match=r"correlate\.ann\.nprobe"):
        with_overrides(base_params, {"correlate.ann.nprobe": 0})


# ------------------------------------------------------------------------------------------ the stage
def _project(tmp_path: Path) -> Path:
    (tmp_path / "emb").mkdir()
    write_embeddings(tmp_path / "emb" / "text.parquet", clustered_vectors(800, 24, 8, seed=7))
    write_sequences(tmp_path / "sequences.parquet", random_sequences(800, 300))
    return tmp_path


def _stage(tmp_path: Path, p: CorrelateParams, mlflow: MLflowParams = NO_MLFLOW) -> dict:
    return run_correlate(
        p, ["text"], mlflow, tmp_path / "emb", tmp_path / "sequences.parquet", tmp_path / "sup"
    )


def test_stage_writes_the_recall_of_an_approximate_search_to_stats_json(tmp_path: Path) -> None:
    root = _project(tmp_path)
    p = _params(neighbours="ivf", sample_pairs=500, codes=4, dim=16)
    stats = _stage(root, p)
    written = json.loads((root / "sup" / "stats.json").read_text())
    search = written["text"]["topk"]["search"]
    assert search == stats["text"]["topk"]["search"]
    assert search["method"] == "ivf" and search["recall"]["sample"] == 800  # fewer items than the sample
    assert search["recall"]["recall_at_k"] >= 0.95
    assert parquet_metadata(root / "sup" / "topk_text.parquet")["method"] == "ivf"
    neighbours = read_parquet(root / "sup" / "topk_text.parquet").column("neighbors").to_pylist()
    assert all(len(row) == 10 and i + 1 not in row for i, row in enumerate(neighbours))


def test_stage_below_the_threshold_is_exact_and_records_no_recall(tmp_path: Path) -> None:
    root = _project(tmp_path)
    stats = _stage(root, _params(sample_pairs=500, codes=4))  # auto, 800 items
    assert stats["text"]["topk"]["search"] == {"method": "exact"}
    assert parquet_metadata(root / "sup" / "topk_text.parquet")["method"] == "exact"


@pytest.mark.slow
def test_stage_logs_the_recall_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    root = _project(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", uri
    )  # the environment wins over params: pin it to this test's store
    mp = MLflowParams(enabled=True, tracking_uri=uri, experiment="t", register_as=None)
    stats = _stage(root, _params(neighbours="hnsw", sample_pairs=500, codes=4), mp)
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0]
    recall = stats["text"]["topk"]["search"]["recall"]["recall_at_k"]
    assert run.data.metrics["text.topk.search.recall.recall_at_k"] == pytest.approx(recall)
    assert run.data.metrics["text.topk.search.index.m"] == 32
