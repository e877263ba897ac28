"""Evaluate: models/ + data/processed/sequences.parquet -> reports/metrics.json, reports/per_user.parquet."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main


def run() -> None:
    run_stage("evaluate", stage_params("evaluate"), Layout.project(Path()))


if __name__ == "__main__":
    main(run)
