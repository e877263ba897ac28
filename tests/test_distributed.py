"""Data-parallel training: 2 CPU ranks under torchrun (gloo) train the same model as one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from test_trainer import params, train, write_tiny_data

from pipeline.config import PROJECT_ROOT, Params
from pipeline.evaluation.cases import load_eval_cases
from pipeline.models import load_student
from pipeline.training.distributed import DistInfo, init_from_env, shard_bounds

# Two runs in one torchrun launch (process start-up dominates): batch 13 splits 7/6 rows, so the ranks' loss
# weights differ; batch 79 over 80 users leaves a last batch of 1 row, so rank 1 has an empty share there
# (no CE graph, gradients None on rank 1 only) and few KD pairs to split; "frob" splits sequences, not pairs.
RUNS = {
    "b13": {"train.batch_size": 13},
    "b79": {"train.batch_size": 79, "train.kd.max_pairs": 7},
    # the per-sequence Frobenius loss: ranks take whole sequences' pairs (sampled, plus catalogue pairs)
    "frob": {
        "train.batch_size": 13,
        "train.kd.max_pairs": 40,
        "train.kd.holistic_loss": "frobenius",
        "train.kd.random_pairs": 2,
        "train.output": "id",
        "train.fusion": "paper_gate",
    },
    # the authors' session-graph student: per-sequence graphs built in each rank's share of the batch
    "sg": {
        "train.batch_size": 13,
        "train.backbone": "session_graph",
        "train.fusion": "paper_gate",
        "train.session_graph.attention_dropout": 0.0,
    },
    # sampled softmax with sparse table updates: the ranks' row gradients summed into one (the union of rows)
    "sparse": {
        "train.batch_size": 13,
        "train.loss": "sampled_softmax",
        "train.num_negatives": 8,
        "train.negatives": "popularity",
        "train.embedding_updates": "sparse",
    },
    # train.refresh: rank 0's chosen weights broadcast, then an epoch over the windows through validation
    "refresh": {"train.batch_size": 13, "train.refresh.enabled": True, "train.refresh.epochs": 1},
}
COMMON = {"train.dropout": 0.0, "train.epochs": 2, "train.patience": 5}

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    from pipeline.config import load_params
    from pipeline.training.distributed import (
        all_gather_concat, all_reduce_gradients, all_reduce_sum, cleanup, init_from_env,
    )
    from test_trainer import params, train

    root, runs, common = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    info = init_from_env("cpu")  # run_train below reuses this group
    rank = info.rank

    # hand-made collectives: p1 has a gradient on both ranks, p2 on none, p3 on rank 1 only
    p1, p2, p3 = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    p1.grad = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0])
    if rank == 1:
        p3.grad = torch.tensor([5.0, 6.0])
    all_reduce_gradients([p1, p2, p3])
    checks = {
        "p1": p1.grad.tolist(),
        "p2_none": p2.grad is None,
        "p3": p3.grad.tolist(),
        "sums": all_reduce_sum({"z": 1.0, "a": float(rank)}, torch.device("cpu")),
        "gather": all_gather_concat(torch.arange(2 - rank) + 10 * rank, [2, 1]).tolist(),
    }
    (root / f"checks_r{rank}.json").write_text(json.dumps(checks))

    base = load_params()
    for name, over in runs.items():
        p = params(base, **common, **over)
        out = root / name / f"r{rank}"  # per-rank paths: only rank 0's may appear
        summary = train(p, out, root / "sequences.parquet", root / "supervision", "run")
        (root / f"{name}_summary_r{rank}.json").write_text(json.dumps(summary))
    cleanup(info)
    """
)


def test_init_from_env_is_a_no_op_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env("cpu") == DistInfo(rank=0, world_size=1, local_rank=0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = init_from_env("cpu")
    assert info.is_main and not info.distributed and not dist.is_initialized()


def test_shard_bounds_cut_contiguous_near_equal_parts() -> None:
    assert shard_bounds(10, 3) == [0, 3, 6, 10]
    assert shard_bounds(1, 2) == [0, 0, 1]
    assert shard_bounds(0, 2) == [0, 0, 0]


def _without_key_bias(weights: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """Drop the key part of attention's in-projection bias: softmax ignores a per-row constant, so its exact
    gradient is 0 and Adam turns rounding noise into steps of about lr, in either run."""
    out = {}
    for k, v in weights.items():
        if k.endswith("self_attn.in_proj_bias"):
            v = torch.cat([v[:hidden], v[2 * hidden :]])
        out[k] = v
    return out


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_train_the_same_model_as_one_process(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "KDSR_MLFLOW": "0",
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]),
    }
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(tmp_path), json.dumps(RUNS), json.dumps(COMMON)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    checks = [json.loads((tmp_path / f"checks_r{r}.json").read_text()) for r in (0, 1)]
    for c in checks:
        assert c["p1"] == [4.0, 6.0] and c["p2_none"] and c["p3"] == [5.0, 6.0]
        assert list(c["sums"].items()) == [("z", 2.0), ("a", 1.0)]  # summed, order kept
        assert c["gather"] == [0, 1, 10]

    tiny = params(base_params)
    cases = load_eval_cases(seq, "valid", tiny.train.max_len)
    for name, over in RUNS.items():
        p = params(base_params, **COMMON, **over)
        single = train(p, tmp_path / name / "single", seq, sup, "run")
        ranks = [json.loads((tmp_path / f"{name}_summary_r{r}.json").read_text()) for r in (0, 1)]
        ddp_dir = tmp_path / name / "r0" / "run"
        # only rank 0 wrote: its model and curve, no checkpoint left; rank 1 wrote nothing at all
        refreshed = ["selected.safetensors"] if over.get("train.refresh.enabled") else []
        assert sorted(q.name for q in ddp_dir.rglob("*")) == [
            "config.json",
            "curve.csv",
            "model.safetensors",
            "models",
            *refreshed,
        ]
        assert not (tmp_path / name / "r1").exists()
        assert not any((tmp_path / name / "r0").rglob("*.pt"))

        # validation metrics: both ranks report exactly what one process reports
        for r in ranks:
            assert r["best_epoch"] == single["best_epoch"] and r["finished"]
            assert r["best_valid"] == pytest.approx(single["best_valid"], abs=1e-12)

        # per-epoch losses (the ranks' weighted shares summed) equal the single-process means
        one = list(csv.DictReader((tmp_path / name / "single" / "run" / "curve.csv").open()))
        two = list(csv.DictReader((ddp_dir / "curve.csv").open()))
        assert list(one[0]) == list(two[0])  # same columns, same order
        for a, b in zip(one, two, strict=True):
            for col in ("ce", "hol_text", "code_text", "loss", "lr_modality", "valid_ndcg_at_10"):
                assert float(b[col]) == pytest.approx(float(a[col]), rel=1e-4, abs=1e-9), (name, col)

        # weights agree up to summation order
        w1 = _without_key_bias(
            load_file(tmp_path / name / "single" / "run" / "models" / "model.safetensors"), tiny.train.hidden
        )
        w2 = _without_key_bias(load_file(ddp_dir / "models" / "model.safetensors"), tiny.train.hidden)
        assert w1.keys() == w2.keys()
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (
                name,
                k,
                float((w1[k] - w2[k]).abs().max()),
            )
        # ... and so do the models' scores (the key bias included: it cannot change them)
        m1 = load_student(tmp_path / name / "single" / "run" / "models")
        m2 = load_student(ddp_dir / "models")
        with torch.inference_mode():
            s1, s2 = m1.user_scores(cases.inputs), m2.user_scores(cases.inputs)
        assert torch.allclose(s1, s2, atol=1e-4, rtol=0)
