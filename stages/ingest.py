"""Ingest: raw review/metadata files (data/raw/, or the demo generator) -> data/processed/{items,sequences}.parquet
and reports/data_stats.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main


def run() -> None:
    run_stage("ingest", stage_params("ingest"), Layout.project(Path()))


if __name__ == "__main__":
    main(run)
