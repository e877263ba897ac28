"""Lineage (issue 15, item 2): an artefact built from other inputs than the files on disk fails with both
digests and what to rebuild, instead of writing wrong metrics (exit 0) or attaching teacher vectors to the
wrong items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import write_sequences

from pipeline.config import MLflowParams, Params, with_overrides
from pipeline.io import file_digest, read_json, write_parquet
from pipeline.lineage import (
    LineageError,
    check_lineage,
    check_model,
    check_supervision,
    model_inputs,
)
from pipeline.supervision.correlate import run_correlate

NO_MLFLOW = MLflowParams(enabled=False)

SEQS_A = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7, 8], [4, 5, 6, 7, 8, 1]] * 5
SEQS_B = [list(reversed(s)) for s in SEQS_A]  # same users, items and lengths: other data of the same size


@pytest.fixture
def small(tiny_params: Params) -> Params:
    return with_overrides(
        tiny_params,
        {"train.modalities": ["text"], "train.hidden": 16, "train.heads": 2, "train.epochs": 1,
         "train.batch_size": 32, "correlate.dim": 8, "correlate.sub_vectors": 2, "correlate.codes": 3,
         "correlate.topk": 2, "correlate.sample_pairs": 100},
    )  # fmt: skip


def _embeddings(path: Path, n: int, items_sha256: str | None) -> None:
    rng = np.random.default_rng(0)
    meta = {"model": "test", "missing_policy": "mean"}
    if items_sha256 is not None:
        meta["inputs"] = {"items": items_sha256}
    write_parquet(
        path,
        {"item": pa.array(range(1, n + 1), pa.int32()),
         "vector": rng.standard_normal((n, 12)).astype(np.float32), "missing": pa.array([False] * n)},
        metadata=meta,
    )  # fmt: skip


def _sequences_with_items(path: Path, items: list[list[int]], items_sha256: str) -> None:
    write_sequences(path, items)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    write_parquet(path, table, metadata={"items_sha256": items_sha256})


# --------------------------------------------------------------------------------------------- check_lineage
def test_check_lineage_names_both_digests_the_file_and_what_to_rebuild() -> None:
    old, new = "a" * 64, "b" * 64
    check_lineage({"sequences": old}, {"sequences": old}, "models/")  # equal: fine
    check_lineage({"sequences": old}, {"other": new}, "models/")  # nothing in common: nothing to check
    with pytest.raises(LineageError) as err:
        check_lineage({"sequences": old}, {"sequences": new}, "models/ (run the train stage)",
                      artefact="models/config.json", paths={"sequences": "data/processed/sequences.parquet"})  # fmt: skip
    msg = str(err.value)
    assert f"sequences (data/processed/sequences.parquet): sha256 {new} now, but models/config.json was built " \
           f"from sha256 {old}" in msg  # fmt: skip
    assert msg.endswith("Rebuild models/ (run the train stage) (or `dvc repro`).")


def test_nothing_recorded_warns_and_passes(caplog: pytest.LogCaptureFixture) -> None:
    check_lineage(None, {"sequences": "a" * 64}, "models/", artefact="models/config.json")
    assert "models/config.json records no input digests" in caplog.text


# --------------------------------------------------------------------------------------------- evaluate
def _trained_model(model_dir: Path, sequences: Path, supervision: Path) -> None:
    import torch

    from pipeline.models import Student, StudentConfig, save_student

    torch.manual_seed(0)
    model = Student(StudentConfig(num_items=8, hidden=8, layers=1, heads=1, max_len=10, num_codes=0))
    save_student(model, model_dir, extra={"inputs": model_inputs(sequences, supervision, [])})


def test_model_evaluated_on_other_data_of_the_same_size_fails_naming_both_digests(
    tmp_path: Path, small: Params
) -> None:
    from pipeline.evaluation.evaluate import run_evaluate

    seqs = tmp_path / "sequences.parquet"
    write_sequences(seqs, SEQS_A)
    _trained_model(tmp_path / "models", seqs, tmp_path / "supervision")
    trained_on = file_digest(seqs)
    out = {"metrics_path": tmp_path / "metrics.json", "per_user_path": tmp_path / "per_user.parquet"}
    run_evaluate(small.eval, NO_MLFLOW, seqs, tmp_path / "models", device="cpu", progress=False, **out)

    write_sequences(seqs, SEQS_B)  # same size, other interactions: metrics would be wrong with exit code 0
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(LineageError) as err:
        run_evaluate(small.eval, NO_MLFLOW, seqs, tmp_path / "models", device="cpu", progress=False, **out)
    msg = str(err.value)
    assert f"sha256 {file_digest(seqs)} now" in msg and f"built from sha256 {trained_on}" in msg
    assert f"{tmp_path / 'models' / 'config.json'}" in msg and "run the train stage" in msg
    assert not (tmp_path / "metrics.json").exists()


def test_check_model_with_an_old_config_is_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seqs = tmp_path / "sequences.parquet"
    write_sequences(seqs, SEQS_A)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "config.json").write_text('{"student": {}}')
    check_model(tmp_path / "models", seqs)
    assert "records no input digests" in caplog.text


# --------------------------------------------------------------------------------------------- correlate / train
def test_supervision_records_its_inputs_and_stale_supervision_is_refused(
    tmp_path: Path, small: Params
) -> None:
    seqs, emb, sup = tmp_path / "sequences.parquet", tmp_path / "emb", tmp_path / "sup"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "c" * 64)
    stats = run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, sup)
    assert stats["inputs"] == {"sequences": file_digest(seqs), "items": "c" * 64,
                               "embeddings/text": file_digest(emb / "text.parquet")}  # fmt: skip
    assert read_json(sup / "stats.json")["inputs"] == stats["inputs"]
    check_supervision(sup, seqs, ["text"])  # fresh: fine
    built_from = file_digest(seqs)
    _sequences_with_items(seqs, SEQS_B, "c" * 64)
    check_supervision(sup, seqs, [])  # ID-only training reads no supervision
    with pytest.raises(LineageError) as err:
        check_supervision(sup, seqs, ["text"])
    msg = str(err.value)
    assert f"sha256 {file_digest(seqs)} now" in msg and f"built from sha256 {built_from}" in msg
    assert f"{sup}/stats.json" in msg and "run the correlate stage" in msg


def test_embeddings_of_other_items_than_the_sequences_are_refused(tmp_path: Path, small: Params) -> None:
    seqs, emb, sup = tmp_path / "sequences.parquet", tmp_path / "emb", tmp_path / "sup"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "d" * 64)  # embedded from another items.parquet
    with pytest.raises(LineageError) as err:
        run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, sup)
    assert f"items (the items.parquet written with {seqs}): sha256 {'c' * 64} now" in str(err.value)
    assert f"built from sha256 {'d' * 64}" in str(err.value) and "run the embed stage" in str(err.value)
    assert not sup.exists()


def test_training_with_stale_supervision_fails_naming_both_digests(tmp_path: Path, small: Params) -> None:
    from pipeline.training.train import run_train

    seqs, emb, sup = tmp_path / "sequences.parquet", tmp_path / "emb", tmp_path / "sup"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "c" * 64)
    run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, sup)
    built_from = file_digest(seqs)
    _sequences_with_items(seqs, SEQS_B, "c" * 64)  # re-ingested; correlate not rerun
    with pytest.raises(LineageError) as err:
        run_train(small.train, "cos", small.eval, NO_MLFLOW, seqs, sup, tmp_path / "models",
                  tmp_path / "curve.csv", tmp_path / "ckpt", progress=False)  # fmt: skip
    assert f"built from sha256 {built_from}" in str(err.value) and "run the correlate stage" in str(err.value)
    assert not (tmp_path / "models").exists()


def test_trained_model_records_its_inputs(tmp_path: Path, small: Params) -> None:
    from pipeline.training.train import run_train

    seqs, emb, sup = tmp_path / "sequences.parquet", tmp_path / "emb", tmp_path / "sup"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "c" * 64)
    run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, sup)
    run_train(small.train, "cos", small.eval, NO_MLFLOW, seqs, sup, tmp_path / "models",
              tmp_path / "curve.csv", tmp_path / "ckpt", progress=False)  # fmt: skip
    assert read_json(tmp_path / "models" / "config.json")["inputs"] == model_inputs(seqs, sup, ["text"])


# --------------------------------------------------------------------------------------------- recommend (issue 23)
def _trained_recommender(root: Path) -> list[list[int]]:
    """A tiny model whose config records its inputs as the train stage does (sequences, catalogue)."""
    from helpers import write_tiny_recommender

    from pipeline.models import load_student, save_student

    seqs = write_tiny_recommender(root)
    processed = root / "data" / "processed"
    inputs = model_inputs(processed / "sequences.parquet", root / "data" / "supervision", [])
    save_student(load_student(root / "models"), root / "models", extra={"inputs": inputs})
    return seqs


def _reingest_other_catalogue(root: Path, n_items: int = 30) -> None:
    """What `data.demo.seed: 4` does: a catalogue of the same size with no id in common, other sequences."""
    processed = root / "data" / "processed"
    write_parquet(
        processed / "items.parquet",
        {"item": pa.array(range(1, n_items + 1), pa.int32()),
         "item_id": pa.array([f"C{i:09d}" for i in range(1, n_items + 1)], pa.string()),
         "text": pa.array([f"other {i}" for i in range(1, n_items + 1)], pa.string())},
    )  # fmt: skip
    write_sequences(
        processed / "sequences.parquet", [[(i + j) % n_items + 1 for j in range(5)] for i in range(23)]
    )


def test_trained_model_records_the_catalogue_digest(tmp_path: Path) -> None:
    from pipeline.lineage import catalogue_digest

    _trained_recommender(tmp_path)
    inputs = read_json(tmp_path / "models" / "config.json")["inputs"]
    assert inputs["catalogue"] == catalogue_digest([f"B{i:09d}" for i in range(1, 31)])
    assert inputs["catalogue"] != catalogue_digest([f"B{i:09d}" for i in range(2, 32)])


def test_recommend_stage_with_a_model_of_another_catalogue_fails_and_writes_nothing(tmp_path: Path) -> None:
    from pipeline.config import RecommendParams
    from pipeline.recommend.recommend import run_recommend

    _trained_recommender(tmp_path)
    processed, out = tmp_path / "data" / "processed", tmp_path / "data" / "recommendations.parquet"
    args = (RecommendParams(k=3), processed / "sequences.parquet", processed / "items.parquet",
            tmp_path / "models", out)  # fmt: skip
    assert run_recommend(*args, device="cpu", progress=False)["rows"] == 3 * 23  # same data: fine
    out.unlink()
    _reingest_other_catalogue(tmp_path)
    with pytest.raises(LineageError) as err:
        run_recommend(*args, device="cpu", progress=False)
    msg = str(err.value)
    assert (
        f"catalogue (the item ids of {processed / 'items.parquet'})" in msg and "run the train stage" in msg
    )
    assert not out.exists()


def test_recommend_cli_with_a_model_of_another_catalogue_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import stages.recommend as stage

    _trained_recommender(tmp_path)
    monkeypatch.chdir(tmp_path)
    _reingest_other_catalogue(tmp_path)
    with pytest.raises(LineageError, match=r"catalogue \(the item ids of data/processed/items.parquet\)"):
        stage.run(["--items", "C000000001", "C000000002", "--k", "3"])
    assert "top 3" not in capsys.readouterr().out


def test_recommend_with_a_model_recorded_before_the_catalogue_digest_checks_the_sequences(
    tmp_path: Path,
) -> None:
    from pipeline.lineage import check_recommender
    from pipeline.models import load_student, save_student

    _trained_recommender(tmp_path)
    processed = tmp_path / "data" / "processed"
    model = load_student(tmp_path / "models")
    save_student(
        model,
        tmp_path / "models",
        extra={"inputs": {"sequences": file_digest(processed / "sequences.parquet")}},
    )
    check_recommender(tmp_path / "models", processed / "items.parquet")  # same data: fine
    _reingest_other_catalogue(tmp_path)
    with pytest.raises(LineageError, match="sequences"):
        check_recommender(tmp_path / "models", processed / "items.parquet")


# --------------------------------------------------------------------------------------------- supervision files (issue 23)
def test_a_supervision_file_swapped_in_from_another_run_is_refused_by_train(
    tmp_path: Path, small: Params
) -> None:
    import shutil

    from pipeline.training.train import run_train

    seqs, emb = tmp_path / "sequences.parquet", tmp_path / "emb"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "c" * 64)
    stats = run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, tmp_path / "sup")
    assert stats["files"]["teacher_text.parquet"] == file_digest(tmp_path / "sup" / "teacher_text.parquet")
    assert set(stats["files"]) == {p.name for p in (tmp_path / "sup").iterdir()} - {"stats.json"}
    rotated = with_overrides(small, {"correlate.rotate": True})  # another run: same items, same size
    run_correlate(rotated.correlate, ["text"], NO_MLFLOW, emb, seqs, tmp_path / "other")
    swapped = tmp_path / "sup" / "teacher_text.parquet"
    shutil.copyfile(tmp_path / "other" / "teacher_text.parquet", swapped)
    assert file_digest(swapped) != stats["files"]["teacher_text.parquet"]
    with pytest.raises(LineageError) as err:
        run_train(small.train, "cos", small.eval, NO_MLFLOW, seqs, tmp_path / "sup", tmp_path / "models",
                  tmp_path / "curve.csv", tmp_path / "ckpt", progress=False)  # fmt: skip
    msg = str(err.value)
    assert f"teacher_text.parquet ({swapped}): sha256 {file_digest(swapped)} now" in msg
    assert (
        f"built from sha256 {stats['files']['teacher_text.parquet']}" in msg
        and "dvc repro -f correlate" in msg
    )
    assert not (tmp_path / "models").exists()


def test_supervision_written_before_file_digests_is_used_with_a_warning(
    tmp_path: Path, small: Params, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.lineage import check_supervision_files

    seqs, emb, sup = tmp_path / "sequences.parquet", tmp_path / "emb", tmp_path / "sup"
    _sequences_with_items(seqs, SEQS_A, "c" * 64)
    _embeddings(emb / "text.parquet", 8, "c" * 64)
    run_correlate(small.correlate, ["text"], NO_MLFLOW, emb, seqs, sup)
    check_supervision_files(sup, ["text"])  # fresh: fine, no warning
    assert "records no digests" not in caplog.text
    old = read_json(sup / "stats.json")
    del old["files"]
    (sup / "stats.json").write_text(__import__("json").dumps(old))
    check_supervision_files(sup, ["text"])
    assert f"{sup / 'stats.json'} records no digests of the supervision files" in caplog.text
    assert "dvc repro -f correlate" in caplog.text
