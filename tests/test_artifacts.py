"""The one reader of sequences.parquet: known CSR answers and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_sequences

from pipeline.artifacts import Sequences, read_sequences
from pipeline.errors import DataError
from pipeline.evaluation.cases import build_eval_cases, cases_from_sequences


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
    assert [x.tolist() for x in s.items] == [[3, 1, 4, 1], [5, 9], [2, 6, 5]]


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
