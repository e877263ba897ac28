"""MLflow wiring shared by every stage.

DVC is the source of truth; MLflow mirrors runs for people to browse. mlflow is imported lazily and is
optional: where it is not installed (the GPU machine) or ``mlflow.enabled`` is false, every call is a no-op,
so training and evaluation stay importable without it. Nothing here writes into a DVC-tracked output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import PROJECT_ROOT, flatten
from pipeline.io import file_digest as file_digest  # re-exported: runs are tagged with data/model digests

if TYPE_CHECKING:
    from pipeline.config import MLflowParams, ParamsView

    MLflowSection = MLflowParams | ParamsView  # a stage passes its declared view of the section

log = logging.getLogger(__name__)


def default_tracking_uri(root: Path = PROJECT_ROOT) -> str:
    """``sqlite:///<absolute project root>/mlflow.db`` (MLflow 3 refuses the old ./mlruns file store)."""
    return f"sqlite:///{root.resolve()}/mlflow.db"


def git_rev(root: Path = PROJECT_ROOT, short: bool = False) -> str | None:
    """The commit checked out at ``root`` (abbreviated with ``short``); None outside a git work tree."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def standard_tags(stage: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags every run carries: stage, git rev, and DVC's experiment name when run by ``dvc exp run``."""
    tags = {"stage": stage}
    rev = git_rev()
    if rev:
        tags["git.rev"] = rev
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
        ("DVC_ROOT", "dvc.root"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if extra:
        tags.update({k: str(v) for k, v in extra.items()})
    return tags


#: MLflow's UI folds a run's metrics into sections by the text before "/": the prefix of a flat key (as the
#: stages and train_curve.csv name it) picks its section. Only MLflow sees these names; metrics.json,
#: ``dvc metrics`` and ``dvc exp show`` keep the flat keys.
METRIC_SECTIONS = (
    ("best_valid_", "valid/best_"),  # best_valid_ndcg_at_10 -> valid/best_ndcg_at_10
    ("valid_", "valid/"),
    ("test_", "test/"),
    ("popularity_", "popularity/"),  # popularity_test_hr_at_5 -> popularity/test_hr_at_5
    ("grad_", "grad/"),  # grad_ce_text: gradient norm of a loss term on a modality table
    ("hol_", "kd/hol_"),  # the distillation terms and diagnostics of each modality
    ("code_", "kd/code_"),
    ("table_r_", "kd/table_r_"),
    ("kd_r_", "kd/kd_r_"),
)
TRAIN_SECTION = (
    "train/"  # the train stage's other metrics: ce, loss, lr_<group>, seq_per_s, seconds, best_epoch
)


def metric_name(key: str, stage: str | None = None) -> str:
    """The MLflow name of flat metric ``key`` logged by ``stage`` (see :data:`METRIC_SECTIONS`).

    ``cases_<part>`` (evaluate) goes to ``<part>/cases``; a key with no section prefix goes to ``train/`` in the
    train stage's run and keeps its name elsewhere (each other stage's run holds only its own metrics).
    """
    for prefix, section in METRIC_SECTIONS:
        if key.startswith(prefix):
            return section + key[len(prefix) :]
    if key.startswith("cases_"):
        return f"{key.removeprefix('cases_')}/cases"
    return TRAIN_SECTION + key if stage == "train" else key


class Tracker:
    """A thin handle on one MLflow run; every method is a no-op when tracking is off.

    ``stage``: the stage that logs (:func:`metric_name`); None for runs that are no stage's (the suite's).
    """

    def __init__(self, run: Any | None, mlflow_mod: Any | None, stage: str | None = None) -> None:
        self._run = run
        self._mlflow = mlflow_mod
        self._stage = stage

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run is not None else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        flat = {k: (str(v) if isinstance(v, list | tuple) else v) for k, v in flatten(dict(params)).items()}
        # MLflow caps a batch at 100 params
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        clean = {
            metric_name(k.replace("@", "_at_"), self._stage): float(v)
            for k, v in flatten(dict(metrics)).items()
            if isinstance(v, int | float)
        }
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        if self.active:
            self._mlflow.log_dict(obj, name)


def default_artifact_location(root: Path = PROJECT_ROOT) -> str:
    """Artifacts go to an absolute folder of the project, so runs from ``dvc exp run --queue``'s temporary
    copies keep them (MLflow's default, ./mlruns relative to the working directory, would be lost)."""
    return (root.resolve() / "mlartifacts").as_uri()


#: The experiment tag by which MLflow 3 tells a model-training experiment from a GenAI one
#: (``custom_model_development``: the runs table, not the Traces / Sessions / Judges views).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _ensure_experiment(mlflow: Any, name: str) -> None:
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        # another stage may create it concurrently; set_experiment below then finds theirs
        with contextlib.suppress(Exception):
            mlflow.create_experiment(
                name,
                artifact_location=default_artifact_location(),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
    elif EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older version: mark it; a user's choice stays
        with contextlib.suppress(Exception):
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(name)


def experiment_page(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The ``mlflow ui`` address of an experiment's runs in the model-training view.

    MLflow 3.17's UI picks GenAI or model training by a switch kept in the browser (GenAI at first) and by
    the ``workflowType`` query parameter, which wins: this link opens the runs table whatever the switch.
    """
    return f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def tracking_enabled(mlflow_params: MLflowSection) -> bool:
    """False when ``mlflow.enabled`` is off or the environment says ``KDSR_MLFLOW=0`` (tests, benchmarks)."""
    return bool(getattr(mlflow_params, "enabled", True)) and os.environ.get("KDSR_MLFLOW", "1") != "0"


# MLflow's HTTP client retries 7 times with a doubling back-off (~250 s per call against a dead server);
# these defaults (each overridden by the variable when set) bound a stage's stall on a server that fails
# mid-run, and a server that cannot be reached at all is found by a short connect before any MLflow call
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
CONNECT_TIMEOUT_S = 3.0
_UNREACHABLE: set[str] = set()  # tracking URIs found unreachable in this process: one warning each


def _unreachable(uri: str) -> str | None:
    """Why the HTTP tracking server of ``uri`` cannot be connected to within :data:`CONNECT_TIMEOUT_S`, or
    None when it can (or ``uri`` is not HTTP)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except (OSError, ValueError) as err:  # refused, timed out, unknown host, bad port
        return str(err) or type(err).__name__


def _tracking_uri(mlflow_params: MLflowSection) -> str | None:
    """The tracking URI (``MLFLOW_TRACKING_URI``, else ``mlflow.tracking_uri``, else the
    project's SQLite file); None, after one warning per process, when its HTTP server cannot be reached."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow_params.tracking_uri or default_tracking_uri()
    if uri in _UNREACHABLE:
        return None
    if uri.startswith(("http://", "https://")):
        for var, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(var, value)
        problem = _unreachable(uri)
        if problem is not None:
            _UNREACHABLE.add(uri)
            log.warning(
                "MLflow tracking server %s cannot be reached (%s): continuing without tracking", uri, problem
            )
            return None
    return uri


def import_mlflow() -> Any | None:
    try:
        import mlflow  # optional and slow to import
    except ImportError:
        log.warning("mlflow is not installed: tracking is off for this run")
        return None
    return mlflow


@contextlib.contextmanager
def start_run(
    stage: str,
    mlflow_params: MLflowSection,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Tracker]:
    """Open an MLflow run for a stage (or resume ``run_id``) and yield a :class:`Tracker`.

    ``mlflow_params`` is the ``mlflow`` params section (enabled, tracking_uri, experiment). Tracking
    failures are logged and never fail the stage.

    A new run is nested under ``parent_run_id``, else under the run named by the ``KDSR_MLFLOW_PARENT``
    environment variable (how the experiment suite nests the runs of stages it calls, also in worker
    processes), else under the run already active in this process, if any. Its name is ``run_name``, else
    ``KDSR_RUN_NAME``, else ``DVC_EXP_NAME``, else the stage.
    """
    if not tracking_enabled(mlflow_params):
        yield Tracker(None, None)
        return
    mlflow = import_mlflow()
    if mlflow is None:
        yield Tracker(None, None)
        return
    uri = _tracking_uri(mlflow_params)
    if uri is None:
        yield Tracker(None, None)
        return
    try:
        mlflow.set_tracking_uri(uri)
        _ensure_experiment(mlflow, mlflow_params.experiment)
        name = run_name or os.environ.get("KDSR_RUN_NAME") or os.environ.get("DVC_EXP_NAME") or stage
        parent = None if run_id else (parent_run_id or os.environ.get("KDSR_MLFLOW_PARENT") or None)
        run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else name,
            tags=None if run_id else standard_tags(stage, tags),  # a reopened run keeps its tags
            nested=mlflow.active_run() is not None,
            parent_run_id=parent,
        )
    except Exception as err:  # tracking must never break the pipeline
        log.warning("MLflow tracking unavailable (%s): continuing without it", err)
        yield Tracker(None, None)
        return
    ok = False
    try:
        yield Tracker(run, mlflow, stage)
        ok = True
    finally:
        mlflow.end_run(status="FINISHED" if ok else "FAILED")


def find_run_by_tag(mlflow_params: MLflowSection, key: str, value: str) -> str | None:
    """Return the newest run id in the experiment whose tag ``key`` equals ``value`` (or None)."""
    if not tracking_enabled(mlflow_params):
        return None
    mlflow = import_mlflow()
    if mlflow is None:
        return None
    uri = _tracking_uri(mlflow_params)
    if uri is None:
        return None
    try:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(mlflow_params.experiment)
        if exp is None:
            return None
        runs = mlflow.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{key}` = '{value}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
    except Exception as err:
        log.warning("MLflow search failed (%s)", err)
        return None
    return runs[0].info.run_id if runs else None
