"""The evaluate stage (pipeline/evaluation/evaluate.py) with a fake student and with a saved real one."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from helpers import write_sequences

from pipeline.config import MLflowParams, Params, with_overrides
from pipeline.errors import DataError, PipelineError
from pipeline.evaluation.evaluate import run_evaluate, run_evaluate_unmasked
from pipeline.io import read_parquet


class NextIdStudent:
    """Fake student: predicts item ``last % N + 1`` (score 1), every other item scores 0."""

    def __init__(self, num_items: int, max_len: int) -> None:
        self.num_items = num_items
        self.max_len = max_len

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.dtype == torch.int64 and inputs.shape[1] == self.max_len
        scores = torch.zeros(inputs.shape[0], self.num_items + 1)
        nxt = inputs[:, -1] % self.num_items + 1
        scores[torch.arange(inputs.shape[0]), nxt] = 1.0
        return scores


@pytest.fixture
def eval_params(tiny_params: Params):
    return with_overrides(tiny_params, {"eval.ks": [1, 5], "eval.batch_size": 1}).eval


@pytest.fixture
def sequences(tmp_path: Path) -> Path:
    # N = 6 items, leave-one-out boundaries
    path = tmp_path / "data" / "sequences.parquet"
    write_sequences(path, [[1, 2, 3, 4], [5, 1, 3]], [2, 1], [3, 2])
    return path


def outputs(tmp_path: Path) -> dict[str, Path]:
    return {
        "metrics_path": tmp_path / "reports" / "metrics.json",
        "per_user_path": tmp_path / "reports" / "per_user.parquet",
    }


def test_run_evaluate_with_fake_student(tmp_path: Path, sequences: Path, eval_params, tiny_params) -> None:
    out = outputs(tmp_path)
    report = run_evaluate(
        eval_params,
        tiny_params.mlflow,
        sequences_path=sequences,
        model_dir=tmp_path / "models",
        student=NextIdStudent(num_items=6, max_len=3),
        device="cpu",
        progress=False,
        **out,
    )
    # model ranks (history masked, ties against the target):
    #   valid u1: target 3 after 2 -> predicted: 0 | u2: target 1 after 5 -> 6 higher, 2,3,4 tie: 4
    #   test  u1: target 4 after 3 -> predicted: 0 | u2: target 3 after 1 -> 2 higher, 4,6 tie: 3
    # popularity (training parts [1, 2], [5]: items 1, 2, 5 count 1):
    #   valid u1: target 3, {1,2} masked -> 5 higher, 4,6 tie: 3 | u2: target 1, {5} masked -> 2 ties: 1
    #   test  u1: target 4, {1,2,3} masked -> 5 higher, 6 ties: 2 | u2: target 3 -> 2 higher, 4,6 tie: 3
    expected = {
        "valid": {
            "hr_at_1": 1 / 2,
            "ndcg_at_1": 1 / 2,
            "mrr_at_1": 1 / 2,
            "hr_at_5": 1.0,
            "ndcg_at_5": (1 / math.log2(2) + 1 / math.log2(6)) / 2,
            "mrr_at_5": (1 / 1 + 1 / 5) / 2,
        },
        "test": {
            "hr_at_1": 1 / 2,
            "ndcg_at_1": 1 / 2,
            "mrr_at_1": 1 / 2,
            "hr_at_5": 1.0,
            "ndcg_at_5": (1 / math.log2(2) + 1 / math.log2(5)) / 2,
            "mrr_at_5": (1 / 1 + 1 / 4) / 2,
        },
        "popularity": {
            "valid": {
                "hr_at_1": 0.0,
                "ndcg_at_1": 0.0,
                "mrr_at_1": 0.0,
                "hr_at_5": 1.0,
                "ndcg_at_5": (1 / math.log2(5) + 1 / math.log2(3)) / 2,
                "mrr_at_5": (1 / 4 + 1 / 2) / 2,
            },
            "test": {
                "hr_at_1": 0.0,
                "ndcg_at_1": 0.0,
                "mrr_at_1": 0.0,
                "hr_at_5": 1.0,
                "ndcg_at_5": (1 / math.log2(4) + 1 / math.log2(5)) / 2,
                "mrr_at_5": (1 / 3 + 1 / 4) / 2,
            },
        },
        "cases": {"valid": 2, "test": 2},
    }
    written = json.loads(out["metrics_path"].read_text())
    assert written.keys() == expected.keys() == report.keys()
    for group in ("valid", "test"):
        assert written[group] == pytest.approx(expected[group], abs=1e-15)
        assert written["popularity"][group] == pytest.approx(expected["popularity"][group], abs=1e-15)
    assert written["cases"] == expected["cases"]

    table = read_parquet(out["per_user_path"])
    assert table.schema.field("user").type == pa.int32()
    assert table.schema.field("part").type == pa.string()
    assert table.schema.field("target").type == pa.int32()
    assert table.schema.field("rank").type == pa.int32()
    assert table.to_pydict() == {
        "user": [1, 2, 1, 2],
        "part": ["valid", "valid", "test", "test"],
        "target": [3, 1, 4, 3],
        "rank": [0, 4, 0, 3],
    }


class RepeatLastStudent(NextIdStudent):
    """Fake student whose top item is in the history: the last item scores 2, item ``last % N + 1`` 1, others 0."""

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        scores = super().user_scores(inputs)
        scores[torch.arange(inputs.shape[0]), inputs[:, -1]] = 2.0
        return scores


def test_unmasked_evaluation_keeps_history_items_in_the_ranking(
    tmp_path: Path, sequences: Path, eval_params, tiny_params
) -> None:
    out = outputs(tmp_path)
    student = RepeatLastStudent(num_items=6, max_len=3)
    common = {
        "sequences_path": sequences,
        "model_dir": tmp_path / "models",
        "student": student,
        "device": "cpu",
    }
    masked = run_evaluate(eval_params, tiny_params.mlflow, progress=False, **out, **common)
    masked_bytes = [path.read_bytes() for path in out.values()]
    unmasked = run_evaluate_unmasked(eval_params, out_dir=tmp_path / "unmasked", **common)
    # masked: the last item (score 2) is history, so the ranks are NextIdStudent's: 0, 4, 0, 3.
    # unmasked, every history item other than the target scoring >= the target's score now counts:
    #   valid u1 [1, 2] -> 3: item 2 (score 2) above the target (1): 1 | u2 [5] -> 1 (score 0): 5, 6 above,
    #   2, 3, 4 tie: 5 (item 5 added) | test u1 [1, 2, 3] -> 4: item 3 above: 1 | u2 [5, 1] -> 3 (score 0):
    #   1, 2 above, 4, 5, 6 tie: 5 (items 1 and 5 added)
    ranks = read_parquet(tmp_path / "unmasked" / "per_user.parquet").to_pydict()
    assert ranks["part"] == ["valid", "valid", "test", "test"] and ranks["rank"] == [1, 5, 1, 5]
    assert read_parquet(out["per_user_path"]).to_pydict()["rank"] == [0, 4, 0, 3]
    assert unmasked["test"]["hr_at_1"] == 0.0 and masked["test"]["hr_at_1"] == 0.5
    assert unmasked["test"]["hr_at_5"] == 0.5 and masked["test"]["hr_at_5"] == 1.0
    assert unmasked["test"]["mrr_at_5"] == pytest.approx(1 / 2 / 2)
    assert unmasked["valid"]["ndcg_at_5"] == pytest.approx(1 / math.log2(3) / 2)
    assert json.loads((tmp_path / "unmasked" / "metrics.json").read_text())["test"] == unmasked["test"]
    # the masked outputs are untouched
    assert [path.read_bytes() for path in out.values()] == masked_bytes


def test_outputs_are_deterministic(tmp_path: Path, sequences: Path, eval_params, tiny_params) -> None:
    contents = []
    for run in ("a", "b"):
        out = outputs(tmp_path / run)
        run_evaluate(
            eval_params,
            tiny_params.mlflow,
            sequences_path=sequences,
            model_dir=tmp_path / run / "models",  # not read: the student is given
            student=NextIdStudent(6, 3),
            device="cpu",
            progress=False,
            **out,
        )
        contents.append([p.read_bytes() for p in out.values()])
    assert contents[0] == contents[1]


def test_catalogue_mismatch_is_a_clear_error(
    tmp_path: Path, sequences: Path, eval_params, tiny_params
) -> None:
    with pytest.raises(DataError, match=r"item id 5 is outside the model's catalogue 1\.\.4"):
        run_evaluate(
            eval_params,
            tiny_params.mlflow,
            sequences_path=sequences,
            model_dir=tmp_path / "models",  # not read: the student is given
            student=NextIdStudent(4, 3),
            device="cpu",
            **outputs(tmp_path),
        )
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_missing_model_dir_names_the_file(tmp_path: Path, sequences: Path, eval_params, tiny_params) -> None:
    pytest.importorskip("pipeline.models")
    with pytest.raises(PipelineError, match="models"):
        run_evaluate(
            eval_params,
            tiny_params.mlflow,
            sequences_path=sequences,
            model_dir=tmp_path / "models",
            device="cpu",
            **outputs(tmp_path),
        )


def test_saved_student_round_trip(tmp_path: Path, sequences: Path, eval_params, tiny_params) -> None:
    models = pytest.importorskip("pipeline.models")
    from pipeline.evaluation.cases import load_eval_cases
    from pipeline.evaluation.metrics import evaluate_scorer

    torch.manual_seed(0)
    cfg = models.StudentConfig(num_items=6, hidden=8, layers=1, heads=1, max_len=3, dropout=0.0, num_codes=0)
    model_dir = tmp_path / "models"
    models.save_student(models.Student(cfg).eval(), model_dir)
    out = outputs(tmp_path)
    report = run_evaluate(
        eval_params,
        tiny_params.mlflow,
        sequences_path=sequences,
        model_dir=model_dir,
        device="cpu",
        progress=False,
        **out,
    )
    loaded = models.load_student(model_dir, "cpu")
    for part in ("valid", "test"):
        cases = load_eval_cases(sequences, part, max_len=3)
        metrics, ranks = evaluate_scorer(loaded.user_scores, cases, [1, 5], True, 7)
        assert report[part] == metrics
        table = read_parquet(out["per_user_path"]).to_pydict()
        assert len(table["rank"]) == 4
        assert [r for r, p in zip(table["rank"], table["part"], strict=True) if p == part] == ranks.tolist()

    (model_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PipelineError, match="model.safetensors"):
        run_evaluate(eval_params, tiny_params.mlflow, sequences_path=sequences, model_dir=model_dir, **out)


@pytest.mark.slow
def test_metrics_logged_to_the_training_run(
    in_tmp_project: Path, sequences: Path, eval_params, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    tmp_path = in_tmp_project  # MLflow puts a sqlite store's artifacts under ./mlruns
    from pipeline.tracking import file_digest, start_run

    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp = MLflowParams(enabled=True, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    with start_run("train", mp, tags={"model.sha256": file_digest(model_dir / "model.safetensors")}) as tr:
        train_run = tr.run_id
    evaluate = functools.partial(
        run_evaluate,
        eval_params,
        mp,
        sequences_path=sequences,
        model_dir=model_dir,
        student=NextIdStudent(6, 3),
        device="cpu",
        progress=False,
        **outputs(tmp_path),
    )
    report = evaluate()
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(train_run)
    # MLflow sections (test/, valid/, popularity/); metrics.json keeps its nested keys
    assert run.data.metrics["test/ndcg_at_5"] == pytest.approx(report["test"]["ndcg_at_5"])
    assert run.data.metrics["valid/hr_at_1"] == 0.5
    assert run.data.metrics["popularity/test_hr_at_5"] == 1.0
    assert run.data.metrics["test/cases"] == 2
    assert {k.split("/")[0] for k in run.data.metrics} == {"test", "valid", "popularity"}
    # a model version registered from that run (as the train stage does) carries the test metrics as tags
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("kdsr-t")
    client.create_model_version("kdsr-t", f"runs:/{train_run}/model", run_id=train_run)
    evaluate()  # again, now that the run has a registered version
    tags = client.get_model_version("kdsr-t", "1").tags
    assert tags["test.ndcg_at_5"] == f"{report['test']['ndcg_at_5']:.6f}"
    assert {k for k in tags if k.startswith("test.")} == {f"test.{k}" for k in report["test"]}
