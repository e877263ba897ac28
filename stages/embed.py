"""Embed: data/processed/items.parquet -> data/embeddings/<modality>.parquet + report.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.teachers.embed import run_embed
from stages._common import main

PARAMS = ("embed", "train.modalities", "mlflow")  # must equal this stage's `params:` list in dvc.yaml


def run() -> None:
    p = stage_params("embed", PARAMS)
    run_embed(
        p.embed,
        list(p.train.modalities),
        mlflow_params=p.mlflow,
        items_path=Path("data/processed/items.parquet"),
        out_dir=Path("data/embeddings"),
    )


if __name__ == "__main__":
    main(run)
