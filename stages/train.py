"""Train: data/processed/sequences.parquet + data/supervision -> models/ (safetensors + JSON), reports/train_curve.csv.

With MLflow on, the trained model is also logged as a pyfunc model (and registered as ``mlflow.register_as``).
"""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.recommend.register import log_recommender
from pipeline.runner import run_stage
from stages._common import main


def run() -> None:
    p, layout = stage_params("train"), Layout.project(Path())
    summary = run_stage("train", p, layout)
    if summary.get("finished", True):
        log_recommender(p.mlflow, layout.models, layout.items)


if __name__ == "__main__":
    main(run)
