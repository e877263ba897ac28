"""Embed: data/processed/items.parquet -> data/embeddings/<modality>.parquet + report.json."""

from pathlib import Path

from pipeline.config import stage_params
from pipeline.teachers.embed import run_embed
from stages._common import main

# must equal this stage's `params:` list in dvc.yaml
PARAMS = ("embed", "train.modalities", "data.raw_dir", "mlflow")


def run() -> None:
    p = stage_params("embed", PARAMS)
    processed = Path("data/processed")
    # local image paths must lie under embed.image.local_root (default data.raw_dir) or the ingest output
    # folder, where the demo generator writes its images
    image_root = Path(p.embed.image.local_root or p.data.raw_dir)
    run_embed(
        p.embed,
        list(p.train.modalities),
        mlflow_params=p.mlflow,
        items_path=processed / "items.parquet",
        out_dir=Path("data/embeddings"),
        image_roots=[image_root, processed],
    )


if __name__ == "__main__":
    main(run)
