"""Ingest: raw review/metadata files (data/raw/, or the demo generator) -> data/processed/{items,sequences}.parquet
and reports/data_stats.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.data.ingest import run_ingest
from stages._common import main

PARAMS = ("data", "mlflow")  # must equal this stage's `params:` list in dvc.yaml (a test checks)


def run() -> None:
    p = stage_params("ingest", PARAMS)
    run_ingest(
        p.data,
        mlflow_params=p.mlflow,
        out_dir=Path("data/processed"),
        stats_path=Path("reports/data_stats.json"),
    )


if __name__ == "__main__":
    main(run)
