"""The session-graph backbone (the KDSR authors' student): relations, equality with the unique-item graph,
padding, causality, gradients, training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, Params, with_overrides
from pipeline.models import Student, StudentConfig, load_student, save_student
from pipeline.models.session_graph import BOTH, IN, NONE, OUT, SELF, prefix_relations
from tests.test_trainer import params, train, write_tiny_data

_N = NONE


def graph_student(
    modalities=("text", "image"), fusion: str = "paper_gate", output: str = "id", last_n: int = 2
) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=30,
        backbone="session_graph",
        hidden=16,
        dropout=0.0,
        max_len=12,
        modalities=tuple(modalities),
        modality_dim=8,
        fusion=fusion,
        output=output,
        num_codes=5,
        session_graph_last_n=last_n,
        session_graph_attention_dropout=0.0,
    )
    return Student(cfg, {m: torch.randn(31, 8) for m in modalities}).eval()


def test_relations_of_a_sequence_with_a_repeat() -> None:
    a, b, c = 5, 6, 7
    codes = prefix_relations(torch.tensor([[0, a, b, a, c]]), 2)[0]  # (2, 5, 5), one padding column first
    # offset 0: the row of the item at t in the graph of the prefix up to t; the first a (position 1) stops
    # representing a once a repeats at position 3
    assert codes[0].tolist() == [
        [_N, _N, _N, _N, _N],
        [_N, SELF, _N, _N, _N],  # [a]
        [_N, IN, SELF, _N, _N],  # [a, b]: b <- a
        [_N, _N, BOTH, SELF, _N],  # [a, b, a]: a -> b and b -> a
        [_N, _N, _N, IN, SELF],  # [a, b, a, c]: c <- a, nothing with b
    ]
    # offset 1: the row of the item at t-1 in the same graph
    assert codes[1].tolist() == [
        [_N, _N, _N, _N, _N],
        [_N, _N, _N, _N, _N],  # t-1 is padding
        [_N, SELF, OUT, _N, _N],  # a in [a, b]
        [_N, _N, SELF, BOTH, _N],  # b in [a, b, a]
        [_N, _N, BOTH, SELF, OUT],  # a in [a, b, a, c]
    ]


def test_a_consecutive_repeat_is_no_edge_and_left_padding_changes_no_relation() -> None:
    seq = torch.tensor([[3, 3, 4]])
    codes = prefix_relations(seq, 1)[0, 0]
    assert codes.tolist() == [[SELF, _N, _N], [_N, SELF, _N], [_N, IN, SELF]]
    padded = prefix_relations(torch.tensor([[0, 0, 3, 3, 4]]), 2)
    assert torch.equal(padded[:, :, 2:, 2:], prefix_relations(seq, 2))
    assert not padded[:, :, :2].any() and not padded[:, :, :, :2].any()


def reference_hidden(model: Student, seq: list[int], perm_seed: int) -> torch.Tensor:
    """The authors' construction, one sequence at a time: for each prefix, the graph over its unique items (in a
    random node order), the attention layer over every node, the gate per node, the sum of the last two nodes."""
    layer = model.backbone.graph
    gen = torch.Generator().manual_seed(perm_seed)
    out = []
    for t in range(len(seq)):
        prefix = seq[: t + 1]
        nodes = sorted(set(prefix))
        nodes = [nodes[i] for i in torch.randperm(len(nodes), generator=gen).tolist()]
        index = {item: k for k, item in enumerate(nodes)}
        n = len(nodes)
        rel = torch.zeros(n, n, dtype=torch.long)
        for k in range(n):
            rel[k, k] = SELF
        for u, v in zip(prefix, prefix[1:], strict=False):
            iu, iv = index[u], index[v]
            if iu == iv or rel[iu, iv] == BOTH:
                continue
            if rel[iv, iu] == OUT:
                rel[iu, iv] = rel[iv, iu] = BOTH
            else:
                rel[iu, iv], rel[iv, iu] = OUT, IN
        ids = torch.tensor(nodes)
        parts = model._parts(ids)  # [ID, *modalities] of each node
        z = layer.linear(parts[0])
        g = torch.zeros_like(z)
        for k in range(n):
            logits = []
            for m in range(n):
                r = int(rel[k, m])
                if r == NONE:
                    logits.append(float("-inf"))
                    continue
                e = torch.dot(z[k] * z[m], layer.attention[r - 1])
                logits.append(float(torch.nn.functional.leaky_relu(e, 0.1) * layer.scale[r - 1]))
            g[k] = torch.softmax(torch.tensor(logits), 0) @ z
        fused = model._combine([parts[0], g, *parts[1:]])
        last = [index[item] for item in prefix[-2:]]
        out.append(fused[last].sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("perm_seed", [0, 1, 2])
def test_hidden_states_equal_the_unique_item_graph_in_any_node_order(perm_seed: int) -> None:
    model = graph_student()
    with torch.no_grad():
        model.backbone.graph.scale.copy_(torch.tensor([1.0, 0.5, 2.0, 1.5]))  # relations weigh differently
        seqs = [[4, 9, 4, 2, 9, 9, 7, 4], [0, 0, 0, 11, 12, 13, 11, 12]]
        hidden = model.encode(torch.tensor(seqs))
        for row, s in enumerate(seqs):
            real = [x for x in s if x]
            expected = reference_hidden(model, real, perm_seed)
            assert torch.allclose(hidden[row, len(s) - len(real) :], expected, atol=1e-5)
            assert not hidden[row, : len(s) - len(real)].any()  # padding stays zero


def test_left_padding_and_other_rows_change_nothing() -> None:
    model = graph_student()
    with torch.no_grad():
        alone = model.encode(torch.tensor([[3, 7, 3, 4]]))
        batch = model.encode(torch.tensor([[0, 0, 0, 3, 7, 3, 4], [1, 2, 3, 4, 5, 6, 7]]))
        scores = model.user_scores(torch.tensor([[0, 0, 0, 3, 7, 3, 4]]))
    assert torch.allclose(alone[0], batch[0, 3:], atol=1e-6)
    assert torch.allclose(scores, model.full_scores(alone[:, -1]), atol=1e-5)


def test_a_later_item_changes_no_earlier_position() -> None:
    model = graph_student()
    seq = torch.tensor([[0, 3, 7, 9, 3, 11, 2]])
    changed = seq.clone()
    changed[0, 4] = 9  # the repeat of 3 becomes a repeat of 9: the graph of the whole sequence changes
    with torch.no_grad():
        h1, h2 = model.encode(seq), model.encode(changed)
    assert torch.equal(h1[:, :4], h2[:, :4])
    assert not torch.allclose(h1[:, 4:], h2[:, 4:], atol=1e-4)


def test_last_n_sums_that_many_nodes() -> None:
    one, two = graph_student(last_n=1), graph_student(last_n=2)
    seq = torch.tensor([[0, 5, 8, 6]])
    with torch.no_grad():
        h1, h2 = one.encode(seq), two.encode(seq)
    # position 1 has no earlier item: both are its own node; later positions add the previous node
    assert torch.allclose(h1[0, 1], h2[0, 1], atol=1e-6)
    assert not torch.allclose(h1[0, 2:], h2[0, 2:], atol=1e-3)


def test_gradients_reach_every_table_the_graph_and_the_gate() -> None:
    model = graph_student().train()
    seq = torch.tensor([[0, 1, 2, 1, 3, 4], [5, 6, 5, 6, 7, 1]])  # every relation occurs
    hidden = model.encode(seq[:, :-1])
    logits = model.full_scores(hidden.reshape(-1, 16))
    loss = torch.nn.functional.cross_entropy(logits, seq[:, 1:].reshape(-1), ignore_index=0)
    loss.backward()
    named = dict(model.named_parameters())
    for name in (
        "item_emb.weight",
        "modality_tables.text.weight",
        "modality_tables.image.weight",
        "modality_proj.text.weight",
        "modality_proj.image.weight",
        "backbone.graph.linear.weight",
        "backbone.graph.attention",
        "gate.0.weight",
        "gate.2.weight",
    ):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert (named["backbone.graph.scale"].grad != 0).all()  # each relation's scale
    used = seq[:, :-1].unique()
    assert named["modality_tables.text.weight"].grad[used[used > 0]].abs().sum(1).gt(0).all()


def test_concat_fusion_is_refused_naming_the_keys(base_params: Params) -> None:
    with pytest.raises(ValueError, match="concat.*session_graph"):
        graph_student(fusion="concat")
    with pytest.raises(ConfigError, match="fusion concat does not work with backbone session_graph"):
        with_overrides(base_params, {"train.backbone": "session_graph", "train.fusion": "concat"})


def test_save_and_load_keeps_the_graph_settings(tmp_path: Path) -> None:
    model = graph_student(last_n=3)
    save_student(model, tmp_path)
    loaded = load_student(tmp_path)
    assert loaded.cfg == model.cfg and loaded.cfg.session_graph_last_n == 3
    seq = torch.tensor([[0, 4, 2, 4, 9]])
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode(seq), model.encode(seq))


@pytest.mark.parametrize("fusion", ["sum", "paper_gate"])
def test_training_with_distillation_lowers_the_loss(base_params: Params, tmp_path: Path, fusion: str) -> None:
    seq, sup = write_tiny_data(tmp_path)
    p = params(
        base_params,
        **{
            "train.backbone": "session_graph",
            "train.fusion": fusion,
            "train.output": "id",
            "train.epochs": 4,
        },
    )
    assert train(p, tmp_path, seq, sup, "graph")["finished"]
    ce = [float(r["ce"]) for r in csv.DictReader((tmp_path / "graph" / "curve.csv").open())]
    # every epoch lowers the training cross-entropy (sum: 3.73 -> 2.64, paper_gate: 3.34 -> 2.87)
    assert len(ce) == 4 and all(b < a for a, b in zip(ce, ce[1:], strict=False)) and ce[-1] < 0.9 * ce[0], ce
    assert load_student(tmp_path / "graph" / "models").cfg.backbone == "session_graph"
