"""Issue 23, the smaller cases: a malformed sequences file in the recommend stage, a full disk between
evaluate's two outputs and in the demo image writer, an unreachable MLflow server, path-like
``data.category``, bad ``mlflow.register_as`` names, and the restore hint of a stage that fails under DVC."""

from __future__ import annotations

import errno
import logging
import socket
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import write_items, write_tiny_recommender

from pipeline import tracking
from pipeline.config import PROJECT_ROOT, ConfigError, EvalParams, MLflowParams, Params, RecommendParams
from pipeline.errors import DataError
from pipeline.io import write_parquet
from stages._common import main

NO_MLFLOW = MLflowParams(enabled=False)


def _stage_exit(run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> str:
    monkeypatch.chdir(cwd)  # main() changes to the project root; this puts the test's folder back after
    with pytest.raises(SystemExit) as info:
        main(run)
    assert info.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------------- recommend
def test_recommend_with_a_string_items_column_names_the_file(tmp_path: Path) -> None:
    from test_recommend import IdScorer  # a fake student scoring item i as i

    from pipeline.recommend.recommend import run_recommend
    from pipeline.recommend.topk import ItemCatalogue, Recommender

    seq, items = tmp_path / "sequences.parquet", tmp_path / "items.parquet"
    write_items(items, 8)
    write_parquet(seq, {"user": pa.array([1, 2], pa.int32()), "items": pa.array(["1 2 3", "4 5"]),
                        "train_end": pa.array([1, 0], pa.int32()), "valid_end": pa.array([2, 1], pa.int32())})  # fmt: skip
    rec = Recommender(IdScorer(8, 4), ItemCatalogue.from_parquet(items), "cpu")
    out = tmp_path / "rec.parquet"
    with pytest.raises(DataError, match=rf"^{seq}: column 'items' must be a list of ints, got string$"):
        run_recommend(
            RecommendParams(k=3), seq, items, tmp_path / "models", out, recommender=rec, progress=False
        )
    assert not out.exists()
    # a list of strings and a non-integer user column are refused the same way (the shared reader's check)
    write_parquet(
        seq, {"user": pa.array(["a", "b"]), "items": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32()))}
    )
    with pytest.raises(DataError, match=rf"^{seq}: column 'user' must be integers, got string$"):
        run_recommend(
            RecommendParams(k=3), seq, items, tmp_path / "models", out, recommender=rec, progress=False
        )


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_failing_on_its_second_output_keeps_the_old_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.evaluation import evaluate

    write_tiny_recommender(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    metrics, per_user = reports / "metrics.json", reports / "per_user.parquet"
    metrics.write_text('{"old": 1}\n')
    per_user.write_bytes(b"old per-user ranks")

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

    monkeypatch.setattr(evaluate, "write_json", no_space)
    with pytest.raises(OSError) as err:
        evaluate.run_evaluate(EvalParams(ks=[5]), NO_MLFLOW, tmp_path / "data" / "processed" / "sequences.parquet",
                              tmp_path / "models", metrics, per_user, device="cpu", progress=False)  # fmt: skip
    assert (err.value.filename, err.value.strerror) == (
        str(metrics),
        "cannot write (No space left on device)",
    )
    assert metrics.read_text() == '{"old": 1}\n'  # the pair is the old one: per_user was not replaced
    assert per_user.read_bytes() == b"old per-user ranks"
    assert sorted(p.name for p in reports.iterdir()) == ["metrics.json", "per_user.parquet"]  # no temporaries
    monkeypatch.undo()
    report = evaluate.run_evaluate(EvalParams(ks=[5]), NO_MLFLOW, tmp_path / "data" / "processed" / "sequences.parquet",
                                   tmp_path / "models", metrics, per_user, device="cpu", progress=False)  # fmt: skip
    assert report["cases"]["test"] == 23 and per_user.read_bytes().startswith(b"PAR1")  # both written


# --------------------------------------------------------------------------------------------- demo images
def test_demo_image_writer_disk_full_names_the_image(
    tmp_path: Path, tiny_params: Params, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image, PngImagePlugin  # noqa: F401  (registers the PNG writer)

    from pipeline.data.ingest import run_ingest

    def no_space(im: object, fp: object, filename: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", no_space)
    out = tmp_path / "processed"
    err = _stage_exit(lambda: run_ingest(tiny_params.data, NO_MLFLOW, out, tmp_path / "stats.json"),
                      capsys, monkeypatch, tmp_path)  # fmt: skip
    assert err.startswith(f"error: {tmp_path}/.processed.tmp-"), err
    assert "/demo_raw/images/B" in err and err.endswith(".png: cannot write (No space left on device)\n"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no staging folder, no lock left


# --------------------------------------------------------------------------------------------- MLflow
def test_unreachable_tracking_server_is_one_warning_in_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in tracking.HTTP_DEFAULTS:  # restored (unset) after the test: start_run sets the defaults
        monkeypatch.setenv(var, "0")
        monkeypatch.delenv(var)
    monkeypatch.setattr(tracking, "_UNREACHABLE", set())
    params = MLflowParams(enabled=True, tracking_uri=uri)
    caplog.set_level(logging.WARNING, logger="pipeline.tracking")
    tracking.import_mlflow()  # the import itself (seconds, more on a loaded machine) is not what is timed
    t0 = time.perf_counter()
    with tracking.start_run("ingest", params) as tracker:
        assert not tracker.active
        tracker.log_metrics({"x": 1.0})  # a no-op
    assert tracking.find_run_by_tag(params, "k", "v") is None
    with tracking.start_run("embed", params) as tracker:
        assert not tracker.active
    assert time.perf_counter() - t0 < 10  # MLflow's own retries took ~250 s per call
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"MLflow tracking server {uri} cannot be reached (")
    assert warnings[0].endswith("): continuing without tracking")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # a server failing mid-run stalls less too


# --------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize("category", ["../x", "a/b", "/etc", "..", ".hidden", "", "Beauty\n"])
def test_a_category_that_is_not_a_plain_name_is_refused(category: str) -> None:
    from pipeline.config import parse_params

    with pytest.raises(ConfigError, match=r"data\.category: .*must be a plain name"):
        parse_params({"data": {"category": category, "download": True}}, "params.yaml")


def test_real_category_names_are_accepted() -> None:
    from pipeline.config import parse_params

    for category in ("Beauty", "Clothing_Shoes_and_Jewelry", "All_Beauty", "AMAZON_FASHION", "Movies_and_TV"):
        assert parse_params({"data": {"category": category}}, "params.yaml").data.category == category


@pytest.mark.parametrize(
    ("name", "why"),
    [("a/b", "cannot contain '/'"), ("kdsr:v1", "cannot contain ':'"), ("50%", "cannot contain '%'"),
     ("..x", "cannot be '.' or start with '..'"), ("  ", "not blank"), ("x" * 257, "at most 256 characters")],
)  # fmt: skip
def test_register_as_is_checked_when_params_load(name: str, why: str) -> None:
    from pipeline.config import parse_params

    with pytest.raises(ConfigError, match=rf"mlflow\.register_as: .*{why}"):
        parse_params({"mlflow": {"register_as": name}}, "params.yaml")
    for ok in ("kdsr", "KDSR model-2", None):
        assert parse_params({"mlflow": {"register_as": ok}}, "params.yaml").mlflow.register_as == ok


# --------------------------------------------------------------------------------------------- under DVC
def _bad_params() -> None:
    raise ConfigError(
        "params.yaml: invalid parameters (1 problem(s)):\n  - train.lr: not a number (got 'abc')"
    )


def test_a_stage_failing_under_dvc_says_how_to_restore_the_removed_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_STAGE", "train")  # what `dvc repro` / `dvc exp run` set for a stage command
    monkeypatch.setenv("DVC_ROOT", str(PROJECT_ROOT))
    err = _stage_exit(_bad_params, capsys, monkeypatch, tmp_path)
    lines = err.splitlines()
    assert lines[0] == "error: params.yaml: invalid parameters (1 problem(s)):"
    assert lines[-1] == (
        "hint: DVC removed the outputs of stage 'train' before running it; restore the last committed ones "
        "with `dvc checkout train` (its `cache: false` files, kept in git, with `git checkout -- <file>`)"
    )
    # a queued or --temp experiment runs in a copy (DVC_ROOT names the original): this workspace is intact
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert "hint:" not in _stage_exit(_bad_params, capsys, monkeypatch, tmp_path)
    monkeypatch.delenv("DVC_STAGE")  # not under DVC
    monkeypatch.setenv("DVC_ROOT", str(PROJECT_ROOT))
    assert "hint:" not in _stage_exit(_bad_params, capsys, monkeypatch, tmp_path)
