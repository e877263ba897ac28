"""The artefact readers and writers: known answers (CSR sequences, round trips) and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_sequences

from pipeline.artifacts import (
    Sequences,
    read_item_vectors,
    read_items,
    read_neighbours,
    read_sequences,
    write_item_vectors,
    write_neighbours,
)
from pipeline.errors import DataError
from pipeline.evaluation.cases import build_eval_cases, cases_from_sequences
from pipeline.io import write_parquet


def test_three_users_read_into_exact_csr(tmp_path: Path) -> None:
    path = tmp_path / "sequences.parquet"
    write_sequences(path, [[3, 1, 4, 1], [5, 9], [2, 6, 5]], [2, 0, 1], [3, 1, 2])
    s = read_sequences(path)
    assert isinstance(s, Sequences)
    assert s.users.tolist() == [1, 2, 3]
    assert s.flat.tolist() == [3, 1, 4, 1, 5, 9, 2, 6, 5]
    assert s.offsets.tolist() == [0, 4, 6, 9]
    assert s.train_end.tolist() == [2, 0, 1]
    assert s.valid_end.tolist() == [3, 1, 2]
    for arr in (s.users, s.flat, s.offsets, s.train_end, s.valid_end):
        assert arr.dtype == np.int64
    assert s.num_users == 3 and s.num_items == 9
    assert s.lengths.tolist() == [4, 2, 3]
    assert s.items_of(1).tolist() == [5, 9]
    assert [s.items_of(u).tolist() for u in range(s.num_users)] == [[3, 1, 4, 1], [5, 9], [2, 6, 5]]


def test_csr_cases_equal_the_per_user_cases(tmp_path: Path) -> None:
    path = tmp_path / "sequences.parquet"
    items = [[3, 1, 4, 1], [5, 9], [2, 6, 5]]
    write_sequences(path, items, [2, 1, 1], [3, 1, 2])
    s = read_sequences(path)
    for part in ("valid", "test"):
        a = cases_from_sequences(s, part, 2)
        b = build_eval_cases([np.array(x) for x in items], [2, 1, 1], [3, 1, 2], part, 2, users=[1, 2, 3])
        assert a.users.tolist() == b.users.tolist() and a.targets.tolist() == b.targets.tolist()
        assert a.inputs.tolist() == b.inputs.tolist() and a.hist_items.tolist() == b.hist_items.tolist()


def test_from_lists_matches_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "sequences.parquet"
    write_sequences(path, [[1, 2, 3], [], [4]], [1, 0, 0], [2, 0, 1])
    s, t = read_sequences(path), Sequences.from_lists([[1, 2, 3], [], [4]], [1, 0, 0], [2, 0, 1], [1, 2, 3])
    for name in ("users", "flat", "offsets", "train_end", "valid_end"):
        assert getattr(s, name).tolist() == getattr(t, name).tolist()
    assert s.lengths.tolist() == [3, 0, 1]


def test_a_padding_id_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad_ids.parquet"
    write_sequences(path, [[1, 2, 3], [4, 0, 5]])
    with pytest.raises(DataError, match=r"bad_ids\.parquet: sequence at row 1: item ids must be >= 1"):
        read_sequences(path)


def test_inconsistent_ends_and_missing_columns_fail_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad_ends.parquet"
    write_sequences(path, [[1, 2, 3]], [2], [1])
    with pytest.raises(DataError, match=r"bad_ends\.parquet: sequence at row 0: need 0 <= train_end"):
        read_sequences(path)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_sequences(tmp_path / "nope.parquet")


# ------------------------------------------------------------------------------------------- items
def test_items_reader_selects_columns_and_checks_dense_ids(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    write_parquet(path, {"item": np.array([1, 2, 3]), "item_id": ["a", "b", "c"], "text": ["x", None, "z"]})
    table = read_items(path, ["item", "item_id"])
    assert table.column_names == ["item", "item_id"]
    assert table.column("item_id").to_pylist() == ["a", "b", "c"]
    write_parquet(path, {"item": np.array([1, 3, 2]), "item_id": ["a", "b", "c"], "text": ["x", "y", "z"]})
    with pytest.raises(
        DataError, match=r"items\.parquet: column 'item' must be 1\.\.N in order; row 1 has 3"
    ):
        read_items(path)
    write_parquet(path, {"item": np.array([1]), "text": ["x"]})
    with pytest.raises(DataError, match=r"items\.parquet: missing column\(s\) \['item_id'\]"):
        read_items(path)
    write_parquet(path, {"item": np.zeros(0, np.int64), "item_id": [], "text": []})
    with pytest.raises(DataError, match=r"items\.parquet: no items"):
        read_items(path)


# ----------------------------------------------------------------------------------------- vectors
def test_vectors_round_trip_with_metadata_and_exclusion(tmp_path: Path) -> None:
    path = tmp_path / "text.parquet"
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    missing = np.array([False, True, False, False])
    write_item_vectors(path, vectors, missing, {"missing_policy": "exclude", "dim": 3})
    got = read_item_vectors(path)
    np.testing.assert_array_equal(got.vectors, vectors)
    assert got.vectors.dtype == np.float32
    assert got.missing.tolist() == [False, True, False, False]
    assert got.metadata == {"missing_policy": "exclude", "dim": 3}
    assert got.excluded.tolist() == [False, True, False, False]
    write_item_vectors(path, vectors, missing, {"missing_policy": "mean"})
    assert read_item_vectors(path).excluded.tolist() == [False] * 4  # imputed, still distilled


def test_vectors_reader_names_the_file_for_each_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "teacher_text.parquet"
    bad = np.ones((3, 2), dtype=np.float32)
    bad[2, 1] = np.nan
    write_item_vectors(path, bad, np.zeros(3, bool), {})
    with pytest.raises(DataError, match=r"teacher_text\.parquet: item 3 has a NaN or infinite vector"):
        read_item_vectors(path)
    write_parquet(path, {"item": np.array([1, 2]), "vector": np.array([0.5, 0.25])})
    with pytest.raises(DataError, match=r"teacher_text\.parquet: column 'vector' must be fixed_size_list"):
        read_item_vectors(path)
    write_parquet(path, {"item": np.array([2, 1]), "vector": np.ones((2, 2), np.float32)})
    with pytest.raises(
        DataError, match=r"teacher_text\.parquet: column 'item' must be 1\.\.N in order; row 0"
    ):
        read_item_vectors(path)
    write_parquet(path, {"item": np.array([1, 2]), "vector": np.ones((2, 2), np.float32)})
    got = read_item_vectors(path)  # written by hand without flags: every item present, with a warning
    assert got.missing.tolist() == [False, False]
    assert "no 'missing' column" in caplog.text


def test_vectors_are_decoded_batch_by_batch_across_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import io

    monkeypatch.setattr(io, "VECTOR_BATCH_ROWS", 4)  # 11 rows in 3 row groups, read 4 at a time
    path = tmp_path / "text.parquet"
    vectors = np.arange(33, dtype=np.float32).reshape(11, 3) / 7
    table = pa.table(
        {
            "item": pa.array(np.arange(1, 12, dtype=np.int32)),
            "vector": io.vector_array(vectors),
            "missing": pa.array(np.arange(11) % 5 == 0),
        }
    )
    pq.write_table(table, path, row_group_size=5)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    got = read_item_vectors(path)
    np.testing.assert_array_equal(got.vectors, vectors)
    assert got.vectors.dtype == np.float32 and got.vectors.flags.c_contiguous
    assert got.missing.tolist() == (np.arange(11) % 5 == 0).tolist()
    vectors[9, 2] = np.inf  # in the last row group and the third batch
    pq.write_table(table.set_column(1, "vector", io.vector_array(vectors)), path, row_group_size=5)
    with pytest.raises(DataError, match=r"text\.parquet: item 10 has a NaN or infinite vector"):
        read_item_vectors(path)
    with pytest.raises(ValueError, match=r"text\.parquet: column 'vector' holds 11 vectors, expected 12"):
        list(io.iter_vector_column(path, "vector", 12, 3))


# -------------------------------------------------------------------------------------- neighbours
def test_neighbours_round_trip_skips_excluded_items(tmp_path: Path) -> None:
    path = tmp_path / "topk_text.parquet"
    values = np.array([[0.9, 0.5], [0.8, 0.1], [0.7, 0.6]], dtype=np.float32)
    indices = np.array([[1, 2], [0, 2], [1, 0]])  # 0-based: item 1's neighbours are items 2 and 3
    write_neighbours(path, values, indices, np.array([False, True, False]), {"topk": 2})
    table, counts = read_neighbours(path, num_items=3)
    assert counts.tolist() == [0, 2, 0, 2]
    assert table.tolist() == [[0, 0], [2, 3], [0, 0], [2, 1]]


def test_read_attributes_numbers_the_shared_ones_and_pads_each_item(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.artifacts.items import read_attributes

    path = tmp_path / "items.parquet"
    table = {
        "item": pa.array([1, 2, 3, 4], pa.int32()),
        "item_id": ["a", "b", "c", "d"],
        "text": ["", "", "", ""],
        "attributes": pa.array([["b=x", "c=y"], None, ["c=y", "b=z"], ["b=x", "c=q"]], pa.list_(pa.string())),
    }
    pq.write_table(pa.table(table), path)
    ids, names = read_attributes(path, 5)  # item 5 is past the file: no attributes
    # b=x (items 1, 4) and c=y (items 1, 3) are shared; b=z and c=q belong to one item each and are dropped
    assert names == ["b=x", "c=y"]
    assert ids.tolist() == [[0, 0], [1, 2], [0, 0], [2, 0], [1, 0], [0, 0]]
    # only items 1..num_items count: with two items nothing is shared
    ids, names = read_attributes(path, 2)
    assert ids.shape == (3, 0) and names == []
    # an items.parquet from before the column existed has none
    del table["attributes"]
    pq.write_table(pa.table(table), path)
    ids, names = read_attributes(path, 4)
    assert ids.shape == (5, 0) and names == []
