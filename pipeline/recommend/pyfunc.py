"""The trained recommender as an MLflow ``pyfunc`` model (``mlflow.pyfunc.load_model``, ``mlflow models serve``).

Nothing is pickled. The model is logged "from code": MLflow stores :mod:`pipeline.recommend.pyfunc_code`
(which calls ``set_model(RecommenderModel())``) and, as artifacts, one folder holding ``model.safetensors``,
``config.json`` (the student config) and ``items.json`` (original item ids in dense-id order); the project's
``pipeline`` package travels as ``code_paths``. :meth:`RecommenderModel.load_context` rebuilds the student
from safetensors + JSON with :func:`pipeline.models.load_student`, and :meth:`RecommenderModel.predict` is the
``recommend`` stage's own top-K (:class:`pipeline.recommend.topk.Recommender`).

Input: a column ``items``, one list of original item ids (oldest first) per row (at most 10,000 rows
and 10,000 ids per row). Output: columns ``item_ids`` (top-K original ids, best first) and ``scores``.
Inference params: ``k`` (default 10) and ``mask_history`` (default true). Every fault in the input or the
params is one HTTP 400 message naming it (the row, the position, the value as sent), never a stack trace.
Loading checks the item map against the catalogue digest the weights were trained with. The retrieval is the
``recommend`` stage's (:mod:`pipeline.recommend.retrieval`), chosen at load time by MLflow's ``model_config``
(keys ``index``, ``hnsw_m``, ``hnsw_ef_search``, ``hnsw_ef_construction``, ``ivf_nlist``, ``ivf_nprobe``,
``pq_m``, ``pq_rerank``; default ``index: auto``).

This module imports mlflow; :func:`pipeline.recommend.register.log_recommender` imports it only when tracking is on.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

from pipeline.errors import PipelineError
from pipeline.lineage import check_catalogue
from pipeline.recommend.retrieval import IndexSpec
from pipeline.recommend.topk import ITEMS_JSON, ItemCatalogue, Recommender

ARTIFACT = "recommender"  # the artifacts key (and folder) holding weights, config and item map
MODEL_NAME = "recommender"  # the logged model's name inside the run
INPUT_COLUMN = "items"
DEFAULT_K = 10
MAX_ROWS = 10_000  # histories per request
MAX_HISTORY = 10_000  # item ids per history (the model reads the last train.max_len of them)
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the ``pipeline`` package, shipped as code_paths


def signature(default_k: int = DEFAULT_K) -> ModelSignature:
    """Input ``items``: a list of item ids per row; output ``item_ids: list<string>``, ``scores: list<double>``.

    The input's elements are typed ``any``, not ``string``: MLflow's string conversion turns a ``null`` in
    a list into a truncated string (``["B000000001", null]`` reached the model as ``["B", "n"]``), so the
    model checks every element itself (:func:`_histories`) and names the faulty one as it was sent."""
    return ModelSignature(
        inputs=Schema([ColSpec(Array(AnyType()), INPUT_COLUMN)]),
        outputs=Schema([ColSpec(Array("string"), "item_ids"), ColSpec(Array("double"), "scores")]),
        params=ParamSchema([ParamSpec("k", "long", default_k), ParamSpec("mask_history", "boolean", True)]),
    )


def _bad(message: str) -> MlflowException:
    """A caller's mistake: HTTP 400 with ``message`` (and no stack trace) from the scoring server."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _describe(value: Any) -> str:
    return "null" if value is None else f"{value!r} (a {type(value).__name__})"


def _histories(model_input: Any) -> list[list[str]]:
    """Rows of original item ids from what a pyfunc may be given (DataFrame, dict, list of lists).

    Raises:
        MlflowException: one message naming the first faulty row and position, the value as sent: a row
            that is null or not a list, an id that is null or not a string, more than :data:`MAX_ROWS` rows
            or a history longer than :data:`MAX_HISTORY`.
    """
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise _bad(
                f"input needs a column {INPUT_COLUMN!r} (one list of item ids per row), "
                f"got columns {list(model_input.columns)}"
            )
        rows = list(model_input[INPUT_COLUMN])
    elif isinstance(model_input, dict):
        rows = list(model_input.get(INPUT_COLUMN, []))
    else:
        rows = list(model_input)
    if len(rows) > MAX_ROWS:
        raise _bad(f"{len(rows)} histories in one request; at most {MAX_ROWS} (split the request)")
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, np.ndarray):
            r = r.tolist()
        if not isinstance(r, list | tuple):
            raise _bad(
                f"{INPUT_COLUMN!r} of row {i} must be a list of item ids (strings), got {_describe(r)}"
            )
        if len(r) > MAX_HISTORY:
            raise _bad(f"the history of row {i} has {len(r)} items; at most {MAX_HISTORY} (the most recent)")
        for j, x in enumerate(r):
            if not isinstance(x, str):
                raise _bad(f"item {j} of row {i} must be an item id (a string), got {_describe(x)}")
        out.append(list(r))
    return out


def _params(params: dict[str, Any] | None) -> tuple[int, bool]:
    """``k`` and ``mask_history`` from the inference params; a missing key takes its default, a ``null``,
    a wrong type or ``k < 1`` is refused naming the key."""
    params = params or {}
    unknown = sorted(set(params) - {"k", "mask_history"})
    if unknown:
        raise _bad(f"unknown param(s) {unknown}; the model takes k and mask_history")
    k = params.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise _bad(f"params.k must be an integer >= 1 (default {DEFAULT_K}), got {_describe(k)}")
    if k < 1:
        raise _bad(f"params.k must be an integer >= 1 (default {DEFAULT_K}), got {int(k)}")
    mask = params.get("mask_history", True)
    if not isinstance(mask, bool | np.bool_):
        raise _bad(f"params.mask_history must be true or false (default true), got {_describe(mask)}")
    return int(k), bool(mask)


def index_spec(model_config: dict[str, Any] | None) -> IndexSpec:
    """The retrieval from a load-time ``model_config``; an unknown key is refused naming the known ones."""
    config = dict(model_config or {})
    known = {f.name for f in dataclasses.fields(IndexSpec)}  # index, hnsw_m, ..., pq_rerank
    unknown = sorted(set(config) - known)
    if unknown:
        raise _bad(f"unknown model_config key(s) {unknown}; the model takes {sorted(known)}")
    spec = IndexSpec(**config)
    spec.kind(0)  # an unknown index name fails here, naming the choices
    return spec


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """Histories of original item ids -> top-K original ids and scores (the recommend stage's ranking)."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        catalogue = ItemCatalogue.from_json(folder / ITEMS_JSON)
        check_catalogue(folder, catalogue.ids, folder / ITEMS_JSON)  # the ids the weights were trained with
        spec = index_spec(getattr(context, "model_config", None))
        self.recommender = Recommender.load(folder, catalogue, index=spec)

    # no type hints: MLflow would try to derive a schema from them; the logged signature is the contract
    def predict(self, context, model_input, params=None):
        k, mask = _params(params)
        histories = _histories(model_input)
        try:
            recs = self.recommender.recommend(histories, k, mask)
        except PipelineError as err:  # unknown ids, empty history: the caller's mistake (HTTP 400)
            raise _bad(str(err)) from None
        return pd.DataFrame({"item_ids": [r[0] for r in recs], "scores": [r[1] for r in recs]})


def _requirements() -> list[str]:
    reqs = []
    for dist in (
        "torch",
        "numpy",
        "pandas",
        "pyarrow",
        "safetensors",
        "pydantic",
        "pyyaml",
        "tqdm",
        "mlflow",
    ):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_model(model_dir: Path, items_path: Path, register_as: str | None = None) -> Any:
    """Log the trained model into the active MLflow run as a pyfunc model; register it when ``register_as``.

    Args:
        model_dir: folder with ``model.safetensors`` and ``config.json`` (the train stage's ``models/``).
        items_path: ``data/processed/items.parquet`` (the item-id map).
        register_as: registered-model name, or None to log without registering.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).
    """
    from pipeline.models.persist import CONFIG, WEIGHTS
    from pipeline.progress import quiet_third_party_bars

    quiet_third_party_bars()  # MLflow's artifact bars redraw with \r: off outside a terminal
    with tempfile.TemporaryDirectory(prefix="kdsr-pyfunc-") as tmp:
        folder = Path(tmp) / ARTIFACT
        folder.mkdir()
        for name in (WEIGHTS, CONFIG):
            shutil.copyfile(Path(model_dir) / name, folder / name)
        catalogue = ItemCatalogue.from_parquet(items_path)
        check_catalogue(model_dir, catalogue.ids, items_path)  # never ship an item map of other data
        catalogue.to_json(folder / ITEMS_JSON)
        # two items of the catalogue: checked against the signature at logging time, and shown by MLflow
        # as the model's serving example (serving_input_example.json)
        example = pd.DataFrame({INPUT_COLUMN: [catalogue.ids[:2]]})
        # MLflow 3 names a logged model ``name``; 2.x called it ``artifact_path``
        where = (
            {"name": MODEL_NAME}
            if int(mlflow.__version__.split(".")[0]) >= 3
            else {"artifact_path": MODEL_NAME}
        )
        return mlflow.pyfunc.log_model(
            **where,
            python_model=str(CODE_FILE),
            artifacts={ARTIFACT: str(folder)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature(),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=register_as or None,
        )
