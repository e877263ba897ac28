"""Train: data/processed/sequences.parquet + data/supervision -> models/ (safetensors + JSON), reports/train_curve.csv."""

from pipeline.config import stage_params
from pipeline.training.trainer import run_train
from stages._common import main

PARAMS = ("train", "correlate.score", "eval", "mlflow")


def run() -> None:
    p = stage_params("train", PARAMS)
    run_train(p.train, p.correlate.score, p.eval, p.mlflow)


if __name__ == "__main__":
    main(run)
