"""Recommendations: the recommend stage, the one-history CLI, the MLflow pyfunc model, plain logs off a terminal."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_items, write_sequences, write_tiny_recommender

from pipeline.artifacts import read_sequences
from pipeline.config import PROJECT_ROOT, MLflowParams, RecommendParams
from pipeline.evaluation.cases import build_eval_cases, history_windows
from pipeline.evaluation.metrics import evaluate_scorer
from pipeline.io import read_parquet
from pipeline.models import load_student
from pipeline.recommend.recommend import run_recommend
from pipeline.recommend.topk import ItemCatalogue, Recommender, UnknownItemsError, top_k

torch.set_num_threads(1)


class IdScorer:
    """Fake student whose score of item i is i: the best items are the largest ids not masked."""

    def __init__(self, num_items: int, max_len: int) -> None:
        self.num_items, self.max_len = num_items, max_len

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[1] == self.max_len
        return torch.arange(self.num_items + 1, dtype=torch.float32).expand(inputs.shape[0], -1).clone()


def rows_by_user(path: Path) -> dict[int, list[tuple[int, int, str, float]]]:
    out: dict[int, list[tuple[int, int, str, float]]] = {}
    for r in read_parquet(path).to_pylist():
        out.setdefault(r["user"], []).append((r["rank"], r["item"], r["item_id"], r["score"]))
    return out


# --------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("mask", [True, False])
def test_history_masking_known_answers(tmp_path: Path, mask: bool) -> None:
    seq, items = tmp_path / "sequences.parquet", tmp_path / "items.parquet"
    # N = 8 items, input window 4; u2 is longer than the window (items 1, 2 outside it), u3's 8 too
    write_sequences(seq, [[8, 2, 7], [1, 2, 3, 4, 5, 6], [8, 1, 2, 3, 4]])
    write_items(items, 8)
    rec = Recommender(IdScorer(8, 4), ItemCatalogue.from_parquet(items), "cpu")
    out = tmp_path / "rec.parquet"
    summary = run_recommend(RecommendParams(k=3, mask_history=mask, batch_size=2), seq, items,
                            model_dir=tmp_path / "models", out_path=out,  # the model is given: not read
                            recommender=rec, progress=False)  # fmt: skip
    got = {u: [item for _, item, _, _ in rows] for u, rows in rows_by_user(out).items()}
    if mask:
        # history never recommended, also beyond the input window; u2 has only 7 and 8 left
        assert got == {1: [6, 5, 4], 2: [8, 7], 3: [7, 6, 5]}
        assert summary == {"users": 3, "rows": 8, "k": 3, "mask_history": True, "index": "exact"}
    else:
        assert got == {1: [8, 7, 6], 2: [8, 7, 6], 3: [8, 7, 6]}
    table = read_parquet(out)
    assert table.column_names == ["user", "user_id", "rank", "item", "item_id", "score"]
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {
        "user": 1,
        "user_id": "u0",
        "rank": 1,
        "item": 6 if mask else 8,
        "item_id": "B000000006" if mask else "B000000008",
        "score": 6.0 if mask else 8.0,
    }
    # the one-history path gives the same lists, by original ids
    expected = [6, 5, 4] if mask else [8, 7, 6]
    assert rec.recommend([["B000000008", "B000000002", "B000000007"]], k=3, mask_history=mask) == [
        ([f"B{i:09d}" for i in expected], [float(i) for i in expected])
    ]


def test_unknown_ids_are_named(tmp_path: Path) -> None:
    write_items(tmp_path / "items.parquet", 8)
    rec = Recommender(IdScorer(8, 4), ItemCatalogue.from_parquet(tmp_path / "items.parquet"), "cpu")
    with pytest.raises(
        UnknownItemsError, match=r"unknown item id\(s\): NOPE1, NOPE2; the model's catalogue has 8"
    ):
        rec.recommend([["B000000001", "NOPE1"], ["NOPE2", "NOPE1"]], k=3)


def test_model_and_item_map_must_match(tmp_path: Path) -> None:
    write_items(tmp_path / "items.parquet", 8)
    with pytest.raises(Exception, match="the model scores 9 items but the item map has 8"):
        Recommender(IdScorer(9, 4), ItemCatalogue.from_parquet(tmp_path / "items.parquet"), "cpu")


# --------------------------------------------------------------------------------------------- real student
@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, list[list[int]]]:
    return tmp_path, write_tiny_recommender(tmp_path)


def test_recommend_stage_equals_the_evaluators_ranking(project) -> None:
    root, seqs = project
    out = root / "data" / "recommendations.parquet"
    run_recommend(
        RecommendParams(k=5, batch_size=7),  # 23 users: 4 batches, the last one short
        root / "data/processed/sequences.parquet",
        root / "data/processed/items.parquet",
        root / "models",
        out,
        device="cpu",
        progress=False,
    )
    rows = read_parquet(out).to_pylist()
    assert len(rows) == 5 * len(seqs)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] * len(seqs)
    assert all(r["item_id"] == f"B{r['item']:09d}" and r["user_id"] == f"u{r['user'] - 1}" for r in rows)
    assert not any(r["item"] in seqs[r["user"] - 1] for r in rows)  # history masked

    # the evaluator, case by case: each recommended item as the test target after the user's whole history
    model = load_student(root / "models")
    full = read_sequences(root / "data/processed/sequences.parquet")
    items = [np.append(full.items_of(r["user"] - 1), r["item"]) for r in rows]
    ends = [len(s) - 1 for s in items]
    cases = build_eval_cases(items, ends, ends, "test", model.max_len)
    _, ranks = evaluate_scorer(model.user_scores, cases, [5], mask_history=True, batch_size=16)
    assert ranks.tolist() == [r["rank"] - 1 for r in rows]
    with torch.inference_mode():
        scores = model.user_scores(cases.inputs)[torch.arange(len(rows)), cases.targets]
    np.testing.assert_allclose([r["score"] for r in rows], scores.numpy(), rtol=1e-5)


def test_a_served_model_computes_its_item_table_once(project, monkeypatch: pytest.MonkeyPatch) -> None:
    root, seqs = project
    rec = Recommender.load(root / "models", root / "data/processed/items.parquet", "cpu")
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs[:3]])
    offsets = np.cumsum([0] + [len(s) for s in seqs[:3]])
    calls = []
    original = rec.model.item_representations
    monkeypatch.setattr(rec.model, "item_representations", lambda: calls.append(1) or original())
    items, scores = rec.top_k_csr(flat, offsets, 4, mask_history=True)
    rec.top_k_csr(flat, offsets, 4, mask_history=True)
    assert calls == []  # computed when the recommender was built, not per call
    # the same answer as scoring with the table recomputed
    with torch.inference_mode():
        inputs, indptr, hist = history_windows(flat, offsets[:-1], np.diff(offsets), rec.model.max_len)
        ref_items, ref_scores = top_k(rec.model.user_scores(inputs), 4, indptr, hist)
    assert calls == [1] and np.array_equal(items, ref_items.numpy())
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=1e-6)


def test_cli_prints_the_top_k_with_text(project, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import stages.recommend as stage

    root, seqs = project
    monkeypatch.chdir(root)
    history = [f"B{i:09d}" for i in seqs[0]]
    stage.run(["--items", *history, "--k", "3"])
    printed = capsys.readouterr().out.splitlines()
    # known answer: brute force over the model's scores of this history's window, history left out
    model = load_student(root / "models")
    window = torch.tensor([([0] * model.max_len + seqs[0])[-model.max_len :]])
    with torch.no_grad():
        s = model.user_scores(window)[0]
    s[0] = -torch.inf
    s[seqs[0]] = -torch.inf
    best = torch.argsort(s, descending=True)[:3].tolist()
    assert printed[0] == f"top 3 for a history of {len(history)} item(s) (history masked):"
    assert [line.split()[1] for line in printed[2:]] == [f"B{i:09d}" for i in best]
    assert printed[2].split()[0] == "1" and f"thing {best[0]} | brand{best[0] % 3}" in printed[2]


# --------------------------------------------------------------------------------------------- processes
def stage_project(root: Path) -> Path:
    """A folder where ``python -m stages.recommend`` runs on ``root``'s data (stages chdir to their parent)."""
    shutil.copytree(PROJECT_ROOT / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDSR_MLFLOW": "0", "OMP_NUM_THREADS": "1", "KDSR_PROGRESS_INTERVAL": "0"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # this checkout's pipeline, not the one the venv was installed from
    env.pop("KDSR_PROGRESS", None)
    with open(root / "stderr.log", "w") as err:  # stderr is a file, not a terminal
        proc = subprocess.run(
            [sys.executable, "-m", "stages.recommend", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=300,
        )
    proc.stderr = (root / "stderr.log").read_text()
    return proc


def test_stage_log_off_a_terminal_has_plain_lines(project) -> None:
    root, seqs = project
    proc = run_stage(stage_project(root))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "INFO pipeline.progress: recommend: 100% 1/1 [" in proc.stderr
    assert f"wrote {10 * len(seqs)} recommendations for {len(seqs)} users" in proc.stderr
    assert read_parquet(root / "data/recommendations.parquet").num_rows == 10 * len(seqs)  # params.yaml k=10


def test_cli_unknown_ids_exit_2_naming_them(project) -> None:
    root, _ = project
    proc = run_stage(stage_project(root), "--items", "NOPE1", "B000000001", "NOPE2")
    assert proc.returncode == 2
    assert "error: unknown item id(s): NOPE1, NOPE2; the model's catalogue has 30 items" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------- progress
def test_log_progress_every_tenth_and_at_the_end(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from pipeline.progress import LogProgress, progress_bar

    monkeypatch.delenv("KDSR_PROGRESS", raising=False)
    caplog.set_level("INFO", logger="pipeline.progress")
    bar = progress_bar(range(20), desc="epoch 1/2", unit="batch", mininterval=0, interval_s=3600)
    assert isinstance(bar, LogProgress)  # pytest's stderr is not a terminal
    for _ in bar:
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[2] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[-1].startswith("epoch 1/2: 100% 20/20 [") and "batch/s" in lines[-1]
    assert not any("\r" in line or "|" in line for line in lines)
    caplog.clear()
    with progress_bar(
        total=None, desc="lines", mininterval=0, interval_s=3600
    ) as b:  # no total: the end only
        b.update(7)
    assert [r.getMessage().split(" [")[0] for r in caplog.records] == ["lines: 7"]


# --------------------------------------------------------------------------------------------- MLflow
@pytest.mark.slow
def test_pyfunc_round_trip_through_the_registry(project, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    import pandas as pd

    from pipeline.io import file_digest
    from pipeline.recommend.register import log_recommender

    root, seqs = project
    # the lineage and results the trainer records in config.json
    from pipeline.lineage import model_inputs

    cfg_path = root / "models/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        train={"backbone": "sasrec", "modalities": []},
        best_epoch=3,
        epochs_run=5,
        best_valid={"ndcg_at_10": 0.25, "hr_at_10": 0.5},
        inputs=model_inputs(root / "data/processed/sequences.parquet", root / "supervision", []),
    )
    cfg_path.write_text(json.dumps(cfg))
    uri = f"sqlite:///{root}/mlflow.db"
    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    # the training run, as the trainer leaves it: closed, tagged with the weights' sha256
    with mlflow.start_run(
        experiment_id=exp, tags={"model.sha256": file_digest(root / "models/model.safetensors")}
    ):
        train_run = mlflow.active_run().info.run_id
    params = MLflowParams(tracking_uri=uri, experiment="t", register_as="kdsr-test")
    model_uri = log_recommender(params, root / "models", root / "data/processed/items.parquet")
    assert model_uri is not None
    version = mlflow.MlflowClient().get_model_version("kdsr-test", "1")
    assert version.run_id == train_run
    # the version's card: data digests, validation metrics, weights digest and git rev
    from pipeline.lineage import read_model_inputs
    from pipeline.tracking import git_rev

    inputs = read_model_inputs(root / "models")
    assert version.tags["model.sha256"] == file_digest(root / "models/model.safetensors")
    assert (
        version.tags["data.sequences"]
        == inputs["sequences"]
        == file_digest(root / "data/processed/sequences.parquet")
    )
    assert version.tags["data.catalogue"] == inputs["catalogue"]
    assert version.tags["git.rev"] == git_rev()
    assert (version.tags["backbone"], version.tags["modalities"]) == ("sasrec", "none")
    assert (version.tags["best_epoch"], version.tags["valid.ndcg_at_10"]) == ("3", "0.25")
    assert version.description.startswith("KDSR student: sasrec over item IDs only; best epoch 3 of 5; ")
    assert "validation NDCG@10 0.2500" in version.description and git_rev()[:12] in version.description

    loaded = mlflow.pyfunc.load_model("models:/kdsr-test/1")
    histories = [[f"B{i:09d}" for i in s] for s in seqs[:4]]
    got = loaded.predict(pd.DataFrame({"items": histories}), params={"k": 5})
    run_recommend(
        RecommendParams(k=5),
        root / "data/processed/sequences.parquet",
        root / "data/processed/items.parquet",
        root / "models",
        root / "rec.parquet",
        device="cpu",
        progress=False,
    )
    stage = rows_by_user(root / "rec.parquet")
    for u in range(4):
        assert list(got["item_ids"][u]) == [item_id for _, _, item_id, _ in stage[u + 1]]
        np.testing.assert_allclose(list(got["scores"][u]), [s for *_, s in stage[u + 1]], rtol=1e-6)
    # the model folder holds safetensors + JSON and code, no pickle
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(root / "dl")))
    names = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "items.json", "pyfunc_code.py", "MLmodel"} <= names
    assert not any(n.endswith((".pkl", ".pickle", ".pt", ".cloudpickle")) for n in names)
    with pytest.raises(Exception, match=r"unknown item id\(s\): nope"):
        loaded.predict(pd.DataFrame({"items": [["B000000001", "nope"]]}))


# --------------------------------------------------------------------------------------------- faiss retrieval
def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _histories(
    rng: np.random.Generator, users: int, n_items: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    hist = [rng.choice(np.arange(1, n_items + 1), size, replace=False) for _ in range(users)]
    return np.arange(0, users * size + 1, size, dtype=np.int64), np.concatenate(hist).astype(np.int64)


def _brute_force(queries: np.ndarray, vectors: np.ndarray, k: int, indptr=None, hist=None):
    scores = torch.from_numpy(np.hstack([np.zeros((len(queries), 1), np.float32), queries @ vectors.T]))
    items, vals = top_k(scores, k, indptr, hist)
    return items.numpy(), vals.numpy()


@pytest.mark.parametrize("mask", [False, True])
def test_flat_index_is_exactly_the_brute_force_top_k(mask: bool) -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 500, 16), _unit(rng, 40, 16)
    indptr, hist = _histories(rng, 40, 500, 30) if mask else (None, None)
    index = ItemIndex(vectors, IndexSpec("flat"))
    got_items, got_scores = index.search(queries, 10, indptr, hist)
    ref_items, ref_scores = _brute_force(queries, vectors, 10, indptr, hist)
    assert np.array_equal(got_items, ref_items)  # ids and order (random vectors: no ties)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5)
    if mask:
        for b in range(40):
            assert not set(got_items[b]) & set(hist[indptr[b] : indptr[b + 1]])


def test_hnsw_recall_on_a_small_catalogue_is_at_least_095_and_never_returns_history() -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(2)
    vectors, queries = _unit(rng, 5000, 32), _unit(rng, 200, 32)
    indptr, hist = _histories(rng, 200, 5000, 20)
    got, _ = ItemIndex(vectors, IndexSpec("hnsw", hnsw_m=16, hnsw_ef_search=64)).search(
        queries, 10, indptr, hist
    )
    ref, _ = _brute_force(queries, vectors, 10, indptr, hist)
    recall = np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref, strict=True)])
    assert recall >= 0.95, recall
    assert all(not set(got[b]) & set(hist[indptr[b] : indptr[b + 1]]) for b in range(200))


@pytest.mark.parametrize("mask", [False, True])
def test_ivf_probing_every_cell_is_the_brute_force_top_k_and_fewer_cells_keep_most_of_it(mask: bool) -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((20, 16)).astype(np.float32)
    vectors = _unit(rng, 3000, 16) * 0.5 + centres[rng.integers(0, 20, 3000)]  # clustered, not unit
    queries = _unit(rng, 100, 16) * 0.5 + centres[rng.integers(0, 20, 100)]
    indptr, hist = _histories(rng, 100, 3000, 20) if mask else (None, None)
    ref_items, ref_scores = _brute_force(queries, vectors, 10, indptr, hist)
    every = ItemIndex(vectors, IndexSpec("ivf", ivf_nlist=25, ivf_nprobe=25))
    assert every.kind == "ivf" and every.index.nlist == 25 and every.index.nprobe == 25
    items, scores = every.search(queries, 10, indptr, hist)
    assert np.array_equal(items, ref_items)  # every cell probed: exact
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    default = ItemIndex(vectors, IndexSpec("ivf", ivf_nprobe=3))  # nlist sqrt(3000) = 55, 3 of them probed
    assert default.index.nlist == 55
    got, _ = default.search(queries, 10, indptr, hist)
    recall = np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref_items, strict=True)])
    assert 0.5 <= recall < 1.0, recall  # approximate: most of the top-10, not all of it
    if mask:
        assert all(not set(got[b]) & set(hist[indptr[b] : indptr[b + 1]]) for b in range(100))


@pytest.mark.parametrize("mask", [False, True])
def test_pq_reranking_every_item_is_the_brute_force_top_k_and_fewer_keep_most_of_it(mask: bool) -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(5)
    vectors, queries = _unit(rng, 4000, 32), _unit(rng, 100, 32)  # i.i.d.: no cells or graph would hold
    indptr, hist = _histories(rng, 100, 4000, 20) if mask else (None, None)
    ref_items, ref_scores = _brute_force(queries, vectors, 10, indptr, hist)
    every = ItemIndex(vectors, IndexSpec("pq", pq_rerank=4000))
    assert every.kind == "pq" and every.index.index.pq.M == 16  # width / 2 sub-quantizers by default
    items, scores = every.search(queries, 10, indptr, hist)
    assert np.array_equal(items, ref_items)  # every item re-scored: exact
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    few = ItemIndex(vectors, IndexSpec("pq", pq_m=8, pq_rerank=100))
    assert few.index.index.pq.M == 8
    got, got_scores = few.search(queries, 10, indptr, hist)
    recall = np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref_items, strict=True)])
    assert 0.7 <= recall < 1.0, recall  # the codes order approximately; 100 re-scored keep most of the top-10
    exact = np.take_along_axis(queries @ vectors.T, got - 1, 1)  # the scores returned are the exact ones ...
    np.testing.assert_allclose(got_scores, exact, rtol=1e-5)
    assert (np.diff(got_scores, axis=1) <= 0).all()  # ... best first
    if mask:
        assert all(not set(got[b]) & set(hist[indptr[b] : indptr[b + 1]]) for b in range(100))


def test_pq_refuses_sub_quantizers_that_do_not_divide_the_width() -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(6)
    odd, queries = _unit(rng, 300, 7), _unit(rng, 5, 7)  # the default: a zero column makes the width even
    index = ItemIndex(odd, IndexSpec("pq", pq_rerank=300))
    assert index.index.index.pq.M == 4 and index.index.index.d == 8
    assert np.array_equal(index.search(queries, 5)[0], _brute_force(queries, odd, 5, None, None)[0])

    with pytest.raises(ValueError, match=r"recommend\.pq_m must divide the item vectors' width 32, got 5"):
        ItemIndex(_unit(np.random.default_rng(0), 100, 32), IndexSpec("pq", pq_m=5))


def test_masking_extends_the_search_and_falls_back_when_the_history_holds_the_best_items() -> None:
    from pipeline.recommend.retrieval import IndexSpec, ItemIndex

    rng = np.random.default_rng(3)
    vectors, queries = _unit(rng, 300, 8), _unit(rng, 6, 8)
    order = np.argsort(-(queries @ vectors.T), axis=1) + 1  # each user's items, best first
    sizes = [0, 5, 50, 280, 295, 300]  # the best items are the history; 295 and 300 leave < k items
    hist = np.concatenate([order[b, : sizes[b]] for b in range(6)]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ref_items, ref_scores = _brute_force(queries, vectors, 10, indptr, hist)
    for spec in (
        IndexSpec("flat"),
        IndexSpec("hnsw", hnsw_m=4, hnsw_ef_search=1, hnsw_ef_construction=4),
        IndexSpec("ivf", ivf_nlist=10, ivf_nprobe=1),
        IndexSpec("pq", pq_m=4, pq_rerank=1),
    ):
        items, scores = ItemIndex(vectors, spec).search(queries, 10, indptr, hist)
        for b in range(6):
            assert not set(items[b][items[b] > 0]) & set(hist[indptr[b] : indptr[b + 1]]), (spec, b)
        assert (items[4] > 0).sum() == 5 and (items[5] == 0).all() and np.isneginf(scores[5]).all()
        if spec.index == "flat":
            assert np.array_equal(items, ref_items)
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


@pytest.mark.parametrize(("scoring", "prior"), [("dot", 0.0), ("cos", 0.0), ("dot", 1.5), ("cos", 2.0)])
def test_recommender_flat_index_ranks_and_scores_as_the_model(
    tmp_path: Path, scoring: str, prior: float
) -> None:
    from pipeline.models import Student, StudentConfig
    from pipeline.recommend.retrieval import IndexSpec

    seqs = write_tiny_recommender(tmp_path)
    torch.manual_seed(0)
    modalities = ("text",) if prior else ()  # the last-item prior: extra blocks on both sides of the index
    cfg = StudentConfig(num_items=30, hidden=16, layers=1, heads=1, dropout=0.0, max_len=8, num_codes=0,
                        scoring=scoring, temperature=0.2, modalities=modalities, modality_dim=8,
                        last_item_prior=prior)  # fmt: skip
    model = Student(cfg, {"text": torch.randn(31, 8)} if prior else None).eval()
    catalogue = ItemCatalogue.from_parquet(tmp_path / "data/processed/items.parquet")
    exact = Recommender(model, catalogue, "cpu", IndexSpec("exact"))
    flat = Recommender(model, catalogue, "cpu", IndexSpec("flat"))
    assert (exact.index_kind, flat.index_kind) == ("exact", "flat")
    histories = [s for s in seqs[:10]]
    offsets = np.cumsum([0] + [len(s) for s in histories])
    dense = np.concatenate([np.asarray(s, dtype=np.int64) for s in histories])
    for mask in (True, False):
        ref_items, ref_scores = exact.top_k_csr(dense, offsets, 6, mask)
        items, scores = flat.top_k_csr(dense, offsets, 6, mask)
        assert np.array_equal(items, ref_items), mask
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)  # the model's own logits
        if mask:
            assert all(not set(items[b]) & set(histories[b]) for b in range(10))
    # the exact path serves the model's own user_scores (its item side computed once, not per call)
    inputs, _, _ = history_windows(dense, offsets[:-1], np.diff(offsets), 8)
    with torch.inference_mode():
        direct = model.user_scores(inputs).clone()
        direct[:, 0] = float("-inf")
    np.testing.assert_allclose(ref_scores, direct.topk(6).values.numpy(), rtol=1e-4, atol=1e-5)


def test_a_student_that_excludes_its_input_never_recommends_it_even_unmasked(tmp_path: Path) -> None:
    from pipeline.models import Student, StudentConfig
    from pipeline.recommend.retrieval import IndexSpec

    seqs = write_tiny_recommender(tmp_path)
    torch.manual_seed(0)
    cfg = StudentConfig(num_items=30, hidden=16, layers=1, heads=1, dropout=0.0, max_len=8, num_codes=0)
    model = Student(cfg).eval()
    catalogue = ItemCatalogue.from_parquet(tmp_path / "data/processed/items.parquet")
    histories = [s for s in seqs[:10]]
    offsets = np.cumsum([0] + [len(s) for s in histories])
    dense = np.concatenate([np.asarray(s, dtype=np.int64) for s in histories])
    masked = Recommender(model, catalogue, "cpu", IndexSpec("exact")).top_k_csr(dense, offsets, 6, True)
    model.cfg = dataclasses.replace(model.cfg, exclude_seen=True)
    for kind in ("exact", "flat"):
        rec = Recommender(model, catalogue, "cpu", IndexSpec(kind))
        items, scores = rec.top_k_csr(dense, offsets, 6, mask_history=False)
        assert all(not set(items[b]) & set(histories[b]) for b in range(10)), kind
        assert np.array_equal(items, masked[0]), kind  # the masked lists, whatever the caller asked
        np.testing.assert_allclose(scores, masked[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "pq"])
def test_recommend_stage_with_an_approximate_index_reports_recall_against_exact(project, kind: str) -> None:
    root, seqs = project
    out = root / "data" / "recommendations.parquet"
    # ivf: 30 items in 5 cells, every one probed; pq: all 30 re-scored (pq_rerank 1000)
    params = RecommendParams(k=5, batch_size=7, index=kind, recall_users=10, ivf_nlist=5, ivf_nprobe=5)
    summary = run_recommend(params, root / "data/processed/sequences.parquet", root / "data/processed/items.parquet",
                            root / "models", out, device="cpu", progress=False)  # fmt: skip
    assert summary["index"] == kind and summary["recall_users"] == 10
    assert (
        summary["recall_at_k"] == 1.0
    )  # 30 items: the graph, the cells probed or the re-scoring hold each one
    meta = pq.read_metadata(out).metadata  # the file's key-value metadata: the schema's and the recall
    assert (
        meta[b"index"] == kind.encode() and meta[b"recall_at_5"] == b"1.0" and meta[b"recall_users"] == b"10"
    )
    rows = read_parquet(out).to_pylist()
    assert len(rows) == 5 * len(seqs) and not any(r["item"] in seqs[r["user"] - 1] for r in rows)
