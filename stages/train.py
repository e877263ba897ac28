"""Train: data/processed/sequences.parquet + data/supervision -> models/ (safetensors + JSON), reports/train_curve.csv.

With MLflow on, the trained model is also logged as a pyfunc model (and registered as ``mlflow.register_as``).
"""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.tracking import log_recommender
from pipeline.training.trainer import run_train
from stages._common import main

PARAMS = ("train", "correlate.score", "eval", "mlflow")


def run() -> None:
    p = stage_params("train", PARAMS)
    summary = run_train(p.train, p.correlate.score, p.eval, p.mlflow)
    if summary.get("finished", True):
        log_recommender(p.mlflow, Path("models"), Path("data/processed/items.parquet"))


if __name__ == "__main__":
    main(run)
