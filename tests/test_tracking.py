"""MLflow metric names: the flat keys of the stages, in the sections MLflow's UI folds (``train/``, ``valid/``,
``test/``, ``kd/``, ``grad/``, ``popularity/``); DVC's files keep the flat keys."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.tracking import Tracker, metric_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("key", "stage", "name"),
    [
        ("valid_ndcg_at_10", "train", "valid/ndcg_at_10"),
        ("best_valid_ndcg_at_10", "train", "valid/best_ndcg_at_10"),
        ("test_hr_at_20", "evaluate", "test/hr_at_20"),
        ("popularity_valid_mrr_at_5", "evaluate", "popularity/valid_mrr_at_5"),
        ("cases_valid", "evaluate", "valid/cases"),
        ("grad_hol_text", "train", "grad/hol_text"),
        ("hol_image", "train", "kd/hol_image"),
        ("code_acc_text", "train", "kd/code_acc_text"),
        ("table_r_text", "train", "kd/table_r_text"),
        ("kd_r_image", "train", "kd/kd_r_image"),
        ("loss", "train", "train/loss"),
        ("lr_modality", "train", "train/lr_modality"),
        ("seconds_to_best", "train", "train/seconds_to_best"),
        ("text_coverage", "embed", "text_coverage"),  # another stage's own run: unchanged
        ("interactions", "ingest", "interactions"),
        ("kd_effect.kdsr.ndcg_at_20_wilcoxon_p", None, "kd_effect.kdsr.ndcg_at_20_wilcoxon_p"),  # the suite
    ],
)
def test_metric_name_puts_each_key_in_its_section(key: str, stage: str | None, name: str) -> None:
    assert metric_name(key, stage) == name


def test_every_train_curve_column_lands_in_a_section() -> None:
    with (ROOT / "reports" / "train_curve.csv").open() as f:
        columns = next(csv.reader(f))
    assert "valid_ndcg_at_10" in columns and "grad_ce_text" in columns
    sections = {metric_name(c, "train").split("/")[0] for c in columns if c != "epoch"}
    assert sections == {"train", "valid", "kd", "grad"}


def test_the_tracker_logs_sectioned_names_of_its_stage() -> None:
    logged: dict[str, float] = {}
    fake = SimpleNamespace(log_metrics=lambda metrics, step=None: logged.update(metrics))
    Tracker(SimpleNamespace(), fake, "train").log_metrics({"loss": 2, "valid_ndcg@10": 0.5}, step=1)
    assert logged == {"train/loss": 2.0, "valid/ndcg_at_10": 0.5}
    logged.clear()
    Tracker(SimpleNamespace(), fake, "ingest").log_metrics({"users": 3, "dropped": {"duplicates": 1}})
    assert logged == {"users": 3.0, "dropped.duplicates": 1.0}


# --------------------------------------------------------------------------------------------- experiment kind
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_project_experiment_is_a_model_training_one_over_rest(tmp_path, monkeypatch) -> None:
    """A stage's run creates the experiment marked as model training; a server reports the tag over REST,
    an experiment made by an older version gets it, and a user's own choice is kept."""
    mlflow = pytest.importorskip("mlflow")
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from pipeline.config import MLflowParams
    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_page, start_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())
    mlflow.create_experiment(
        "mine", artifact_location=(tmp_path / "b").as_uri(), tags={EXPERIMENT_KIND_TAG: "genai_development"}
    )
    for name in ("kdsr", "older", "mine"):
        with start_run("train", MLflowParams(tracking_uri=uri, experiment=name)) as tracker:
            assert tracker.active
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def kind(name: str) -> str | None:
            url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
            for _ in range(120):
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        tags = json.load(r)["experiment"].get("tags", [])
                    return {t["key"]: t["value"] for t in tags}.get(EXPERIMENT_KIND_TAG)
                except OSError:
                    time.sleep(0.5)
            raise AssertionError(f"mlflow server on {base} did not answer")

        assert kind("kdsr") == EXPERIMENT_KIND == "custom_model_development"
        assert kind("older") == EXPERIMENT_KIND
        assert kind("mine") == "genai_development"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert experiment_page("7", base).endswith("/#/experiments/7/runs?workflowType=machine_learning")
