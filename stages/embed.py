"""Embed: data/processed/items.parquet -> data/embeddings/<modality>.parquet + report.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main

# must equal this stage's `params:` list in dvc.yaml
PARAMS = ("embed", "train.modalities", "data.raw_dir", "mlflow")


def run() -> None:
    run_stage("embed", stage_params("embed", PARAMS), Layout.project(Path()))


if __name__ == "__main__":
    main(run)
