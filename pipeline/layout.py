"""Where every artefact of the pipeline lives: the one place that spells out artefact paths.

``Layout.project(root)`` is the layout of ``dvc.yaml`` (a test checks the stages' deps and outs against it);
``Layout.flat(data_root, run_root)`` is the layout of a suite or benchmark folder: the shared data directly
under ``data_root`` and one run's outputs directly under ``run_root``. File names inside the artefact folders
(items, sequences, the per-modality supervision files, the model's weights) are named here too, so readers
and writers of one artefact agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# names inside the artefact folders
ITEMS = "items.parquet"
SEQUENCES = "sequences.parquet"
SUPERVISION_STATS = "stats.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


def embedding_file(embeddings: Path, modality: str) -> Path:
    """The teacher vectors of one modality in the embed stage's folder."""
    return Path(embeddings) / f"{modality}.parquet"


def teacher_file(supervision: Path, modality: str) -> Path:
    """The reduced teacher vectors of one modality in the correlate stage's folder."""
    return Path(supervision) / f"teacher_{modality}.parquet"


def codebook_file(supervision: Path, modality: str) -> Path:
    """The correlation codebook of one modality in the correlate stage's folder."""
    return Path(supervision) / f"codebook_{modality}.safetensors"


def neighbours_file(supervision: Path, modality: str) -> Path:
    """The top-k holistic neighbour lists of one modality in the correlate stage's folder."""
    return Path(supervision) / f"topk_{modality}.parquet"


# what each stage writes, as Layout fields (the project's are dvc.yaml's outs, checkpoints aside): a run holds
# their locks (pipeline.io.output_lock) so a second run of the stage into the same place stops at once
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "ingest": ("processed", "data_stats"),
    "embed": ("embeddings",),
    "correlate": ("supervision",),
    "train": ("models", "train_curve", "checkpoints"),
    "evaluate": ("metrics", "per_user"),
    "recommend": ("recommendations",),
}


@dataclass(frozen=True)
class Layout:
    """The paths of the stages' outputs (and so of the later stages' inputs)."""

    processed: Path  # ingest: items.parquet, sequences.parquet (+ demo_raw/ for the demo source)
    data_stats: Path  # ingest: the data statistics (a DVC metrics file in the project)
    embeddings: Path  # embed: <modality>.parquet, report.json
    supervision: Path  # correlate: teacher_/topk_/codebook_<modality>, stats.json
    models: Path  # train: model.safetensors + config.json
    train_curve: Path  # train: one row per epoch
    checkpoints: Path  # train: the epoch checkpoints of an unfinished run
    metrics: Path  # evaluate: metrics JSON
    per_user: Path  # evaluate: per-case ranks
    recommendations: Path  # recommend: top-K per user

    @classmethod
    def project(cls, root: Path) -> Layout:
        """The layout of ``dvc.yaml`` under the project root ``root``."""
        root = Path(root)
        data, reports = root / "data", root / "reports"
        return cls(
            processed=data / "processed",
            data_stats=reports / "data_stats.json",
            embeddings=data / "embeddings",
            supervision=data / "supervision",
            models=root / "models",
            train_curve=reports / "train_curve.csv",
            checkpoints=root / ".cache" / "train",
            metrics=reports / "metrics.json",
            per_user=reports / "per_user.parquet",
            recommendations=data / "recommendations.parquet",
        )

    @classmethod
    def flat(cls, data_root: Path, run_root: Path | None = None) -> Layout:
        """Shared data directly under ``data_root``, one run's outputs directly under ``run_root`` (default:
        ``data_root``): the layout of a suite's ``data/`` and ``runs/<variant>/seed<k>/`` folders."""
        data, run = Path(data_root), Path(data_root if run_root is None else run_root)
        return cls(
            processed=data / "processed",
            data_stats=data / "data_stats.json",
            embeddings=data / "embeddings",
            supervision=data / "supervision",
            models=run / "models",
            train_curve=run / "train_curve.csv",
            checkpoints=run / "checkpoints",
            metrics=run / "metrics.json",
            per_user=run / "per_user.parquet",
            recommendations=run / "recommendations.parquet",
        )

    @classmethod
    def bench_run(cls, data_root: Path, out: Path, variant: str, seed: int) -> Layout:
        """One run of ``benchmarks/bench_train.py``: shared data under ``data_root``, the run's outputs in
        ``out/<variant>-seed<seed>``."""
        return cls.flat(data_root, Path(out) / f"{variant}-seed{seed}")

    def outputs(self, stage: str) -> list[Path]:
        """The paths stage ``stage`` writes (:data:`STAGE_OUTPUTS`)."""
        return [getattr(self, name) for name in STAGE_OUTPUTS[stage]]

    @property
    def items(self) -> Path:
        return self.processed / ITEMS

    @property
    def sequences(self) -> Path:
        return self.processed / SEQUENCES

    @property
    def model_weights(self) -> Path:
        return self.models / MODEL_WEIGHTS

    @property
    def supervision_stats(self) -> Path:
        return self.supervision / SUPERVISION_STATS

    def embedding(self, modality: str) -> Path:
        return embedding_file(self.embeddings, modality)

    def teacher(self, modality: str) -> Path:
        return teacher_file(self.supervision, modality)

    def codebook(self, modality: str) -> Path:
        return codebook_file(self.supervision, modality)
