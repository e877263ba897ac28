"""Correlate: data/embeddings + data/processed/sequences.parquet -> data/supervision/."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.supervision.correlate import run_correlate
from stages._common import main

PARAMS = ("correlate", "train.modalities", "mlflow")  # must equal this stage's `params:` list in dvc.yaml


def run() -> None:
    p = stage_params("correlate", PARAMS)
    run_correlate(
        p.correlate,
        list(p.train.modalities),
        mlflow_params=p.mlflow,
        embeddings_dir=Path("data/embeddings"),
        sequences_path=Path("data/processed/sequences.parquet"),
        out_dir=Path("data/supervision"),
    )


if __name__ == "__main__":
    main(run)
