"""Checkpoints and divergence (issue 15, items 4 and 6): a checkpoint restores completely or not at all,
carries its schema in its key, never runs code, and a diverging run stops with the "lower train.lr" message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import write_sequences

from pipeline.config import MLflowParams, Params, with_overrides
from pipeline.errors import PipelineError
from pipeline.training import checkpoint as ckpt
from pipeline.training.checkpoint import CHECKPOINT_SCHEMA, checkpoint_key, load_checkpoint, save_checkpoint

NO_MLFLOW = MLflowParams(enabled=False)


def _model_and_optimizer(seed: int, groups: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    if groups == 2:
        params = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "weight_decay": 0.0}]
    else:
        params = [{"params": model.parameters()}]
    return model, torch.optim.AdamW(params, lr=0.01)


def _trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model, opt = _model_and_optimizer(seed)
    model(torch.ones(5, 4)).sum().backward()
    opt.step()
    return model, opt


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _state(d: dict) -> dict:
    if set(d) != {"epoch", "curve"}:
        raise TypeError(f"unexpected state keys {sorted(d)}")
    return d


def test_good_checkpoint_restores_model_optimizer_and_state(tmp_path: Path) -> None:
    model, opt = _trained()
    save_checkpoint(tmp_path / "last.pt", model, _snapshot(model), opt, {"epoch": 3, "curve": [{"epoch": 1}]})
    fresh, fresh_opt = _model_and_optimizer(seed=1)
    best, state = load_checkpoint(tmp_path / "last.pt", fresh, fresh_opt, _state)
    assert state == {"epoch": 3, "curve": [{"epoch": 1}]}
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v) and torch.equal(best[k], v)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize(
    "damage",
    ["optimizer_groups", "optimizer_state_shape", "best_missing_key", "state_unknown_key", "model_shape"],
)
def test_checkpoint_that_fails_half_way_leaves_model_and_optimizer_untouched(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The old loader applied the model weights, then failed on the optimizer and logged "starting from
    scratch" with a warm-started model; now nothing is applied unless everything restores."""
    model, opt = _trained()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, _snapshot(model), opt, {"epoch": 3, "curve": []})
    blob = torch.load(path, weights_only=True)  # our own file; only tensors and plain data
    if damage == "optimizer_groups":
        blob["optimizer"]["param_groups"] = blob["optimizer"]["param_groups"][:1]
    elif damage == "optimizer_state_shape":
        blob["optimizer"]["state"][0]["exp_avg"] = torch.zeros(7)
    elif damage == "best_missing_key":
        blob["best"].pop("1.bias")
    elif damage == "state_unknown_key":
        blob["state"] = json.dumps({"epoch": 3, "curve": [], "extra": 1})
    else:
        blob["model"]["1.weight"] = torch.zeros(5, 5)
    torch.save(blob, path)

    fresh, fresh_opt = _model_and_optimizer(seed=1)
    before = _snapshot(fresh)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path, fresh, fresh_opt, _state) is None
    assert "starting from scratch" in caplog.text
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())  # not warm-started
    assert fresh_opt.state_dict()["state"] == {}


def test_checkpoint_of_another_schema_is_ignored_and_the_schema_is_in_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    payload = {"train": {"lr": 0.003}, "sequences": "a" * 64}
    key = checkpoint_key(payload)
    assert len(key) == 16 and key == checkpoint_key(dict(payload))
    model, opt = _trained()
    save_checkpoint(tmp_path / "last.pt", model, _snapshot(model), opt, {"epoch": 1, "curve": []})
    monkeypatch.setattr(ckpt, "CHECKPOINT_SCHEMA", CHECKPOINT_SCHEMA + 1)
    assert checkpoint_key(payload) != key  # a new layout never finds the old folder
    fresh, fresh_opt = _model_and_optimizer(seed=1)
    assert load_checkpoint(tmp_path / "last.pt", fresh, fresh_opt, _state) is None
    assert f"checkpoint schema {CHECKPOINT_SCHEMA}, this code reads {CHECKPOINT_SCHEMA + 1}" in caplog.text


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.sentinel,))  # would run on unpickling


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    model, opt = _model_and_optimizer(seed=0)
    torch.save({"schema": CHECKPOINT_SCHEMA, "model": _Payload(sentinel)}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt", model, opt, _state) is None
    assert not sentinel.exists()


# --------------------------------------------------------------------------------------------- trainer level
@pytest.fixture
def id_only(tiny_params: Params) -> Params:
    return with_overrides(
        tiny_params,
        {"train.modalities": [], "train.hidden": 16, "train.heads": 2, "train.epochs": 3, "train.dropout": 0.0,
         "train.batch_size": 16, "train.warmup_epochs": 0, "train.cosine": False},
    )  # fmt: skip


def _train(params: Params, root: Path, seqs: Path, **kw: object) -> dict:
    from pipeline.training.train import run_train

    return run_train(params.train, "cos", params.eval, NO_MLFLOW, seqs, root / "sup", root / "models",
                     root / "curve.csv", root / "ckpt", progress=False, **kw)  # fmt: skip


SEQS = [[(u * 3 + k) % 20 + 1 for k in range(7)] for u in range(40)]


def test_trainer_ignores_a_checkpoint_that_fails_half_way(tmp_path: Path, id_only: Params) -> None:
    seqs = tmp_path / "sequences.parquet"
    write_sequences(seqs, SEQS)
    _train(id_only, tmp_path / "scratch", seqs)
    _train(id_only, tmp_path / "resumed", seqs, max_epochs_this_call=1)
    (last,) = (tmp_path / "resumed" / "ckpt").glob("*/last.pt")
    blob = torch.load(last, weights_only=True)
    blob["optimizer"]["param_groups"] = blob["optimizer"]["param_groups"][:1]  # fails after the model part
    torch.save(blob, last)
    _train(id_only, tmp_path / "resumed", seqs)  # must start from scratch for real
    a = (tmp_path / "scratch" / "models" / "model.safetensors").read_bytes()
    assert (tmp_path / "resumed" / "models" / "model.safetensors").read_bytes() == a


def test_diverging_run_stops_with_the_lower_lr_message(tmp_path: Path, id_only: Params) -> None:
    """One step per epoch: the epoch's loss is still finite, the weights are not (validation used to
    raise a bare ValueError about NaN scores)."""
    seqs = tmp_path / "sequences.parquet"
    write_sequences(seqs, SEQS)
    params = with_overrides(id_only, {"train.lr": 1e12, "train.batch_size": 256})
    with pytest.raises(
        PipelineError, match=r"training diverged at epoch 1 .*lower train\.lr \(now 1000000000000\.0\)"
    ):
        _train(params, tmp_path, seqs)
    assert not (tmp_path / "models").exists()
