"""``eval.max_users``: the evaluate stage ranks a fixed, seeded sample of users (pipeline/evaluation/evaluate.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import write_sequences

from pipeline.artifacts import Sequences
from pipeline.config import ConfigError, EvalParams, MLflowParams, load_params, parse_params
from pipeline.errors import DataError
from pipeline.evaluation.cases import cases_from_sequences
from pipeline.evaluation.evaluate import run_evaluate, run_evaluate_unmasked, sample_users
from pipeline.evaluation.metrics import metrics_from_ranks, popularity_scores
from pipeline.io import read_parquet, write_parquet

OFF = MLflowParams(enabled=False)


class NextIdStudent:
    """Fake student: predicts item ``last % N + 1`` (score 1), every other item scores 0; records batch sizes."""

    def __init__(self, num_items: int, max_len: int) -> None:
        self.num_items, self.max_len = num_items, max_len
        self.batches: list[int] = []

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(inputs.shape[0]))
        scores = torch.zeros(inputs.shape[0], self.num_items + 1)
        scores[torch.arange(inputs.shape[0]), inputs[:, -1] % self.num_items + 1] = 1.0
        return scores


class PopularityStudent:
    """Scores every user with the training interaction counts: the evaluator's popularity baseline as a model."""

    def __init__(self, seqs: Sequences, num_items: int, max_len: int) -> None:
        self.num_items, self.max_len = num_items, max_len
        self.pop = popularity_scores(seqs, num_items)

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.pop.expand(inputs.shape[0], -1).clone()


def evaluate(
    tmp_path: Path, name: str, seqs_path: Path, student, **eval_overrides
) -> tuple[dict, dict, Path]:
    """Run the evaluate stage into ``tmp_path/name``; returns (report, per_user rows, metrics.json path)."""
    params = EvalParams(**{"ks": [1, 5], "batch_size": 2, **eval_overrides})
    metrics, per_user = tmp_path / name / "metrics.json", tmp_path / name / "per_user.parquet"
    report = run_evaluate(
        params, OFF, seqs_path, tmp_path / "models", metrics, per_user, student=student, device="cpu",
        progress=False,
    )  # fmt: skip
    return report, read_parquet(per_user).to_pydict(), metrics


def rank_metrics(rank: int) -> dict[str, float]:
    """HR/NDCG/MRR at 1 and 5 of one case ranked ``rank`` (0-based), written out by hand."""
    out = {}
    for k in (1, 5):
        hit = rank < k
        out |= {
            f"hr_at_{k}": float(hit),
            f"ndcg_at_{k}": 1 / math.log2(rank + 2) if hit else 0.0,
            f"mrr_at_{k}": 1 / (rank + 1) if hit else 0.0,
        }
    return out


# --------------------------------------------------------------------------------------------- the sample
def test_sample_is_sorted_without_replacement_by_user_id_and_seed() -> None:
    users = np.arange(101, 141, dtype=np.int64)  # 40 user ids
    a = sample_users(users, 7, seed=0)
    assert a is not None and len(a) == 7 and len(set(a.tolist())) == 7
    assert np.all(np.diff(a) > 0) and set(a.tolist()) <= set(users.tolist())
    # numpy's default_rng(seed) without replacement over the sorted ids, sorted
    assert a.tolist() == sorted((101 + np.random.default_rng(0).choice(40, 7, replace=False)).tolist())
    assert np.array_equal(sample_users(users, 7, seed=0), a)  # the same seed: the same users
    assert not np.array_equal(sample_users(users, 7, seed=1), a)  # another seed: another sample
    # by user id, not by row: a shuffled user column gives the same users
    assert np.array_equal(sample_users(np.random.default_rng(5).permutation(users), 7, seed=0), a)
    # every user ranked: no sample
    assert sample_users(users, None, 0) is None
    assert sample_users(users, 40, 0) is None and sample_users(users, 1000, 0) is None
    assert len(sample_users(users, 39, 0)) == 39


def test_cases_of_some_rows_only_and_the_checks_still_cover_every_row() -> None:
    seqs = Sequences.from_lists([[1, 2, 3], [4, 5, 6, 7], [2, 3]], [1, 2, 1], [2, 3, 1], users=[10, 20, 30])
    cases = cases_from_sequences(seqs, "test", max_len=2, rows=np.array([1, 2]))
    # row 1 (user 20): test target 7 after [5, 6]; row 2 (user 30): target 3 after [2] (row 0 left out)
    assert cases.users.tolist() == [20, 30] and cases.targets.tolist() == [7, 3]
    assert cases.inputs.tolist() == [[5, 6], [0, 2]]
    assert cases.hist_indptr.tolist() == [0, 3, 4] and cases.hist_items.tolist() == [4, 5, 6, 2]
    bad = Sequences.from_lists(
        [[1, 2], [3, 4]], [0, 1], [1, 1]
    )  # row 0's validation target is its first item
    with pytest.raises(ValueError, match="sequence at row 0: a valid target is its first item"):
        cases_from_sequences(bad, "valid", max_len=2, rows=np.array([1]))


# --------------------------------------------------------------------------------------------- known answers
@pytest.fixture
def two_users(tmp_path: Path) -> Path:
    # N = 6 items, leave-one-out boundaries; the ranks of tests/test_evaluate.py's fake-student test
    path = tmp_path / "data" / "sequences.parquet"
    write_sequences(path, [[1, 2, 3, 4], [5, 1, 3]], [2, 1], [3, 2])
    return path


def test_a_sample_of_one_user_ranks_that_user_alone(tmp_path: Path, two_users: Path) -> None:
    # hand-computed ranks (history masked, ties against the target; popularity counts from BOTH users'
    # training parts [1, 2] and [5], the sample does not change the baseline's scores):
    #   model:      valid u1 0, u2 4 | test u1 0, u2 3
    #   popularity: valid u1 3, u2 1 | test u1 2, u2 3
    model = {1: {"valid": 0, "test": 0}, 2: {"valid": 4, "test": 3}}
    pop = {1: {"valid": 3, "test": 2}, 2: {"valid": 1, "test": 3}}
    targets = {1: {"valid": 3, "test": 4}, 2: {"valid": 1, "test": 3}}
    seen = set()
    for seed in range(8):
        (user,) = sample_users(np.array([1, 2]), 1, seed).tolist()
        seen.add(user)
        report, rows, _ = evaluate(
            tmp_path, f"s{seed}", two_users, NextIdStudent(6, 3), max_users=1, sample_seed=seed
        )
        for part in ("valid", "test"):
            assert report[part] == pytest.approx(rank_metrics(model[user][part]), abs=1e-15)
            assert report["popularity"][part] == pytest.approx(rank_metrics(pop[user][part]), abs=1e-15)
        assert report["cases"] == {"test": 1, "valid": 1}
        assert report["users_ranked"] == {"test": 1, "valid": 1}
        assert report["users_total"] == {"test": 2, "valid": 2}
        assert rows == {
            "user": [user, user],
            "part": ["valid", "test"],
            "target": [targets[user]["valid"], targets[user]["test"]],
            "rank": [model[user]["valid"], model[user]["test"]],
        }
    assert seen == {1, 2}  # the seed decides which user


@pytest.fixture
def many_users(tmp_path: Path) -> tuple[Path, Sequences]:
    """25 users with random histories over N = 12 items (leave-one-out), user ids 1..25."""
    rng = np.random.default_rng(3)
    items = [rng.integers(1, 13, size=int(rng.integers(3, 9))).tolist() for _ in range(25)]
    path = tmp_path / "data" / "sequences.parquet"
    write_sequences(path, items)
    n = [len(s) for s in items]
    return path, Sequences.from_lists(items, [k - 2 for k in n], [k - 1 for k in n], users=range(1, 26))


def test_the_sample_equals_the_same_users_of_the_full_evaluation(
    tmp_path: Path, many_users, caplog: pytest.LogCaptureFixture
) -> None:
    path, seqs = many_users
    caplog.set_level("INFO", logger="pipeline.evaluation.evaluate")
    full, full_rows, _ = evaluate(tmp_path, "full", path, NextIdStudent(12, 4))
    pop_full, pop_rows, _ = evaluate(tmp_path, "pop", path, PopularityStudent(seqs, 12, 4))
    assert "evaluating 25 test cases" in caplog.text and "sample" not in caplog.text
    student = NextIdStudent(12, 4)
    report, rows, metrics_path = evaluate(tmp_path, "sample", path, student, max_users=6, sample_seed=11)
    assert "ranking a fixed sample of 6 of 25 users (eval.sample_seed 11)" in caplog.text
    chosen = sample_users(np.arange(1, 26), 6, 11).tolist()
    assert "users_ranked" not in full and "users_total" not in full  # a full evaluation reports as before

    # the same users in the validation and the test part: the sample, each with its one target
    for part in ("valid", "test"):
        assert [u for u, p in zip(rows["user"], rows["part"], strict=True) if p == part] == chosen
    # each sampled case ranks as in the full evaluation; unsampled users are not in per_user.parquet
    picked = [i for i, u in enumerate(full_rows["user"]) if u in chosen]
    assert rows == {k: [v[i] for i in picked] for k, v in full_rows.items()}
    for part in ("valid", "test"):
        ranks = [r for r, p in zip(rows["rank"], rows["part"], strict=True) if p == part]
        assert report[part] == metrics_from_ranks(np.array(ranks), [1, 5])
        # the popularity baseline ranks the same users (its ranks: the popularity "student" of the full run)
        pop_ranks = [
            r for r, p, u in zip(pop_rows["rank"], pop_rows["part"], pop_rows["user"], strict=True)
            if p == part and u in chosen
        ]  # fmt: skip
        assert report["popularity"][part] == metrics_from_ranks(np.array(pop_ranks), [1, 5])
        assert pop_full[part] == full["popularity"][part]  # the student above is the baseline indeed
    assert report["cases"] == {"test": 6, "valid": 6}
    written = json.loads(metrics_path.read_text())
    assert list(written) == ["test", "valid", "popularity", "cases", "users_ranked", "users_total"]
    assert written["users_ranked"] == {"test": 6, "valid": 6} and written["users_total"] == {
        "test": 25,
        "valid": 25,
    }
    # only the sample's cases are scored, at most batch_size (2) at a time
    assert sum(student.batches) == 12 and max(student.batches) == 2


def test_max_users_at_or_above_the_user_count_is_the_full_evaluation_byte_for_byte(
    tmp_path: Path, many_users
) -> None:
    path, _ = many_users
    _, _, base = evaluate(tmp_path, "none", path, NextIdStudent(12, 4))
    for n in (25, 26, 10_000):
        _, _, m = evaluate(tmp_path, f"n{n}", path, NextIdStudent(12, 4), max_users=n, sample_seed=3)
        assert m.read_bytes() == base.read_bytes()
        assert (m.parent / "per_user.parquet").read_bytes() == (base.parent / "per_user.parquet").read_bytes()


def test_same_seed_same_users_another_seed_other_users(tmp_path: Path, many_users) -> None:
    path, _ = many_users

    def users(name: str, seed: int) -> list[int]:
        _, rows, _ = evaluate(tmp_path, name, path, NextIdStudent(12, 4), max_users=5, sample_seed=seed)
        return rows["user"]

    a, b, c = users("a", 0), users("b", 0), users("c", 1)
    assert a == b and len(a) == 10 and a != c


def test_the_unmasked_evaluation_ranks_the_same_sample(tmp_path: Path, many_users) -> None:
    path, _ = many_users
    _, rows, _ = evaluate(tmp_path, "masked", path, NextIdStudent(12, 4), max_users=4, sample_seed=2)
    params = EvalParams(ks=[1, 5], batch_size=2, max_users=4, sample_seed=2)
    report = run_evaluate_unmasked(
        params, path, tmp_path / "models", tmp_path / "u", student=NextIdStudent(12, 4)
    )
    assert read_parquet(tmp_path / "u" / "per_user.parquet").to_pydict()["user"] == rows["user"]
    assert report["users_ranked"] == {"test": 4, "valid": 4}


def test_a_sample_without_targets_of_a_part_names_the_sample(tmp_path: Path) -> None:
    # user 1 has no validation target (train_end == valid_end), user 2 has one
    path = tmp_path / "sequences.parquet"
    write_parquet(
        path,
        pa.table(
            {
                "user": pa.array([1, 2], pa.int32()),
                "items": pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int32())),
                "train_end": pa.array([2, 1], pa.int32()),
                "valid_end": pa.array([2, 2], pa.int32()),
            }
        ),
    )
    seed = next(s for s in range(20) if sample_users(np.array([1, 2]), 1, s).tolist() == [1])
    with pytest.raises(
        DataError, match="no valid targets to evaluate among the eval.max_users sample of 1 users"
    ):
        evaluate(tmp_path, "x", path, NextIdStudent(6, 3), max_users=1, sample_seed=seed)
    other = next(s for s in range(20) if sample_users(np.array([1, 2]), 1, s).tolist() == [2])
    report, _, _ = evaluate(tmp_path, "y", path, NextIdStudent(6, 3), max_users=1, sample_seed=other)
    assert report["users_ranked"] == {"test": 1, "valid": 1} and report["users_total"] == {
        "test": 2,
        "valid": 1,
    }


# --------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "eval.max_users: Input should be greater than or equal to 1"),
        (-3, "eval.max_users: Input should be greater than or equal to 1"),
        ("abc", "eval.max_users: Input should be a valid integer"),
        (True, "eval.max_users"),
        (10**12, "eval.max_users: Input should be less than or equal to 1000000000"),
    ],
)
def test_bad_max_users_is_refused_naming_the_key(value, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"eval": {"max_users": value}})
    assert fragment in str(err.value)


def test_max_users_and_its_seed_from_a_params_file(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("eval:\n  max_users: 500\n  sample_seed: 7\n")
    p = load_params(f)
    assert p.eval.max_users == 500 and p.eval.sample_seed == 7
    assert parse_params({"eval": {}}).eval.max_users is None  # the default: every user
    with pytest.raises(ConfigError, match="eval.sample_seed"):
        parse_params({"eval": {"sample_seed": -1}})
    f.write_text("eval:\n  max_users: abc\n")
    with pytest.raises(ConfigError, match="eval.max_users"):
        load_params(f)


def test_only_the_evaluate_stage_reads_max_users() -> None:
    """Training validates on every user: its params view has eval's ks, mask_history and batch_size only, so a
    new eval.max_users reruns evaluate alone under DVC and never reaches the model's recorded config."""
    from pipeline.config import UndeclaredParamError, section_dict, stage_params

    train_eval = stage_params("train").eval
    assert section_dict(train_eval) == {"ks": [5, 10, 20, 50], "mask_history": True, "batch_size": 1024}
    with pytest.raises(UndeclaredParamError, match="reads params key 'eval.max_users'"):
        _ = train_eval.max_users
    assert stage_params("evaluate").eval.max_users is None
