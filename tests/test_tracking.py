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
