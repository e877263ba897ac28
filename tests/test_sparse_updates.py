"""Sparse table updates (``train.embedding_updates``): lazy Adam on the rows a step uses, AdamW elsewhere."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import SPARSE, params, train, write_tiny_data

from pipeline.config import ConfigError, Params, TrainParams
from pipeline.models import Student, StudentConfig
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.diagnostics import table_gradient_norms
from pipeline.training.optim import SPARSE_FROM_ITEMS, SplitAdam, build_optimizer, sparse_updates

SAMPLED = {"loss": "sampled_softmax"}


def _student() -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(num_items=30, hidden=8, heads=2, modalities=("text",), modality_dim=6, dropout=0.0)
    return Student(cfg, {"text": torch.randn(31, 6)})


def _step(model: Student, opt, ids: torch.Tensor) -> None:
    """One step on a loss that uses the ID and text rows of ``ids`` and the text projection."""
    parts = model._parts(ids)
    loss = sum((p * torch.arange(1, p.shape[-1] + 1)).sin().sum() for p in parts)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def test_rows_a_step_uses_move_as_under_adamw_and_the_others_stay() -> None:
    dense, sparse = _student(), _student()
    opt_d = build_optimizer(dense, TrainParams(**SAMPLED, embedding_updates="dense"), 30)
    opt_s = build_optimizer(sparse, TrainParams(**SAMPLED, embedding_updates="sparse"), 30)
    assert isinstance(opt_d, torch.optim.AdamW) and not dense.sparse_grads
    assert isinstance(opt_s, SplitAdam) and sparse.sparse_grads
    first, second = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[3, 4, 5, 0]])  # 0: padding, never a row
    start = sparse.item_emb.weight.detach().clone()
    _step(dense, opt_d, first)
    _step(sparse, opt_s, first)
    for a, b in zip(dense.parameters(), sparse.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # the first step is AdamW's, row by row
    after_first = sparse.item_emb.weight.detach().clone()
    _step(dense, opt_d, second)
    _step(sparse, opt_s, second)
    for table in ("item_emb", "modality_tables.text"):
        w_d = dense.get_submodule(table).weight.detach()
        w_s = sparse.get_submodule(table).weight.detach()
        # rows 3-5 have a gradient in the second step: their moments are AdamW's, so are their values
        assert torch.allclose(w_d[3:6], w_s[3:6], atol=1e-6), table
        # rows 1-2 had one only in the first: AdamW moves them again by their momentum, lazy Adam does not
        assert not torch.allclose(w_d[1:3], w_s[1:3], atol=1e-4), table
    assert torch.equal(sparse.item_emb.weight[1:3], after_first[1:3])
    # rows never used, and the padding row, never move
    assert torch.equal(sparse.item_emb.weight[6:], start[6:]) and torch.equal(
        dense.item_emb.weight[6:], start[6:]
    )
    assert not sparse.item_emb.weight[0].any()
    # the projection and the fusion are dense parameters under AdamW in both modes: the same values
    assert torch.allclose(
        dense.modality_proj["text"][1].weight, sparse.modality_proj["text"][1].weight, atol=1e-6
    )


def test_the_schedule_sets_the_rates_of_both_parts() -> None:
    model = _student()
    opt = build_optimizer(model, TrainParams(**SAMPLED, embedding_updates="sparse"), 30)
    names = sorted(g["name"] for g in opt.parts["sparse"].param_groups)
    assert names == ["modality", "no_decay"]  # the text table (asynchronous rate) and the ID embeddings
    for g in opt.param_groups:
        g["lr"] = 0.5
    assert all(g["lr"] == 0.5 for part in opt.parts.values() for g in part.param_groups)


@pytest.mark.parametrize(
    ("mode", "loss", "items", "want"),
    [
        ("auto", "sampled_softmax", SPARSE_FROM_ITEMS, True),
        ("auto", "sampled_softmax", SPARSE_FROM_ITEMS - 1, False),
        ("auto", "ce", 10 * SPARSE_FROM_ITEMS, False),
        ("dense", "sampled_softmax", 10 * SPARSE_FROM_ITEMS, False),
        ("sparse", "sampled_softmax", 10, True),
    ],
)
def test_auto_turns_sparse_on_large_catalogues_with_a_sampled_softmax(mode, loss, items, want) -> None:
    assert sparse_updates(TrainParams(loss=loss, embedding_updates=mode), items) is want


def test_sparse_updates_with_the_full_softmax_name_the_keys(base_params: Params) -> None:
    with pytest.raises(ConfigError, match=r"embedding_updates sparse needs loss sampled_softmax"):
        params(base_params, **{"train.embedding_updates": "sparse", "train.loss": "ce"})
    with pytest.raises(ConfigError, match=r"embedding_updates"):
        params(base_params, **{"train.embedding_updates": "lazy"})


def test_gradient_norms_on_the_tables_are_the_same_with_sparse_gradients() -> None:
    ids = torch.tensor([[1, 2, 2, 5]])  # item 2 twice: its entries are summed before the norm
    norms = []
    for sparse in (False, True):
        model = _student()
        model.sparse_grads = sparse
        ce = model._parts(ids)[1].pow(2).sum()
        norms.append(table_gradient_norms(model, {"ce": ce}, {}))
    assert norms[1]["grad_ce_text"] == pytest.approx(norms[0]["grad_ce_text"], rel=1e-6)
    assert norms[0]["grad_ce_text"] > 0


def test_a_sparse_run_trains_and_ends_elsewhere_than_a_dense_one(base_params: Params, tmp_path: Path) -> None:
    # (its exact resume from a checkpoint: tests/test_trainer.py, the "sparse" case)
    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **SPARSE)
    assert train(p, tmp_path, seq, sup, "sparse")["finished"]
    rows = list(csv.DictReader((tmp_path / "sparse" / "curve.csv").open()))
    assert all(float(r["ce"]) > 0 and float(r["hol_text"]) >= 0 for r in rows)
    dense = params(p, **{"train.embedding_updates": "dense"})
    train(dense, tmp_path, seq, sup, "dense", checkpoint_root=tmp_path / "ck3")
    a = load_file(tmp_path / "sparse" / "models" / "model.safetensors")
    c = load_file(tmp_path / "dense" / "models" / "model.safetensors")
    assert not torch.allclose(a["item_emb.weight"], c["item_emb.weight"], atol=1e-4)  # the lazy rows differ


def test_a_dense_checkpoint_is_not_restored_into_a_sparse_optimiser(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _student()
    dense = build_optimizer(model, TrainParams(**SAMPLED, embedding_updates="dense"), 30)
    _step(model, dense, torch.tensor([[1, 2]]))
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, model.state_dict(), dense, {"epoch": 1})
    other = _student()
    sparse = build_optimizer(other, TrainParams(**SAMPLED, embedding_updates="sparse"), 30)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path, other, sparse, dict) is None
    assert "optimizer: parts ['param_groups', 'state'], the optimizer has ['dense', 'sparse']" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    # a sparse checkpoint restores into a sparse optimiser, both parts
    _step(other, sparse, torch.tensor([[3, 4]]))
    save_checkpoint(path, other, other.state_dict(), sparse, {"epoch": 1})
    again = _student()
    fresh = build_optimizer(again, TrainParams(**SAMPLED, embedding_updates="sparse"), 30)
    assert load_checkpoint(path, again, fresh, dict) is not None
    assert (
        fresh.parts["sparse"].state_dict()["state"].keys()
        == sparse.parts["sparse"].state_dict()["state"].keys()
    )
    assert torch.equal(again.item_emb.weight, other.item_emb.weight)
