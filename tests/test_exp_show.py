"""`dvc exp show` reads like a results table: the model's test/validation metrics come before the data statistics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import write_sequences

from pipeline.config import PROJECT_ROOT, EvalParams, MLflowParams
from pipeline.evaluation.evaluate import run_evaluate
from pipeline.io import write_json

DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())


class LastPlusOne:
    num_items, max_len = 6, 3

    def user_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(inputs.shape[0], 7)
        scores[torch.arange(inputs.shape[0]), inputs[:, -1] % 6 + 1] = 1.0
        return scores


def flat_keys(node: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else k
        out.extend(flat_keys(v, key) if isinstance(v, dict) else [key])
    return out


def test_only_the_evaluation_metrics_are_stage_metrics_and_data_stats_come_last() -> None:
    stage_metrics = [
        next(iter(m)) if isinstance(m, dict) else m
        for spec in DVC_YAML["stages"].values()
        for m in spec.get("metrics", [])
    ]
    assert stage_metrics == ["reports/metrics.json"]
    assert DVC_YAML["metrics"] == ["reports/data_stats.json"]


def test_metrics_file_starts_with_test_then_valid(tmp_path: Path) -> None:
    write_sequences(tmp_path / "seq.parquet", [[1, 2, 3, 4], [5, 1, 3]], [2, 1], [3, 2])
    run_evaluate(
        EvalParams(ks=[5, 10]), MLflowParams(enabled=False), tmp_path / "seq.parquet", tmp_path / "m",
        tmp_path / "metrics.json", tmp_path / "per_user.parquet", student=LastPlusOne(), device="cpu",
        progress=False,
    )  # fmt: skip
    keys = flat_keys(json.loads((tmp_path / "metrics.json").read_text()))
    assert keys[:6] == [f"test.{m}_at_{k}" for k in (5, 10) for m in ("hr", "ndcg", "mrr")]
    assert keys[6:12] == [f"valid.{m}_at_{k}" for k in (5, 10) for m in ("hr", "ndcg", "mrr")]
    assert keys[12].startswith("popularity.test.") and keys[-2:] == ["cases.test", "cases.valid"]


def test_dvc_exp_show_json_opens_with_the_test_metrics(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (Path(sys.executable).parent / "dvc").exists():
        pytest.skip("git or dvc not available")
    dvc = str(Path(sys.executable).parent / "dvc")
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "reports").mkdir()
    write_sequences(tmp_path / "seq.parquet", [[1, 2, 3, 4], [5, 1, 3]], [2, 1], [3, 2])
    run_evaluate(
        EvalParams(), MLflowParams(enabled=False), tmp_path / "seq.parquet", tmp_path / "m",
        tmp_path / "reports/metrics.json", tmp_path / "per_user.parquet", student=LastPlusOne(),
        device="cpu", progress=False,
    )  # fmt: skip
    write_json(tmp_path / "reports/data_stats.json", {"users": 2, "items": 6, "interactions": 7})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}  # fmt: skip

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    rows = json.loads(sh(dvc, "exp", "show", "--json"))
    columns = [
        f"{file}:{key}"
        for file, result in rows[0]["data"]["metrics"].items()
        for key in flat_keys(result["data"])
    ]
    # the default cut-offs, @50 included, in order: HR, NDCG, MRR at each k, test before validation
    assert columns[:24] == [
        f"reports/metrics.json:{part}.{m}_at_{k}"
        for part in ("test", "valid")
        for k in (5, 10, 20, 50)
        for m in ("hr", "ndcg", "mrr")
    ]
    assert columns[-3:] == [f"reports/data_stats.json:{k}" for k in ("interactions", "items", "users")]
