"""Ingest: raw review/metadata files (data/raw/, or the demo generator) -> data/processed/{items,sequences}.parquet
and reports/data_stats.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main

PARAMS = ("data", "mlflow")  # must equal this stage's `params:` list in dvc.yaml (a test checks)


def run() -> None:
    run_stage("ingest", stage_params("ingest", PARAMS), Layout.project(Path()))


if __name__ == "__main__":
    main(run)
