"""The served MLflow model (issue 23): every fault in a request is one HTTP 400 message naming it as sent,
never a stack trace; the model refuses to load with an item map of another catalogue.

The requests go through MLflow's own scoring code (``scoring_server.invocations``: JSON parsing, schema
conversion, params validation, then ``predict``), in process; the HTTP status and body are what
``mlflow models serve`` answers (its app serialises the MlflowException it raises)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import write_tiny_recommender

mlflow = pytest.importorskip("mlflow")

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.pyfunc import scoring_server  # noqa: E402

from pipeline.lineage import model_inputs  # noqa: E402
from pipeline.models import load_student, save_student  # noqa: E402
from pipeline.recommend import pyfunc  # noqa: E402
from pipeline.recommend.topk import ITEMS_JSON, ItemCatalogue  # noqa: E402


def _package(root: Path, items: list[str] | None = None) -> Path:
    """The pyfunc model folder ``log_model`` would log (saved locally, no tracking server)."""
    write_tiny_recommender(root)
    processed = root / "data" / "processed"
    inputs = model_inputs(processed / "sequences.parquet", root / "supervision", [])
    save_student(load_student(root / "models"), root / "models", extra={"inputs": inputs})
    folder = root / "artifact"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(root / "models" / name, folder / name)
    catalogue = ItemCatalogue.from_parquet(processed / "items.parquet")
    ItemCatalogue(items if items is not None else catalogue.ids).to_json(folder / ITEMS_JSON)
    target = root / "pyfunc"
    mlflow.pyfunc.save_model(
        str(target),
        python_model=str(pyfunc.CODE_FILE),
        artifacts={pyfunc.ARTIFACT: str(folder)},
        code_paths=[str(pyfunc.PACKAGE_DIR)],
        signature=pyfunc.signature(),
    )
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    return mlflow.pyfunc.load_model(str(_package(tmp_path_factory.mktemp("served"))))


def ask(model, body: dict) -> tuple[int, dict]:
    """(HTTP status, JSON body) of ``POST /invocations`` with ``body``, as the scoring server answers it."""
    try:
        r = scoring_server.invocations(
            json.dumps(body), "application/json", model, model.metadata.get_input_schema()
        )
    except MlflowException as err:
        return err.get_http_status_code(), json.loads(err.serialize_as_json())
    return r.status, json.loads(r.response)


def rows(*histories: list, **params) -> dict:
    body: dict = {"dataframe_records": [{"items": h} for h in histories]}
    if params:
        body["params"] = params
    return body


def test_a_valid_request_is_answered(served) -> None:
    status, body = ask(served, rows(["B000000001", "B000000002"], k=3))
    assert status == 200 and len(body["predictions"][0]["item_ids"]) == 3
    assert not {"B000000001", "B000000002"} & set(body["predictions"][0]["item_ids"])  # history masked


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mask_history": None}, "params.mask_history must be true or false (default true), got null"),
        ({"k": None}, "params.k must be an integer >= 1 (default 10), got null"),
        ({"k": 0}, "params.k must be an integer >= 1 (default 10), got 0"),
    ],
)
def test_null_or_bad_params_are_one_400_message_without_a_stack_trace(served, params, message) -> None:
    status, body = ask(served, rows(["B000000001"], **params))
    assert status == 400 and message in body["message"]
    assert "stack_trace" not in body and "Traceback" not in json.dumps(body)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        (["B000000001", None], "item 1 of row 0 must be an item id (a string), got null"),
        (["B000000001", 5], "item 1 of row 0 must be an item id (a string), got 5 (a int)"),
        ([["B000000001"]], "item 0 of row 0 must be an item id (a string), got ['B000000001'] (a list)"),
        (None, "'items' of row 0 must be a list of item ids (strings), got null"),
        (["B000000001", "nope"], "unknown item id(s): nope;"),
    ],
)
def test_bad_item_ids_are_named_exactly_as_sent(served, history, message) -> None:
    status, body = ask(served, rows(history))
    assert status == 400 and message in body["message"], body
    assert "stack_trace" not in body


def test_request_size_limits_are_400_naming_the_limit(served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfunc, "MAX_ROWS", 2)
    monkeypatch.setattr(pyfunc, "MAX_HISTORY", 3)
    status, body = ask(served, rows(["B000000001"], ["B000000002"], ["B000000003"]))
    assert status == 400 and "3 histories in one request; at most 2" in body["message"]
    status, body = ask(served, rows(["B000000001", "B000000002", "B000000003", "B000000004"]))
    assert status == 400 and "the history of row 0 has 4 items; at most 3" in body["message"]


def test_the_model_refuses_to_load_with_an_item_map_of_another_catalogue(tmp_path: Path) -> None:
    other = [f"C{i:09d}" for i in range(1, 31)]  # same size, no id in common
    with pytest.raises(Exception, match=r"catalogue \(the item ids of .*items.json\).*run the train stage"):
        mlflow.pyfunc.load_model(str(_package(tmp_path, other)))


def test_log_model_refuses_an_items_table_of_another_catalogue(tmp_path: Path) -> None:
    from pipeline.lineage import LineageError

    _package(tmp_path)
    items = tmp_path / "data" / "processed" / "items.parquet"
    from helpers import write_items

    write_items(items, 31)  # re-ingested: one more item
    with pytest.raises(LineageError, match="catalogue"):
        pyfunc.log_model(tmp_path / "models", items)
