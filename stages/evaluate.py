"""Evaluate: models/ + data/processed/sequences.parquet -> reports/metrics.json, reports/per_user.parquet."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.evaluation.evaluate import run_evaluate
from stages._common import main

PARAMS = ("eval", "mlflow")  # must equal this stage's `params:` list in dvc.yaml


def run() -> None:
    p = stage_params("evaluate", PARAMS)
    run_evaluate(
        p.eval,
        mlflow_params=p.mlflow,
        sequences_path=Path("data/processed/sequences.parquet"),
        model_dir=Path("models"),
        metrics_path=Path("reports/metrics.json"),
        per_user_path=Path("reports/per_user.parquet"),
    )


if __name__ == "__main__":
    main(run)
