"""Embed: data/processed/items.parquet -> data/embeddings/<modality>.parquet + report.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main


def run() -> None:
    run_stage("embed", stage_params("embed"), Layout.project(Path()))


if __name__ == "__main__":
    main(run)
