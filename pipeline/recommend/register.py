"""Log the trained recommender to MLflow after training: the train stage's last step (``stages/train.py``).

Apart from :mod:`pipeline.tracking` so that the stages that never log a model do not depend on the model
code: :mod:`pipeline.recommend.pyfunc` (and with it mlflow and the student) is imported only here, and only
when tracking is on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.io import file_digest
from pipeline.layout import MODEL_WEIGHTS
from pipeline.tracking import find_run_by_tag, import_mlflow, start_run, tracking_enabled

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
    if import_mlflow() is None:
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
        log.info(
            "MLflow model %s%s",
            info.model_uri,
            f" registered as models:/{register_as}/{version}" if register_as and version else "",
        )
        return info.model_uri
