"""``train.refresh``: after the choices on validation the model learns each user's validation step; the network
validation chose is kept beside it, and validation metrics always come from that network."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import params, train, write_tiny_data

from pipeline.artifacts.sequences import Sequences, read_sequences
from pipeline.config import ConfigError, MLflowParams, Params
from pipeline.errors import PipelineError
from pipeline.evaluation.evaluate import run_evaluate
from pipeline.models import load_student
from pipeline.models.persist import SELECTED, is_refreshed
from pipeline.models.transitions import transition_table
from pipeline.training.refresh import carry_choices, freeze_encoder, through_validation
from pipeline.training.schedule import LRScheduler, async_lr_scale

REFRESH = {"train.refresh.enabled": True, "train.refresh.epochs": 2, "train.refresh.lr_scale": 0.5}
TRANSITIONS = {"train.transition_prior": [4.0], "train.transition_window": 2, "train.transition_decay": 0.5}
WEAK = {"train.epochs": 1, "train.lr": 0.001}  # a model far from perfect, so that ranks can tell models apart


def test_through_validation_moves_each_validation_step_into_training() -> None:
    seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [6, 7, 8, 9]], train_end=[3, 2], valid_end=[4, 3])
    out = through_validation(seqs)
    assert out.train_end.tolist() == [4, 3] and out.valid_end.tolist() == [4, 3]
    assert np.array_equal(out.flat, seqs.flat) and np.array_equal(out.offsets, seqs.offsets)
    assert seqs.train_end.tolist() == [3, 2]  # the input is left as it was
    # the transition table over the new prefixes counts 3 -> 4 and 7 -> 8 (the validation steps), never a test step
    table = transition_table(out, 9)
    pairs = {
        (i, int(j)) for i in range(10) for j in table.indices[table.indptr[i] : table.indptr[i + 1]].tolist()
    }
    assert pairs == {(1, 2), (2, 3), (3, 4), (6, 7), (7, 8)}


def test_refresh_rate_is_a_cosine_from_the_peak_with_the_asynchronous_scale_held() -> None:
    model = torch.nn.Linear(2, 2)
    groups = [
        {"name": "default", "params": [model.weight], "lr_scale": 1.0},
        {"name": "modality", "params": [model.bias], "lr_scale": 1.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1.0)

    class Async:
        schedule, start_scale, warmup_epochs, step_epochs, gamma = "linear", 0.2, 10, [], 1.0

    sched = LRScheduler(
        opt, 0.01, steps_per_epoch=4, epochs=5, warmup_epochs=0, cosine=True, async_params=Async
    )
    # training ends early at step 12 (epoch 3): the modality group's scale there is 0.2 + 0.8 * 3 / 10 = 0.44
    sched.start_refresh(first_step=12, steps=8, peak=0.5)
    held = async_lr_scale("linear", 3.0, 0.2, 10, [], 1.0)
    assert held == pytest.approx(0.44)
    for step, factor in [(12, 0.5), (14, 0.5 * 0.5 * (1 + np.cos(np.pi / 4))), (16, 0.25), (20, 0.0)]:
        lrs = sched.set_step(step)
        assert lrs["default"] == pytest.approx(0.01 * factor, abs=1e-12), step
        assert lrs["modality"] == pytest.approx(0.01 * factor * held, abs=1e-12), step
    assert sched.set_step(11)["default"] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 11 / 20)))


def test_refresh_params_are_checked(base_params: Params) -> None:
    for over, key in [
        ({"train.refresh.epochs": -1}, "train.refresh.epochs"),
        ({"train.refresh.lr_scale": 0}, "train.refresh.lr_scale"),
        ({"train.refresh.epoch": 2}, "train.refresh.epoch"),
        ({"train.refresh.update": "encoder"}, "train.refresh.update"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            params(base_params, **over)


def _evaluate(model_dir: Path, seq: Path, p: Params, out: Path) -> dict:
    return run_evaluate(
        p.eval,
        MLflowParams(enabled=False),
        seq,
        model_dir,
        out / "metrics.json",
        out / "per_user.parquet",
        device="cpu",
        progress=False,
    )


def test_refreshed_model_keeps_the_chosen_network_and_counts_the_validation_steps(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    plain_p = params(base_params, **TRANSITIONS)
    plain = train(plain_p, tmp_path, seq, sup, "plain")
    summary = train(params(base_params, **TRANSITIONS, **REFRESH), tmp_path, seq, sup, "fresh")
    plain_dir, fresh_dir = tmp_path / "plain" / "models", tmp_path / "fresh" / "models"

    # the chosen network is the plain run's, weight for weight, with its choices and its training-only table
    assert summary["best_epoch"] == plain["best_epoch"] and summary["best_valid"] == plain["best_valid"]
    a, b = load_file(plain_dir / "model.safetensors"), load_file(fresh_dir / SELECTED)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((fresh_dir / "config.json").read_text())
    assert config["selected"]["student"] == json.loads((plain_dir / "config.json").read_text())["student"]
    assert is_refreshed(fresh_dir) and not is_refreshed(plain_dir)

    # the refreshed model: the same choices, other weights, and the table over the validation steps too
    chosen, fresh = load_student(fresh_dir, selected=True), load_student(fresh_dir)
    assert fresh.cfg.transition_prior == chosen.cfg.transition_prior == 4.0
    assert fresh.cfg.last_item_prior == chosen.cfg.last_item_prior
    c = load_file(fresh_dir / "model.safetensors")
    assert any(not torch.equal(c[k], b[k]) for k in b if not k.startswith("transition_"))
    seqs = read_sequences(seq)
    for model, s in [(chosen, seqs), (fresh, through_validation(seqs))]:
        want = transition_table(s, model.num_items, 2, 0.5)
        got = model.transitions
        assert torch.equal(got.indptr, want.indptr) and torch.equal(got.indices, want.indices)
        assert torch.equal(got.values, want.values)

    # a run without the refresh into the same folder removes the chosen network of the earlier one
    train(plain_p, tmp_path, seq, sup, "fresh", checkpoint_root=tmp_path / "ck_again")
    assert not (fresh_dir / SELECTED).exists() and not is_refreshed(fresh_dir)


def test_evaluate_ranks_validation_with_the_chosen_network_and_test_with_the_refreshed_one(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    plain_p = params(base_params, **WEAK)
    train(plain_p, tmp_path, seq, sup, "plain")
    train(params(base_params, **WEAK, **REFRESH), tmp_path, seq, sup, "fresh")
    plain_dir, fresh_dir = tmp_path / "plain" / "models", tmp_path / "fresh" / "models"
    fresh = load_student(fresh_dir)
    # validation exactly as the plain model ranks it, test by the refreshed model
    r_plain = _evaluate(plain_dir, seq, plain_p, tmp_path / "ev_plain")
    r_fresh = _evaluate(fresh_dir, seq, plain_p, tmp_path / "ev_fresh")
    assert r_fresh["valid"] == r_plain["valid"]
    assert r_fresh["test"]["mrr_at_50"] != r_plain["test"]["mrr_at_50"]
    direct = run_evaluate(
        plain_p.eval,
        MLflowParams(enabled=False),
        seq,
        fresh_dir,
        tmp_path / "ev_direct" / "m.json",
        tmp_path / "ev_direct" / "u.parquet",
        student=fresh,
        valid_student=fresh,
        device="cpu",
        progress=False,
    )
    assert r_fresh["test"] == direct["test"]
    # the refreshed network, which learned the validation targets, would have ranked them better
    assert direct["valid"]["mrr_at_50"] > r_fresh["valid"]["mrr_at_50"]
    assert r_plain["valid"]["mrr_at_50"] < 0.9  # far from perfect, so that ranks can tell the models apart


def test_refresh_without_epochs_rebuilds_only_the_transition_table(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    train(
        params(base_params, **TRANSITIONS, **{**REFRESH, "train.refresh.epochs": 0}), tmp_path, seq, sup, "t"
    )
    d = tmp_path / "t" / "models"
    a, b = load_file(d / "model.safetensors"), load_file(d / SELECTED)
    assert all(torch.equal(a[k], b[k]) for k in b if not k.startswith("transition_"))
    assert a["transition_indices"].numel() > b["transition_indices"].numel()  # the validation steps' entries


def test_refresh_of_the_item_side_keeps_the_chosen_encoder(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    for update in ("items", "all"):
        train(params(base_params, **REFRESH, **{"train.refresh.update": update}), tmp_path, seq, sup, update)
    d = tmp_path / "items" / "models"
    a, b = load_file(d / "model.safetensors"), load_file(d / SELECTED)
    encoder = [k for k in b if k.startswith("backbone.")]
    assert encoder and all(torch.equal(a[k], b[k]) for k in encoder)  # the sequence encoder as chosen
    assert not torch.equal(a["item_emb.weight"], b["item_emb.weight"])  # the item side learned
    # update: all trains the encoder too, from the same chosen network
    c = load_file(tmp_path / "all" / "models" / "model.safetensors")
    assert torch.equal(
        load_file(tmp_path / "all" / "models" / SELECTED)["item_emb.weight"], b["item_emb.weight"]
    )
    assert any(not torch.equal(c[k], b[k]) for k in encoder)
    model = load_student(d)
    frozen = freeze_encoder(model)
    assert {id(p) for p in frozen} == {id(p) for p in model.backbone.parameters()}
    assert model.item_emb.weight.requires_grad and not any(p.requires_grad for p in frozen)


def test_a_replaced_chosen_network_is_refused(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    train(
        params(base_params, **{**REFRESH, "train.refresh.epochs": 1, "train.epochs": 1}),
        tmp_path,
        seq,
        sup,
        "r",
    )
    d = tmp_path / "r" / "models"
    (d / SELECTED).write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(PipelineError, match=r"selected\.safetensors: not the file .*config\.json records"):
        load_student(d, selected=True)
    (d / SELECTED).unlink()
    with pytest.raises(PipelineError, match=r"selected\.safetensors: not found"):
        load_student(d, selected=True)


def test_choices_carried_to_a_refreshed_model(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    train(params(base_params, **TRANSITIONS, **REFRESH), tmp_path, seq, sup, "r")
    d = tmp_path / "r" / "models"
    chosen, fresh = load_student(d, selected=True), load_student(d)
    fresh.detach_transitions()
    chosen.cfg = dataclasses.replace(chosen.cfg, last_item_prior=2.5, exclude_seen=True)
    carry_choices(chosen, fresh, read_sequences(seq), 2, 0.5)
    assert (fresh.cfg.last_item_prior, fresh.cfg.exclude_seen, fresh.cfg.transition_prior) == (2.5, True, 4.0)
    want = transition_table(through_validation(read_sequences(seq)), fresh.num_items, 2, 0.5)
    assert torch.equal(fresh.transitions.values, want.values)
