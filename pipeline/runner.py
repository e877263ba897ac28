"""One way to run a stage: ``run_stage(name, params, layout)``, used by the stage entry points, the suite and
the benchmarks alike, so the wiring of params sections and artefact paths is written once.

Each stage's library module is imported only when that stage runs: polars is needed only where ingest runs,
the teacher models only where embed runs (a GPU machine without polars can train on data built elsewhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Params, ParamsView
from pipeline.io import output_lock
from pipeline.layout import Layout

if TYPE_CHECKING:
    import torch

DATA_STAGES = ("ingest", "embed", "correlate")  # what the training stages read, built in this order

StageParams = Params | ParamsView  # the whole config, or a stage's view of its declared keys


def _ingest(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.data.ingest import run_ingest

    return run_ingest(p.data, p.mlflow, layout.processed, layout.data_stats)


def _embed(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.teachers.embed import run_embed

    # local image paths must lie under embed.image.local_root (default data.raw_dir) or the ingest output
    # folder, where the demo generator writes its images
    image_root = Path(p.embed.image.local_root or p.data.raw_dir)
    return run_embed(
        p.embed,
        list(p.train.modalities),
        p.mlflow,
        layout.items,
        layout.embeddings,
        image_roots=[image_root, layout.processed],
    )


def _correlate(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.supervision.correlate import run_correlate

    return run_correlate(
        p.correlate,
        list(p.train.modalities),
        p.mlflow,
        layout.embeddings,
        layout.sequences,
        layout.supervision,
    )


def _train(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.training.train import run_train

    return run_train(
        p.train,
        p.correlate.score,
        p.eval,
        p.mlflow,
        layout.sequences,
        layout.supervision,
        layout.models,
        layout.train_curve,
        layout.checkpoints,
        progress=progress,
    )


def _evaluate(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.evaluation.evaluate import run_evaluate

    return run_evaluate(
        p.eval,
        p.mlflow,
        layout.sequences,
        layout.models,
        layout.metrics,
        layout.per_user,
        device=device,
        progress=progress,
    )


def _recommend(p: StageParams, layout: Layout, progress: bool, device: str | torch.device | None) -> Any:
    from pipeline.recommend.recommend import run_recommend

    return run_recommend(
        p.recommend,
        layout.sequences,
        layout.items,
        layout.models,
        layout.recommendations,
        device=device,
        progress=progress,
    )


STAGES: dict[str, Callable[[StageParams, Layout, bool, str | torch.device | None], Any]] = {
    "ingest": _ingest,
    "embed": _embed,
    "correlate": _correlate,
    "train": _train,
    "evaluate": _evaluate,
    "recommend": _recommend,
}


def run_stage(
    name: str,
    params: StageParams,
    layout: Layout,
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run stage ``name`` with ``params`` on the artefacts of ``layout``; returns the stage's summary.

    Args:
        name: a stage of dvc.yaml (:data:`STAGES`).
        params: the whole config, or the stage's :class:`~pipeline.config.ParamsView`.
        layout: where the stage reads its inputs and writes its outputs.
        progress: progress bars (train, evaluate, recommend).
        device: where evaluate and recommend compute scores (default: cuda when available, else cpu).

    Raises:
        OutputLocked: another live run holds one of the stage's outputs (``Layout.outputs``); nothing is
            touched.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    with contextlib.ExitStack() as locks:
        for path in sorted(set(layout.outputs(name))):  # one order everywhere
            locks.enter_context(output_lock(path))
        return STAGES[name](params, layout, progress, device)


def prepare_data(params: Params, layout: Layout) -> None:
    """Run ingest -> embed -> correlate with ``params`` into ``layout`` (what training reads)."""
    for name in DATA_STAGES:
        run_stage(name, params, layout)
