"""Log the trained recommender to MLflow after training: the train stage's last step (``stages/train.py``).

Apart from :mod:`pipeline.tracking` so that the stages that never log a model do not depend on the model
code: :mod:`pipeline.recommend.pyfunc` (and with it mlflow and the student) is imported only here, and only
when tracking is on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io import file_digest
from pipeline.layout import MODEL_CONFIG, MODEL_WEIGHTS
from pipeline.tracking import (
    experiment_page,
    find_run_by_tag,
    git_rev,
    import_mlflow,
    start_run,
    tracking_enabled,
)

if TYPE_CHECKING:
    from pipeline.tracking import MLflowSection

log = logging.getLogger(__name__)


def log_recommender(mlflow_params: MLflowSection, model_dir: Path, items_path: Path) -> str | None:
    """Log the trained model as an MLflow pyfunc model into the training run that made it, and register it
    as ``mlflow.register_as`` when set; returns the model URI (None when tracking is off or it failed).

    The training run is found by the ``model.sha256`` tag the trainer sets on it (as the evaluate stage
    finds it), so this runs after ``run_train`` has closed its run. Only rank 0 of a ``torchrun`` logs.
    Failures are logged and never fail the stage.
    """
    if not tracking_enabled(mlflow_params) or os.environ.get("RANK", "0") not in ("", "0"):
        return None
    mlflow = import_mlflow()
    if mlflow is None:
        return None
    weights = Path(model_dir) / MODEL_WEIGHTS
    if not weights.exists():
        return None  # training stopped before writing a model
    run_id = find_run_by_tag(mlflow_params, "model.sha256", file_digest(weights))
    register_as = getattr(mlflow_params, "register_as", None)
    with start_run("train", mlflow_params, run_id=run_id) as tracker:
        if not tracker.active:
            return None
        try:
            from pipeline.recommend.pyfunc import log_model  # imports mlflow

            info = log_model(Path(model_dir), Path(items_path), register_as)
        except Exception as err:  # tracking must never fail the stage
            log.warning("logging the MLflow model failed (%s): outputs are written, model not logged", err)
            return None
        version = getattr(info, "registered_model_version", None)
        if register_as and version:
            describe_model_version(register_as, str(version), Path(model_dir))
        log.info(
            "MLflow model %s%s; runs: %s",
            info.model_uri,
            f" registered as models:/{register_as}/{version}" if register_as and version else "",
            experiment_page(mlflow.active_run().info.experiment_id),
        )
        return info.model_uri


def model_version_card(model_dir: Path, rev: str | None) -> tuple[str, dict[str, str]]:
    """The description and tags of a registered version of the model in ``model_dir``: what it is, the
    digests of the data it was trained on (``data.*``), its validation metrics at the best epoch
    (``valid.*``), the weights' digest and the git revision of the code (what ``config.json`` lacks is left
    out)."""
    cfg: dict[str, Any] = json.loads((model_dir / MODEL_CONFIG).read_text())
    train, best, inputs = cfg.get("train", {}), cfg.get("best_valid", {}), cfg.get("inputs", {})
    modalities = ",".join(train.get("modalities", [])) or "none"
    tags = {
        "model.sha256": file_digest(model_dir / MODEL_WEIGHTS),
        **{f"data.{k}": str(v) for k, v in inputs.items()},
        **{k: str(cfg[k]) for k in ("best_epoch", "epochs_run") if k in cfg},
        **{f"valid.{k}": f"{v:.6g}" for k, v in best.items()},
        **({"git.rev": rev} if rev else {}),
    }
    backbone = train.get("backbone") or cfg.get("student", {}).get("backbone", "sasrec")
    tags.update(backbone=str(backbone), modalities=modalities)
    parts = [
        f"KDSR student: {backbone} over item IDs"
        + (f" with {modalities} distilled from their teachers" if modalities != "none" else " only")
    ]
    if "best_epoch" in cfg:
        parts.append(f"best epoch {cfg['best_epoch']} of {cfg.get('epochs_run', '?')}")
    if "ndcg_at_10" in best:
        parts.append(f"validation NDCG@10 {best['ndcg_at_10']:.4f}")
    if "sequences" in inputs:
        parts.append(f"trained on sequences {inputs['sequences'][:12]}")
    if rev:
        parts.append(f"code at git {rev[:12]}")
    parts.append("test metrics: the evaluate stage's run of this model (tag model.sha256)")
    return "; ".join(parts) + ".", tags


def describe_model_version(name: str, version: str, model_dir: Path) -> None:
    """Give registered version ``name``/``version`` its description and tags (:func:`model_version_card`)."""
    mlflow = import_mlflow()
    if mlflow is None:
        return
    description, tags = model_version_card(model_dir, git_rev())
    try:
        client = mlflow.MlflowClient()
        client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    except Exception as err:  # tracking must never fail the stage
        log.warning("describing MLflow model %s/%s failed (%s)", name, version, err)
