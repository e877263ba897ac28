"""The Amazon 2023 benchmark CSV source (``amazon2023_csv``): official splits kept end to end, bad rows named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataParams, MLflowParams, stage_params
from pipeline.data.ingest import run_ingest
from pipeline.data.sources.benchmark import BENCHMARK_URL, read_benchmark_csv
from pipeline.errors import DataError
from pipeline.evaluation.cases import load_eval_cases
from pipeline.io import parquet_metadata
from pipeline.layout import Layout
from pipeline.runner import run_stage

NO_MLFLOW = MLflowParams(enabled=False)
HEADER = "user_id,parent_asin,rating,timestamp"

# last_out, 5 users. UA: 3 train, valid B4, test B9 (B9 only occurs in test: kept, no training row);
# UB: train rows out of time order in the file (ordered by timestamp), a tie broken by line; UC: no training
# row (dropped with its held-out rows); UD: training rows only; UE: the smallest sequence (1 train item).
TRAIN = [
    ("UA", "B1", 5.0, 1000),
    ("UB", "B3", 4.0, 3000),
    ("UA", "B2", 3.0, 2000),
    ("UB", "B1", 4.0, 1000),
    ("UA", "B3", 1.0, 3000),
    ("UB", "B5", 2.0, 3000),  # same timestamp as B3 of UB, later line
    ("UD", "B2", 5.0, 500),
    ("UD", "B6", 5.0, 600),
    ("UE", "B7", 5.0, 100),
]
VALID = [("UA", "B4", 5.0, 4000), ("UB", "B2", 5.0, 4000), ("UC", "B1", 3.0, 10), ("UE", "B8", 3.0, 200)]
TEST = [("UA", "B9", 5.0, 5000), ("UB", "B6", 1.0, 5000), ("UC", "B2", 2.0, 20), ("UE", "B1", 4.0, 300)]
TITLES = {f"B{k}": f"Item {k}" for k in range(1, 9)}  # B9 has no metadata record


def _rows(rows: list[tuple[str, str, float, int]], history: bool = False) -> list[str]:
    out, seen = [], {}
    for u, i, r, t in rows:
        line = f"{u},{i},{r},{t}"
        out.append(line + (f",{' '.join(seen.get(u, []))}" if history else ""))
        seen.setdefault(u, []).append(i)
    return out


def _write(path: Path, lines: list[str], header: str | None = HEADER) -> Path:
    text = "\n".join(([header] if header else []) + lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _meta(folder: Path) -> Path:
    lines = [
        json.dumps({"parent_asin": a, "title": t, "images": [], "store": f"S{int(a[1:]) % 2}"})
        for a, t in TITLES.items()
    ]
    return _write(folder / "meta_Cat.jsonl", lines, header=None)


def _params(folder: Path, **benchmark: Any) -> DataParams:
    files = {p: str(folder / f"Cat.{p}.csv") for p in ("train", "valid", "test")}
    return DataParams(
        source="amazon2023_csv",
        category="Cat",
        raw_dir=str(folder / "raw"),
        text_columns=["title"],
        image_column=None,
        benchmark={
            **{f"{p}_file": f for p, f in files.items()},
            "meta_file": str(_meta(folder)),
            **benchmark,
        },
    )


def _fixture(folder: Path, history: bool = False, header: str | None = HEADER) -> DataParams:
    folder.mkdir(parents=True, exist_ok=True)
    if history and header:
        header += ",history"
    _write(folder / "Cat.train.csv", _rows(TRAIN, history), header)
    _write(folder / "Cat.valid.csv", _rows(VALID, history), header)
    _write(folder / "Cat.test.csv", _rows(TEST, history), header)
    return _params(folder)


def _run(data: DataParams, tmp: Path) -> tuple[dict[str, Any], dict[str, tuple[list[str], int, int]]]:
    stats = run_ingest(data, NO_MLFLOW, tmp / "out", tmp / "stats.json")
    items = pq.read_table(tmp / "out" / "items.parquet").column("item_id").to_pylist()
    seqs = pq.read_table(tmp / "out" / "sequences.parquet").to_pylist()
    by_user = {
        r["user_id"]: ([items[k - 1] for k in r["items"]], r["train_end"], r["valid_end"]) for r in seqs
    }
    return stats, by_user


def test_official_last_out_split_is_kept_end_to_end(tmp_path: Path) -> None:
    data = _fixture(tmp_path)
    stats, seqs = _run(data, tmp_path)
    assert seqs == {
        "UA": (["B1", "B2", "B3", "B4", "B9"], 3, 4),
        "UB": (["B1", "B3", "B5", "B2", "B6"], 3, 4),
        "UD": (["B2", "B6"], 2, 2),
        "UE": (["B7", "B8", "B1"], 1, 2),
    }
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [r["item_id"] for r in items] == [f"B{k}" for k in range(1, 10)]  # B4, B8, B9: held out only, kept
    assert [r["text"] for r in items] == [f"Item {k}" for k in range(1, 9)] + [""]
    assert stats["split"] == "official:last_out" and "kcore" not in stats
    assert stats["dropped"]["users_without_training_items"] == 1
    assert stats["dropped"]["held_out_rows_of_those_users"] == 2
    assert stats["official"] == {
        "items_only_held_out": 3,  # B4, B8, B9
        "interactions_of_items_only_held_out": 3,
        "users_without_valid_target": 1,
        "users_without_test_target": 1,
    }
    assert stats["split_sizes"] == {"train_interactions": 9, "valid_targets": 3, "test_targets": 3}
    assert stats["records"] == {
        "Cat.train.csv": 9,
        "Cat.valid.csv": 4,
        "Cat.test.csv": 4,
        "meta_Cat.jsonl": 8,
    }
    assert parquet_metadata(tmp_path / "out" / "sequences.parquet")["split"] == "official:last_out"

    # evaluate scores exactly the official held-out items, each from everything before it
    items_of = {r["item"]: r["item_id"] for r in items}
    users_of = {
        r["user"]: r["user_id"] for r in pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()
    }
    for part, rows in (("valid", VALID), ("test", TEST)):
        cases = load_eval_cases(tmp_path / "out" / "sequences.parquet", part, max_len=4)
        got = {
            (users_of[int(u)], items_of[int(t)])
            for u, t in zip(cases.users, cases.targets.numpy(), strict=True)
        }
        assert got == {(u, i) for u, i, _, _ in rows if u != "UC"}
    test = load_eval_cases(tmp_path / "out" / "sequences.parquet", "test", max_len=4)
    ua = int(np.flatnonzero([users_of[int(u)] == "UA" for u in test.users])[0])
    assert [items_of[int(k)] for k in test.inputs[ua].tolist()] == ["B1", "B2", "B3", "B4"]


def test_attributes_of_the_2023_metadata_reach_the_items(tmp_path: Path) -> None:
    data = _fixture(tmp_path).model_copy(update={"attribute_columns": {"brand": None}})  # 2023: "store"
    stats, _ = _run(data, tmp_path)
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [r["attributes"] for r in items] == [[f"brand=S{k % 2}"] for k in range(1, 9)] + [
        []
    ]  # B9: no record
    assert stats["metadata"]["items_with_attributes"] == 8


def test_the_stage_runs_on_a_params_file_through_its_declared_view(tmp_path: Path) -> None:
    """The ingest stage reads only what dvc.yaml declares: data.benchmark must be readable through the view."""
    data = _fixture(tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        json.dumps({"base": "defaults", "data": data.model_dump(), "mlflow": {"enabled": False}})
    )
    stats = run_stage("ingest", stage_params("ingest", params_file), Layout.flat(tmp_path / "flat"))
    assert (stats["users"], stats["items"], stats["split"]) == (4, 9, "official:last_out")


def test_headerless_files_and_the_history_column_give_the_same_sequences(tmp_path: Path) -> None:
    _, reference = _run(_fixture(tmp_path / "a"), tmp_path / "a")
    for name, kwargs in {
        "w_his": {"history": True},
        "plain": {"header": None},
        "both": {"history": True, "header": None},
    }.items():
        folder = tmp_path / name
        _, seqs = _run(_fixture(folder, **kwargs), folder)
        assert seqs == reference, name


def test_default_paths_and_gzip_files_under_raw_dir(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "amazon2023_csv" / "5core" / "timestamp"
    folder.mkdir(parents=True)
    _write(folder / "Cat.train.csv.gz", _rows(TRAIN))
    _write(folder / "Cat.valid.csv", _rows(VALID))
    _write(folder / "Cat.test.csv.gz", _rows(TEST))
    (tmp_path / "raw" / "amazon2023").mkdir()
    _meta(tmp_path / "raw" / "amazon2023")
    data = DataParams(
        source="amazon2023_csv",
        category="Cat",
        raw_dir=str(tmp_path / "raw"),
        text_columns=["title"],
        image_column=None,
        benchmark={"split": "timestamp"},
    )
    stats, seqs = _run(data, tmp_path)
    assert seqs["UA"] == (["B1", "B2", "B3", "B4", "B9"], 3, 4) and stats["split"] == "official:timestamp"


def test_timestamp_split_keeps_several_held_out_rows_per_user(tmp_path: Path) -> None:
    _write(tmp_path / "Cat.train.csv", _rows(TRAIN))
    _write(tmp_path / "Cat.valid.csv", _rows([*VALID, ("UA", "B5", 1.0, 4500), ("UD", "B7", 1.0, 4100)]))
    _write(tmp_path / "Cat.test.csv", _rows([*TEST, ("UA", "B6", 2.0, 4900)]))
    _, seqs = _run(_params(tmp_path, split="timestamp"), tmp_path)
    assert seqs["UA"] == (["B1", "B2", "B3", "B4", "B5", "B6", "B9"], 3, 5)
    assert seqs["UD"] == (["B2", "B6", "B7"], 2, 3)


def test_last_out_refuses_a_second_held_out_row_naming_file_and_line(tmp_path: Path) -> None:
    _fixture(tmp_path)
    _write(tmp_path / "Cat.test.csv", _rows([*TEST, ("UB", "B7", 1.0, 6000)]))
    with pytest.raises(DataError) as err:
        run_ingest(_params(tmp_path), NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert f"{tmp_path / 'Cat.test.csv'}:6: user 'UB' has a second test row (the first is line 3)" in str(
        err.value
    )
    assert not (tmp_path / "out").exists()


def test_malformed_rows_are_skipped_counted_and_named_by_line(tmp_path: Path) -> None:
    lines = [
        "U1,B1,5.0,100",
        "U1,B2,5.0",  # line 3: too few fields
        "",  # line 4: blank, not a record
        "U1,,5.0,300",  # line 5
        "U1,B3,5.0,12:00",  # line 6
        "U1,B4,five,400",  # line 7
        "U1,B5,5.0,500,extra",  # line 8
        " U2 , B6 ,4.0, 600 \r",  # line 9: spaces and a CR are trimmed
    ]
    path = tmp_path / "x.csv"
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode() + b"U3,B\xff7,1.0,700\n")  # line 10
    df, report = read_benchmark_csv(path)
    assert df.rows() == [("U1", "B1", 100, 2), ("U2", "B6", 600, 9)]
    assert (report.records, report.malformed) == (8, 6)
    assert report.examples == [
        (3, "3 fields, expected 4 (user_id,parent_asin,rating,timestamp)"),
        (5, "empty parent_asin"),
        (6, "timestamp 12:00 is not an integer"),
        (7, "rating is not a number"),
        (8, "5 fields, expected 4 (user_id,parent_asin,rating,timestamp)"),
    ]
    with pytest.raises(DataError, match=rf"{path}: 6 of 8 records are malformed .* line 3: 3 fields"):
        report.check(0.01)


def test_too_many_malformed_rows_fail_the_stage_naming_the_file(tmp_path: Path) -> None:
    _fixture(tmp_path)
    _write(tmp_path / "Cat.valid.csv", [*_rows(VALID), "UF,B1,4.0,not-a-time"])
    with pytest.raises(DataError) as err:
        run_ingest(_params(tmp_path), NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert f"{tmp_path / 'Cat.valid.csv'}: 1 of 5 records are malformed" in str(err.value)
    assert "line 6: timestamp not-a-time is not an integer" in str(err.value)


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        ("user_id,item_id,rating,timestamp", ":1: column(s) ['parent_asin'] missing; the header has"),
        ("U1,B1,5.0", ":1: no header and 3 fields"),
        (None, ": empty file"),
    ],
)
def test_a_missing_column_or_an_empty_file_is_refused_naming_the_file(
    tmp_path: Path, first_line: str | None, message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text("" if first_line is None else first_line + "\nU1,B1,5.0,1\n")
    with pytest.raises(DataError) as err:
        read_benchmark_csv(path)
    assert f"{path}{message}" in str(err.value)


def test_a_truncated_gzip_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    blob = gzip.compress(
        ("\n".join([HEADER] + [f"U{k},B{k % 7},5.0,{k}" for k in range(20_000)]) + "\n").encode()
    )
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as err:
        read_benchmark_csv(path)
    assert str(err.value).startswith(f"{path}: ")


def test_nothing_left_without_training_rows_reports_each_step(tmp_path: Path) -> None:
    _fixture(tmp_path)
    _write(tmp_path / "Cat.train.csv", [])  # the header only
    with pytest.raises(DataError) as err:
        run_ingest(_params(tmp_path), NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert str(err.value).startswith(
        "no interactions left: 8 rows parsed from Cat.train.csv, Cat.valid.csv, Cat.test.csv (0 malformed rows "
        "skipped) -> 8 after dropping 0 repeated (user, item) rows -> 0 after dropping the 4 users without a "
        "training row"
    )
    assert not (tmp_path / "out").exists()


def test_missing_files_name_the_expected_paths_and_urls(tmp_path: Path) -> None:
    data = DataParams(source="amazon2023_csv", category="Cat", raw_dir=str(tmp_path / "raw"))
    with pytest.raises(DataError) as err:
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    msg = str(err.value)
    folder = tmp_path / "raw" / "amazon2023_csv" / "5core" / "last_out"
    for part in ("train", "valid", "test"):
        assert f"{folder / f'Cat.{part}.csv.gz'} or {folder / f'Cat.{part}.csv'}" in msg
        assert BENCHMARK_URL.format(core="5core", split="last_out", category="Cat", part=part) in msg
    assert str(tmp_path / "raw" / "amazon2023" / "meta_Cat.jsonl.gz") in msg
    assert BENCHMARK_URL.startswith("https://")
