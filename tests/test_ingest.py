"""The ingest stage: k-core, splits, ordering/dedup/numbering, outputs, bad input, determinism, Beauty."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import BEAUTY_DIR, requires_beauty

from pipeline.config import DataParams, MLflowParams, Params, with_overrides
from pipeline.data import ingest as ingest_module
from pipeline.data.ingest import build_dataset, run_ingest
from pipeline.data.kcore import kcore_filter
from pipeline.data.records import INTERACTION_SCHEMA, ITEM_SCHEMA, FileReport, RawData
from pipeline.data.splits import leave_one_out_split, ratio_split, split_boundaries
from pipeline.errors import DataError
from pipeline.io import parquet_metadata
from pipeline.layout import Layout

NO_MLFLOW = MLflowParams(enabled=False)
PROJECT = Layout.project(Path())  # the stage's outputs, relative to the working directory


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- k-core
def test_kcore_needs_three_passes_to_reach_the_fixed_point() -> None:
    # users u0..u3 = 0..3, items i0..i2 = 0..2; k = 2 for both.
    # pass 1 drops u3 (1 interaction); then i2 has 1 -> pass 2 drops (u2, i2); then u2 has 1 -> pass 3.
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 1, 1, 2, 2])
    res = kcore_filter(users, items, min_user=2, min_item=2)
    assert res.keep.tolist() == [True, True, True, True, False, False, False]
    assert sorted(set(users[res.keep].tolist())) == [0, 1]
    assert sorted(set(items[res.keep].tolist())) == [0, 1]
    assert (res.passes, res.users_dropped, res.items_dropped, res.interactions_dropped) == (3, 2, 1, 3)


def test_kcore_with_different_user_and_item_thresholds() -> None:
    # users need 3, items need 1: u1 (2 interactions) goes, nothing cascades
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 0, 3])
    res = kcore_filter(users, items, min_user=3, min_item=1)
    assert res.keep.tolist() == [True, True, True, False, False]
    assert (res.passes, res.users_dropped, res.items_dropped) == (1, 1, 1)


def test_kcore_result_is_a_fixed_point_on_random_data() -> None:
    rng = np.random.default_rng(0)
    pairs = np.unique(
        np.stack([rng.integers(0, 300, 4000), (rng.pareto(1.0, 4000) * 10).astype(int) % 400], 1), axis=0
    )
    users, items = pairs[:, 0], pairs[:, 1]
    res = kcore_filter(users, items, 5, 5)
    u, i = users[res.keep], items[res.keep]
    assert u.size > 0 and res.passes >= 2
    assert np.bincount(u)[np.unique(u)].min() >= 5 and np.bincount(i)[np.unique(i)].min() >= 5
    again = kcore_filter(u, i, 5, 5)
    assert again.keep.all() and again.passes == 0


def test_kcore_empty_input() -> None:
    res = kcore_filter(np.array([], dtype=int), np.array([], dtype=int), 5, 5)
    assert res.keep.size == 0 and res.passes == 0


# --------------------------------------------------------------------------------------------- splits
def test_leave_one_out_boundaries() -> None:
    train_end, valid_end = leave_one_out_split(np.array([3, 5, 10]))
    assert train_end.tolist() == [1, 3, 8]
    assert valid_end.tolist() == [2, 4, 9]
    assert train_end.dtype == np.int32


def test_ratio_boundaries() -> None:
    lengths = np.array([3, 5, 10, 12, 13, 20])
    # test counts round(0.2 n) half up, >= 1: 1 (0.6), 1 (1.0), 2, 2 (2.4), 3 (2.6), 4
    train_end, valid_end = ratio_split(lengths, 0.2)
    assert valid_end.tolist() == [2, 4, 8, 10, 10, 16]
    assert train_end.tolist() == [1, 3, 7, 9, 9, 15]
    # 0.5: 5 -> 2.5 rounds up to 3 (= n - 2, allowed); 7 -> 3.5 -> 4; 4 -> 2; always >= 1 training item
    train_end, valid_end = ratio_split(np.array([5, 7, 4]), 0.5)
    assert valid_end.tolist() == [2, 3, 2]
    assert train_end.tolist() == [1, 2, 1]
    # a fraction that would leave no training item is capped at n - 2 test items
    assert ratio_split(np.array([5]), 0.9)[0].tolist() == [1]


def test_split_rejects_short_sequences_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        split_boundaries(np.array([2, 5]), "loo")
    with pytest.raises(ValueError, match="unknown split"):
        split_boundaries(np.array([5]), "random")


# --------------------------------------------------------------------------------------------- processing
def make_raw(
    events: list[tuple[str, str, int, int]], meta: list[tuple[str, str, str | None]], numeric=False
) -> RawData:
    inter = pl.DataFrame(events, schema=INTERACTION_SCHEMA, orient="row")
    meta = [m if len(m) == 4 else (*m, []) for m in meta]  # (item_id, text, image[, attributes])
    items = pl.DataFrame(meta, schema=ITEM_SCHEMA, orient="row")
    return RawData(inter, items, numeric_ids=numeric, reports=[FileReport(Path("r.json"), len(events))])


def test_order_ties_duplicates_numbering_and_missing_metadata() -> None:
    events = [  # (user, item, ts, line)
        ("ub", "x", 5, 3),
        ("ub", "y", 5, 1),  # same time as x, earlier in the file: comes first
        ("ub", "z", 1, 7),
        ("ub", "y", 9, 9),  # repeat of (ub, y): dropped, the earliest is kept
        ("ua", "y", 2, 2),
        ("ua", "w", 3, 4),
        ("ua", "x", 4, 5),
    ]
    meta = [("x", "X text", "img/x.png", ["b=1"]), ("y", "Y text", None), ("w", "W", None)]  # z: no metadata
    ds = build_dataset(make_raw(events, meta), kcore=1, split="loo")
    # items numbered by sorted id: w=1 x=2 y=3 z=4; users: ua=1 ub=2
    assert ds.sequences.to_pylist() == [
        {"user": 1, "user_id": "ua", "items": [3, 1, 2], "train_end": 1, "valid_end": 2},
        {"user": 2, "user_id": "ub", "items": [4, 3, 2], "train_end": 1, "valid_end": 2},
    ]
    assert ds.items.to_pylist() == [
        {"item": 1, "item_id": "w", "text": "W", "image": None, "attributes": []},
        {"item": 2, "item_id": "x", "text": "X text", "image": "img/x.png", "attributes": ["b=1"]},
        {"item": 3, "item_id": "y", "text": "Y text", "image": None, "attributes": []},
        {"item": 4, "item_id": "z", "text": "", "image": None, "attributes": []},
    ]
    assert str(ds.sequences.schema.field("items").type) == "list<item: int32>"
    assert ds.sequences.schema.field("user").type == "int32" and ds.items.schema.field("item").type == "int32"
    s = ds.stats
    assert (s["users"], s["items"], s["interactions"]) == (2, 4, 6)
    assert s["dropped"]["duplicates"] == 1
    assert s["metadata"] == {"items_without_metadata": 1, "interactions_without_metadata": 1,
                             "items_without_text": 1, "items_with_image": 1, "items_with_attributes": 1}  # fmt: skip
    assert s["density"] == pytest.approx(6 / 8)
    assert s["split_sizes"] == {"train_interactions": 2, "valid_targets": 2, "test_targets": 2}


def test_numeric_ids_keep_their_numeric_order() -> None:
    events = [
        ("10", "2", 0, 0),
        ("10", "10", 1, 1),
        ("10", "9", 2, 2),
        ("9", "9", 3, 3),
        ("9", "2", 4, 4),
        ("9", "10", 5, 5),
    ]
    ds = build_dataset(make_raw(events, [], numeric=True), kcore=1, split="loo")
    assert ds.items.column("item_id").to_pylist() == ["2", "9", "10"]  # not "10" < "2"
    assert ds.sequences.column("user_id").to_pylist() == ["9", "10"]
    assert ds.sequences.column("items").to_pylist() == [[2, 1, 3], [1, 3, 2]]


def test_users_shorter_than_three_are_dropped_even_with_kcore_1() -> None:
    events = [("a", "x", 0, 0), ("a", "y", 1, 1), ("b", "x", 0, 2), ("b", "y", 1, 3), ("b", "z", 2, 4)]
    ds = build_dataset(make_raw(events, []), kcore=1, split="ratio", test_fraction=0.2)
    assert ds.sequences.column("user_id").to_pylist() == ["b"]
    assert ds.stats["dropped"]["kcore_users"] == 1


def test_empty_after_filtering_reports_each_step() -> None:
    events = [("a", "x", 0, 0), ("a", "x", 1, 1), ("a", "y", 2, 2), ("b", "y", 0, 3)]
    with pytest.raises(DataError) as err:
        build_dataset(make_raw(events, []), kcore=5, split="loo")
    msg = str(err.value)
    assert "no interactions left after filtering: 4 parsed from r.json" in msg
    assert "-> 3 after dropping 1 repeated (user, item) events" in msg
    assert "-> 0 after the iterative 5-core" in msg and "dropped 2 users, 2 items and 3 interactions" in msg


# --------------------------------------------------------------------------------------------- run_ingest
@pytest.fixture
def tiny_data(tiny_params: Params) -> Any:
    return tiny_params.data


def test_demo_ingest_is_deterministic_and_matches_the_contract(in_tmp_project: Path, tiny_data: Any) -> None:
    stats = run_ingest(tiny_data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats)
    out = Path("data/processed")
    first = {
        name: digest(out / name)
        for name in ("items.parquet", "sequences.parquet", "demo_raw/meta_Beauty.json.gz")
    }
    stats_text = Path("reports/data_stats.json").read_text()
    stats2 = run_ingest(
        tiny_data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats
    )  # replaces the existing output
    assert {name: digest(out / name) for name in first} == first
    assert Path("reports/data_stats.json").read_text() == stats_text and stats == stats2
    assert sorted(p.name for p in Path("data").iterdir()) == ["processed"]  # no temporary folders left

    items = pq.read_table(out / "items.parquet")
    seqs = pq.read_table(out / "sequences.parquet")
    n, u = items.num_rows, seqs.num_rows
    assert items.column("item").to_pylist() == list(range(1, n + 1))
    assert items.column("item_id").to_pylist() == sorted(items.column("item_id").to_pylist())
    assert seqs.column("user").to_pylist() == list(range(1, u + 1))
    flat = np.concatenate([np.asarray(s) for s in seqs.column("items").to_pylist()])
    assert flat.min() == 1 and flat.max() == n and len(np.unique(flat)) == n
    lengths = np.array([len(s) for s in seqs.column("items").to_pylist()])
    assert (seqs.column("train_end").to_numpy() == lengths - 2).all()
    assert (seqs.column("valid_end").to_numpy() == lengths - 1).all()
    assert np.bincount(flat)[1:].min() >= 5 and lengths.min() >= 5  # a 5-core
    assert (stats["users"], stats["items"], stats["interactions"]) == (u, n, int(lengths.sum()))
    summary = stats["sequence_length"]
    assert summary["min"] == lengths.min() and summary["median"] == np.median(lengths)
    assert summary["mean"] == pytest.approx(lengths.mean())
    assert stats["dropped"]["duplicates"] > 0  # the demo repeats a few reviews
    seq_meta = parquet_metadata(out / "sequences.parquet")
    assert seq_meta.pop("items_sha256") == digest(out / "items.parquet")  # lineage of the numbering
    assert seq_meta == parquet_metadata(out / "items.parquet") == {
        "source": "demo", "category": "Beauty", "split": "loo", "kcore": 5, "min_user_interactions": 5
    }  # fmt: skip
    # text assembled from title | brand | categories with entities unescaped; images point into the output
    texts = items.column("text").to_pylist()
    assert all(t for t in texts) and not any("&amp;" in t for t in texts) and any(" & " in t for t in texts)
    images = items.column("image").to_pylist()
    assert all(img.startswith("data/processed/demo_raw/images/") and Path(img).exists() for img in images)
    assert json.loads(stats_text)["users"] == u


def test_ratio_split_metadata(in_tmp_project: Path, tiny_params: Params) -> None:
    data = with_overrides(tiny_params, {"data.split": "ratio", "data.demo.images": False}).data
    stats = run_ingest(data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats)
    seqs = pq.read_table("data/processed/sequences.parquet")
    lengths = np.array([len(s) for s in seqs.column("items").to_pylist()])
    n_test = np.maximum(1, np.floor(0.2 * lengths + 0.5))
    assert (seqs.column("valid_end").to_numpy() == lengths - n_test).all()
    assert parquet_metadata("data/processed/items.parquet")["test_fraction"] == 0.2
    assert stats["metadata"]["items_with_image"] == 0
    assert pq.read_table("data/processed/items.parquet").column("image").null_count == stats["items"]


def test_demo_attributes_come_from_brand_and_categories(in_tmp_project: Path, tiny_params: Params) -> None:
    from pipeline.artifacts.items import read_attributes

    over = {"data.attribute_columns": {"brand": None, "categories": None}, "data.demo.images": False}
    stats = run_ingest(
        with_overrides(tiny_params, over).data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats
    )
    attrs = pq.read_table("data/processed/items.parquet").column("attributes").to_pylist()
    assert stats["metadata"]["items_with_attributes"] == sum(1 for a in attrs if a) > 0.9 * len(attrs)
    assert all(a.startswith(("brand=", "categories=")) and "&amp;" not in a for item in attrs for a in item)
    assert all(len(item) == len(set(item)) for item in attrs)  # a category repeated across paths: once
    ids, names = read_attributes(Path("data/processed/items.parquet"), len(attrs))
    assert ids.shape[0] == len(attrs) + 1 and (ids[0] == 0).all()
    assert any(n.startswith("brand=") for n in names) and any(n.startswith("categories=") for n in names)


def test_missing_raw_files_name_the_expected_paths(tmp_path: Path) -> None:
    data = DataParams(source="amazon2014", category="Toys", raw_dir=str(tmp_path / "raw"))
    with pytest.raises(DataError) as err:
        run_ingest(data, NO_MLFLOW, tmp_path / "processed", tmp_path / "stats.json")
    msg = str(err.value)
    assert (
        f"{tmp_path}/raw/amazon2014/reviews_Toys_5.json.gz or {tmp_path}/raw/amazon2014/ratings_Toys.csv"
        in msg
    )
    assert f"{tmp_path}/raw/amazon2014/meta_Toys.json.gz" in msg and "data.download: true" in msg
    assert not (tmp_path / "processed").exists() and not (tmp_path / "stats.json").exists()


def _write_2014(raw: Path, review_lines: list[str]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "reviews_Cat_5.json.gz").write_bytes(gzip.compress(("\n".join(review_lines) + "\n").encode()))
    meta = b"{'asin': 'B1', 'title': 'One', 'brand': 'Acme', 'categories': [['Cat']], 'imUrl': 'http://x/1.jpg'}\n"
    (raw / "meta_Cat.json.gz").write_bytes(gzip.compress(meta))


def test_too_many_bad_lines_fail_and_an_existing_output_survives(
    in_tmp_project: Path, tiny_data: Any
) -> None:
    run_ingest(tiny_data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats)
    before = {p.relative_to("data"): digest(p) for p in Path("data").rglob("*") if p.is_file()}
    stats_before = Path("reports/data_stats.json").read_text()

    good = [
        json.dumps({"reviewerID": f"U{k % 7}", "asin": f"B{k % 5}", "unixReviewTime": k}) for k in range(98)
    ]
    _write_2014(Path("raw/amazon2014"), good[:50] + ["{broken", '{"asin": "B1"}'] + good[50:])
    bad = DataParams(source="amazon2014", category="Cat", raw_dir="raw", max_bad_fraction=0.01)
    with pytest.raises(
        DataError, match=r"reviews_Cat_5\.json\.gz: 2 of 100 records are malformed.*line 51.*line 52"
    ):
        run_ingest(bad, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats)
    after = {p.relative_to("data"): digest(p) for p in Path("data").rglob("*") if p.is_file()}
    assert after == before and Path("reports/data_stats.json").read_text() == stats_before
    assert sorted(p.name for p in Path("data").iterdir()) == ["processed"]

    # within tolerance the same file is ingested, and the malformed records are counted per file
    ok = DataParams(source="amazon2014", category="Cat", raw_dir="raw", max_bad_fraction=0.05, kcore=2)
    stats = run_ingest(ok, NO_MLFLOW, Path("out"), Path("out_stats.json"))
    assert stats["malformed"] == {"reviews_Cat_5.json.gz": 2, "meta_Cat.json.gz": 0}
    assert stats["records"] == {"reviews_Cat_5.json.gz": 100, "meta_Cat.json.gz": 1}
    assert stats["raw"]["interactions"] == 98 and stats["metadata"]["items_without_metadata"] == 4


def test_empty_after_filtering_fails_the_stage(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "amazon2014"
    _write_2014(
        raw, [json.dumps({"reviewerID": f"U{k}", "asin": "B1", "unixReviewTime": k}) for k in range(4)]
    )
    data = DataParams(source="amazon2014", category="Cat", raw_dir=str(tmp_path / "raw"))
    with pytest.raises(
        DataError, match="no interactions left after filtering: 4 parsed from reviews_Cat_5.json.gz"
    ):
        run_ingest(data, NO_MLFLOW, tmp_path / "processed", tmp_path / "stats.json")
    assert not (tmp_path / "processed").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ingest_logs_params_and_numeric_stats_to_mlflow(
    in_tmp_project: Path, tiny_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, Any] = {}

    class FakeTracker:
        def log_params(self, params: dict) -> None:
            calls["params"] = params

        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            calls["metrics"] = metrics

        def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
            calls["artifact"] = Path(path)

    @contextlib.contextmanager
    def fake_start_run(stage: str, mlflow_params: Any, **kwargs: Any) -> Iterator[FakeTracker]:
        calls["stage"] = stage
        yield FakeTracker()

    monkeypatch.setattr(ingest_module, "start_run", fake_start_run)
    data = with_overrides(Params(data=tiny_data), {"data.demo.images": False}).data
    stats = run_ingest(data, NO_MLFLOW, PROJECT.processed, PROJECT.data_stats)
    assert calls["stage"] == "ingest"
    assert calls["params"]["data"]["source"] == "demo" and calls["params"]["data"]["demo"]["users"] == 300
    assert calls["metrics"]["users"] == stats["users"] and calls["metrics"]["sequence_length"]["p90"] > 0
    assert calls["artifact"] == Path("reports/data_stats.json")


# --------------------------------------------------------------------------------------------- real data
@requires_beauty
@pytest.mark.real_data
def test_beauty_sequences_source(tmp_path: Path) -> None:
    data = DataParams(
        source="sequences",
        sequences_file=str(BEAUTY_DIR / "Beauty.txt"),
        items_file=str(BEAUTY_DIR / "items.tsv"),
        text_columns=["idgenrec_text", "s3rec_attribute_names"],
        image_column=None,  # items.tsv has no image column: naming one would fail
        kcore=5,
    )
    stats = run_ingest(data, NO_MLFLOW, tmp_path / "processed", tmp_path / "stats.json")
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["dropped"]["kcore_interactions"] == 0 and stats["dropped"]["duplicates"] == 0
    assert (
        stats["sequence_length"]["min"],
        stats["sequence_length"]["median"],
        stats["sequence_length"]["max"],
    ) == (5, 6, 204)
    items = pq.read_table(tmp_path / "processed" / "items.parquet")
    assert items.column("item_id").to_pylist()[:3] == ["1", "2", "3"]  # Beauty item k stays k
    assert (
        items.column("text")[1].as_py()
        == "red shatter crackle nail polish e55 | OPI | Makeup | Nails | Nail Polish"
    )
    assert items.column("image").null_count == 12_101
    seqs = pq.read_table(tmp_path / "processed" / "sequences.parquet").slice(0, 2).to_pylist()
    assert seqs[0]["items"] == [1, 2, 3, 4, 5] and seqs[1]["items"] == [6, 7, 8, 9, 10, 4, 11]
    assert (seqs[0]["train_end"], seqs[0]["valid_end"]) == (3, 4)
    assert parquet_metadata(tmp_path / "processed" / "items.parquet")["category"] == "Beauty"
