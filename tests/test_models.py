"""Student and backbones: causality, padding invariance, shapes, persistence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models import Student, StudentConfig, load_student, save_student
from pipeline.models.student import CodeHead, SubVectorCodeHeads


def make_student(backbone: str = "sasrec", modalities=("text",), fusion: str = "sum") -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=30,
        backbone=backbone,
        hidden=16,
        layers=2,
        heads=2,
        dropout=0.0,
        max_len=12,
        modalities=tuple(modalities),
        modality_dim=8,
        fusion=fusion,
        num_codes=5,
    )
    teacher = {m: torch.randn(31, 8) for m in modalities}
    return Student(cfg, teacher).eval()


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "bsarec", "session_graph"])
def test_changing_a_later_item_leaves_earlier_hidden_states_unchanged(backbone: str) -> None:
    model = make_student(backbone)
    seq = torch.tensor([[0, 0, 3, 7, 9, 4, 11, 2]])
    changed = seq.clone()
    changed[0, 5] = 25  # position 5 changes
    with torch.no_grad():
        h1, h2 = model.encode(seq), model.encode(changed)
    assert torch.allclose(h1[:, :5], h2[:, :5], atol=1e-6)
    assert not torch.allclose(h1[:, 5:], h2[:, 5:], atol=1e-4)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "bsarec", "session_graph"])
def test_extra_left_padding_does_not_change_real_positions(backbone: str) -> None:
    model = make_student(backbone)
    seq = torch.tensor([[3, 7, 9, 4]])
    padded = torch.tensor([[0, 0, 0, 0, 3, 7, 9, 4]])
    with torch.no_grad():
        h1, h2 = model.encode(seq), model.encode(padded)
        s1, s2 = model.user_scores(seq), model.user_scores(padded)
    assert torch.allclose(h1, h2[:, 4:], atol=1e-5)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_batch_rows_are_independent() -> None:
    model = make_student()
    a = torch.tensor([[0, 0, 5, 6, 7]])
    b = torch.tensor([[1, 2, 3, 4, 8]])
    with torch.no_grad():
        both = model.user_scores(torch.cat([a, b]))
        alone = model.user_scores(a)
    assert torch.allclose(both[0], alone[0], atol=1e-5)


@pytest.mark.parametrize("fusion", ["sum", "gate", "concat"])
def test_full_scores_is_one_matmul_against_item_representations(fusion: str) -> None:
    model = make_student(fusion=fusion, modalities=("text", "image"))
    seq = torch.tensor([[0, 3, 7, 9], [1, 2, 3, 4]])
    with torch.no_grad():
        items = model.item_representations()
        h = model.encode(seq, items)[:, -1]
        expected = h @ items.T
        assert model.user_scores(seq).shape == (2, 31)
        assert torch.allclose(model.user_scores(seq), expected, atol=1e-5)


def test_modality_tables_start_at_the_teacher_vectors() -> None:
    torch.manual_seed(0)
    t = torch.randn(31, 8)
    cfg = StudentConfig(num_items=30, hidden=16, modalities=("text",), modality_dim=8, num_codes=4)
    model = Student(cfg, {"text": t})
    assert torch.equal(model.modality_tables["text"].weight[1:], t[1:])
    assert torch.equal(model.modality_tables["text"].weight[0], torch.zeros(8))


def test_teacher_shape_mismatch_is_an_error() -> None:
    cfg = StudentConfig(num_items=30, hidden=16, modalities=("text",), modality_dim=8)
    with pytest.raises(ValueError, match="teacher vectors for text"):
        Student(cfg, {"text": torch.randn(30, 8)})


def test_save_and_load_round_trip(tmp_path) -> None:
    model = make_student(modalities=("text",))
    save_student(model, tmp_path, extra={"best_epoch": 3})
    loaded = load_student(tmp_path)
    seq = torch.tensor([[0, 3, 7, 9]])
    with torch.no_grad():
        assert torch.equal(model.user_scores(seq), loaded.user_scores(seq))


def test_corrupt_or_missing_checkpoint_gives_a_clear_error(tmp_path) -> None:
    with pytest.raises(PipelineError, match="config.json: not found"):
        load_student(tmp_path)
    save_student(make_student(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(PipelineError, match="model.safetensors: corrupt"):
        load_student(tmp_path)


def test_input_dropout_is_applied_once() -> None:
    # regression: the student and the backbone both dropped the input, so p=0.5 removed 75% of it
    torch.manual_seed(0)
    model = Student(StudentConfig(num_items=50, hidden=32, dropout=0.5, max_len=20)).train()
    torch.nn.init.zeros_(model.backbone.positions.weight)  # the encoder input is then dropout(emb * sqrt(H))
    seen = []
    model.backbone.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    seq = torch.randint(1, 51, (64, 20))
    model.encode(seq)
    x, clean = seen[0], model.item_emb(seq) * 32**0.5
    kept = x != 0
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.03)
    torch.testing.assert_close(x[kept], 2.0 * clean[kept])  # survivors scaled by 1/(1-p) exactly once


def wired_student(output: str, fusion: str = "paper_gate", kd_projection: str = "identity") -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=30,
        hidden=16,
        dropout=0.0,
        max_len=12,
        modalities=("text",),
        modality_dim=8,
        fusion=fusion,
        num_codes=5,
        output=output,
        kd_projection=kd_projection,
    )
    return Student(cfg, {"text": torch.randn(31, 8)})


def test_with_id_output_the_catalogue_is_scored_by_id_embeddings_and_tables_feed_the_input_only() -> None:
    model = wired_student("id")
    seq = torch.tensor([[0, 0, 3, 7, 9], [0, 4, 5, 6, 2]])
    items = model.item_representations()
    assert items is model.item_emb.weight and model.input_table(items) is None
    hidden = model.encode(seq)[:, -1]  # (B, H)
    assert torch.allclose(model.full_scores(hidden), hidden @ model.item_emb.weight.T)
    # a next-item loss over the whole catalogue sends no gradient to table rows outside the batch
    loss = torch.nn.functional.cross_entropy(model.full_scores(hidden), torch.tensor([11, 12]))
    loss.backward()
    grad = model.modality_tables["text"].weight.grad
    in_batch = torch.zeros(31, dtype=torch.bool)
    in_batch[seq.unique()] = True
    assert grad[~in_batch].abs().max() == 0
    assert grad[[3, 7, 9, 4, 5, 6, 2]].abs().sum(1).min() > 0
    # ... whereas the tied model's full softmax reaches every row of the table
    tied = wired_student("fused")
    h = tied.encode(seq, tied.input_table(tied.item_representations()))[:, -1]
    torch.nn.functional.cross_entropy(tied.full_scores(h), torch.tensor([11, 12])).backward()
    assert tied.modality_tables["text"].weight.grad[1:].abs().sum(1).min() > 0


def test_paper_gate_sees_the_table_scale_and_the_layer_norm_fusion_does_not() -> None:
    seq = torch.tensor([[0, 0, 3, 7, 9]])
    for fusion, scale_matters in (("paper_gate", True), ("sum", False)):
        model = wired_student("id", fusion=fusion).eval()
        with torch.no_grad():
            before = model.encode(seq)
            model.modality_tables["text"].weight.mul_(3.0)
            after = model.encode(seq)
        assert (not torch.allclose(before, after, atol=1e-4)) == scale_matters, fusion


def test_paper_gate_weights_the_parts_with_a_softmax_of_one_shared_mlp() -> None:
    model = wired_student("id")
    ids = torch.tensor([3, 7])
    parts = torch.stack(
        [model.item_emb(ids), model.modality_proj["text"](model.modality_tables["text"](ids))], -2
    )
    w = torch.softmax(model.gate(parts), dim=-2)  # (2, 2, 1)
    assert torch.allclose(w.sum(-2), torch.ones(2, 1))
    assert torch.allclose(model._fuse(ids), (w * parts).sum(-2), atol=1e-6)


@pytest.mark.parametrize("kd_projection", ["identity", "random", "none"])
def test_kd_projection_options(kd_projection: str) -> None:
    model = wired_student("id", kd_projection=kd_projection)
    i, j = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    m_i, m_j = model.modality_vectors("text", i), model.modality_vectors("text", j)
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    got = model.holistic_student_scores("text", i, j, dot)
    if kd_projection == "random":
        assert ("text" in model.kd_proj) and not torch.allclose(got, dot(m_i, m_j))
    else:  # identity starts at the table's own scores; none *is* the table's scores
        assert torch.allclose(got, dot(m_i, m_j), atol=1e-5)
        assert ("text" in model.kd_proj) == (kd_projection == "identity")


def test_unknown_wiring_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown output"):
        wired_student("both")


def test_id_teacher_output_scores_with_ids_plus_the_frozen_teacher_and_never_trains_it() -> None:
    model = wired_student("id_teacher")
    frozen = model.frozen_teacher_text.clone()
    assert torch.equal(frozen[1:], model.modality_tables["text"].weight[1:].detach())  # the same start
    expected = model.item_emb.weight + model.output_proj["text"](frozen)
    assert torch.allclose(model.item_representations(), expected, atol=1e-6)
    assert model.input_table(model.item_representations()) is None  # the tables feed the input only
    assert "frozen_teacher_text" not in dict(model.named_parameters())
    seq = torch.tensor([[0, 0, 3, 7, 9]])
    hidden = model.encode(seq)[:, -1]
    torch.nn.functional.cross_entropy(model.full_scores(hidden), torch.tensor([11])).backward()
    grad = model.modality_tables["text"].weight.grad
    assert grad[[1, 2, 11, 20]].abs().max() == 0 and grad[[3, 7, 9]].abs().sum() > 0
    with torch.no_grad():  # the frozen vectors are saved and restored with the weights
        model.modality_tables["text"].weight.add_(1.0)
    clone = Student(model.cfg)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.frozen_teacher_text, frozen)


@pytest.mark.parametrize("output", ["fused", "id", "id_teacher"])
def test_item_projection_distils_on_the_rows_that_score_the_catalogue(output: str) -> None:
    model = wired_student(output, fusion="sum", kd_projection="item")
    i, j = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    items = model.item_representations()
    assert torch.allclose(model.output_vectors(i), items[i], atol=1e-6)
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    assert torch.allclose(
        model.holistic_student_scores("text", i, j, dot), dot(items[i], items[j]), atol=1e-5
    )
    # the training step passes its item representations: indexed, same scores, gradient to the same rows
    reused = model.holistic_student_scores("text", i, j, dot, items)
    assert torch.allclose(reused, model.holistic_student_scores("text", i, j, dot), atol=1e-5)
    reused.sum().backward()
    assert model.item_emb.weight.grad[1:7].abs().sum() > 0 and model.item_emb.weight.grad[7:].abs().sum() == 0
    assert "text" not in model.kd_proj


def vq_student(groups: int = 4) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        num_items=30, hidden=16, modalities=("text",), modality_dim=8, num_codes=5, code_groups=groups
    )
    return Student(cfg, {"text": torch.randn(31, 8)}).eval()


def test_vq_student_has_one_code_head_per_sub_vector_reading_its_slice() -> None:
    model = vq_student(groups=4)
    head = model.code_heads["text"]
    assert isinstance(head, SubVectorCodeHeads)
    i, j = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    logits = model.code_logits("text", i, j)
    assert logits.shape == (3, 4, 5)
    # head d equals Linear(2, 2) -> ReLU -> Linear(2, K) on slice d of |m_i - m_j|
    x = (model.modality_vectors("text", i) - model.modality_vectors("text", j)).abs()
    for d in range(4):
        h = torch.relu(x[:, 2 * d : 2 * d + 2] @ head.weight1[d] + head.bias1.view(4, -1)[d])
        ref = h @ head.weight2[d] + head.bias2.view(4, -1)[d]
        torch.testing.assert_close(logits[:, d], ref)
    # changing slice 1 of the table moves head 1's logits only
    with torch.no_grad():
        model.modality_tables["text"].weight[1, 2:4] += 1.0
    moved = (model.code_logits("text", i, j) - logits).abs().amax(dim=(0, 2))
    assert moved[1] > 0 and moved[[0, 2, 3]].abs().sum() == 0
    # biases are 1-D (no weight decay, as nn.Linear biases); k-means students keep the single head
    assert head.bias1.ndim == head.bias2.ndim == 1
    assert isinstance(make_student().code_heads["text"], CodeHead)
    with pytest.raises(ValueError, match=r"code_groups \(3\) must divide the modality dimension \(8\)"):
        vq_student(groups=3)


def test_vq_student_round_trip_and_old_configs_load(tmp_path) -> None:
    model = vq_student()
    save_student(model, tmp_path)
    loaded = load_student(tmp_path)
    assert loaded.cfg.code_groups == 4 and loaded.cfg.num_codes == 5
    i, j = torch.tensor([1, 7]), torch.tensor([3, 9])
    with torch.no_grad():
        assert torch.equal(model.code_logits("text", i, j), loaded.code_logits("text", i, j))
    assert model.cfg.to_dict()["code_groups"] == 4
    # a k-means student writes its config.json as before the vq codebook (no code_groups), and such a file
    # loads with the k-means layout
    old = make_student().cfg.to_dict()
    assert "code_groups" not in old and StudentConfig.from_dict(old).code_groups == 0
    assert StudentConfig.from_dict(old) == make_student().cfg


@pytest.mark.parametrize("window", [0, 2])
def test_bsarec_frequency_mix_splits_each_position_at_its_causal_mean(window: int) -> None:
    from pipeline.models.backbones import CausalFrequencyMix

    mix = CausalFrequencyMix(hidden=1, window=window, dropout=0.0)
    with torch.no_grad():
        mix.sqrt_beta.fill_(2.0)  # beta^2 = 4: the high-frequency part is amplified 4x
        mix.norm.weight.fill_(1.0)
        mix.norm.bias.fill_(0.0)
    x = torch.tensor([[[0.0], [1.0], [3.0], [5.0], [9.0]]])  # one sequence, hidden size 1, 1 left padding
    pad = torch.tensor([[True, False, False, False, False]])
    mix.norm = torch.nn.Identity()  # read the mix itself: low + 4 (x - low), plus the residual x
    out = mix(x, pad)[0, :, 0]
    running = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.5])  # window 0: running means of 1, 3, 5, 9
    last_two = torch.tensor([0.0, 1.0, 2.0, 4.0, 7.0])  # window 2: means of the last two real items
    low = running if window == 0 else last_two
    expected = low + 4.0 * (x[0, :, 0] - low) + x[0, :, 0]
    torch.testing.assert_close(out[1:], expected[1:])


def test_cos_scoring_ranks_by_cosine_over_temperature_in_training_and_scoring() -> None:
    torch.manual_seed(0)
    cfg = StudentConfig(num_items=30, hidden=16, dropout=0.0, max_len=12, scoring="cos", temperature=0.05)
    model = Student(cfg).eval()
    seq = torch.tensor([[0, 3, 7, 9], [1, 2, 3, 4]])
    with torch.no_grad():
        items = model.item_representations()
        h = model.encode(seq, items)[:, -1]
        cos = torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(items, dim=-1).T
        torch.testing.assert_close(model.user_scores(seq), cos / 0.05)
        a, b = model.logit_factors(h, items)
        torch.testing.assert_close(a @ b.T, cos / 0.05)
    assert model.user_scores(seq)[:, 0].abs().max() == 0  # the padding row stays zero
    assert cfg.to_dict()["scoring"] == "cos" and "scoring" not in StudentConfig(num_items=3).to_dict()


def test_id_init_scale_sets_the_id_tables_starting_spread() -> None:
    torch.manual_seed(0)
    zero = Student(StudentConfig(num_items=400, hidden=16, id_init_scale=0.0))
    assert zero.item_emb.weight.abs().max() == 0  # the output embedding starts as the modality part alone
    torch.manual_seed(0)
    double = Student(StudentConfig(num_items=400, hidden=16, id_init_scale=2.0))
    assert double.item_emb.weight[1:].std().item() == pytest.approx(2.0 / 16**0.5, rel=0.05)
    assert StudentConfig(num_items=3, id_init_scale=0.0).to_dict()["id_init_scale"] == 0.0


def test_last_item_prior_adds_the_scaled_table_cosine_to_the_last_item() -> None:
    model = make_student(modalities=("text", "image"))
    seq = torch.tensor([[0, 0, 3, 7, 9], [0, 0, 0, 0, 0], [0, 4, 2, 2, 30]])
    base = model.user_scores(seq)
    model.cfg = dataclasses.replace(model.cfg, last_item_prior=1.5, prior_decay=0.0)  # the last item alone
    with torch.no_grad():
        scores = model.user_scores(seq)
        cos = 0
        for m in ("text", "image"):
            unit = torch.nn.functional.normalize(model.modality_tables[m].weight, dim=-1)
            cos = cos + unit[seq[:, -1]] @ unit.T / 2
        cos[:, 0] = 0.0  # padding column
        cos[1] = 0.0  # a user with no item has no last item
        expected = base + 1.5 * base[:, 1:].std(1, keepdim=True) * cos
    assert torch.allclose(scores, expected, atol=1e-4)
    hidden, last = model.user_states(seq)
    side = model.item_side(model.item_representations())
    query = model.query_side(hidden, last, side)
    assert query.shape == (3, 16 + 2 * 8) and side.keys.shape == (
        31,
        16 + 2 * 8,
    )  # an index over keys sees it
    assert torch.allclose(query @ side.keys.T, scores, atol=1e-5)
    assert torch.allclose(model.query_side(hidden, last, side, weight=0) @ side.keys.T, base, atol=1e-5)


def test_the_prior_in_training_scores_each_training_position_as_the_scorer_scores_its_prefix() -> None:
    model = make_student(modalities=("text", "image"))
    seq = torch.tensor([[0, 0, 3, 7, 9, 4], [0, 0, 0, 0, 5, 6], [2, 8, 8, 1, 30, 11]])
    with torch.no_grad():
        base = model.user_scores(seq)
        model.cfg = dataclasses.replace(model.cfg, prior_in_training=2.5, prior_decay=0.5)
        scores = model.user_scores(seq)
        # the known answer: + 2.5 x the mean over modalities of the cosine to the recency-mixed recent items
        age = torch.arange(5, -1, -1, dtype=torch.float32)
        mix = 0.5**age * (seq != 0)
        mix = mix / mix.sum(1, keepdim=True)
        cos = 0
        for m in ("text", "image"):
            unit = torch.nn.functional.normalize(model.modality_tables[m].weight, dim=-1)
            unit[0] = 0.0
            cos = cos + (mix[:, :, None] * unit[seq]).sum(1) @ unit.T / 2
        assert torch.allclose(scores, base + 2.5 * cos, atol=1e-5)
        # training: position t of a sequence gets the logit_factors' logits + the term the scorer adds to its
        # prefix up to t
        items = model.item_representations()
        hidden = model.encode(seq, model.input_table(items))
        keep = seq != 0
        a, b = model.training_factors(hidden, seq, keep, items)
        logits = a @ b.T
        plain = model.full_scores(hidden[keep], items)
        prefixes = torch.stack(
            [torch.nn.functional.pad(seq[r, : t + 1], (5 - t, 0)) for r, t in keep.nonzero()]
        )
        added = model.user_scores(prefixes)
        model.cfg = dataclasses.replace(model.cfg, prior_in_training=0.0)
        added -= model.user_scores(prefixes)
        assert len(logits) == 12 and torch.allclose(logits - plain, added, atol=1e-5)
        model.cfg = dataclasses.replace(model.cfg, prior_in_training=2.5)
        # the step's rows only (the sampled softmax): the same logits, columns in the order of ids
        ids = torch.tensor([0, 3, 7, 9, 4, 5, 6, 2, 8, 1, 30, 11, 17])
        remap = torch.zeros(31, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        a2, b2 = model.training_factors(hidden, remap[seq], keep, items[ids], ids)
        assert torch.allclose(a2 @ b2.T, logits[:, ids], atol=1e-5)
    assert model.cfg.to_dict()["prior_in_training"] == 2.5
    assert "prior_in_training" not in make_student().cfg.to_dict()  # off: the saved config reads as before


def test_the_prior_mixes_the_recent_items_by_decay_and_excluded_inputs_score_minus_infinity() -> None:
    model = make_student(modalities=("text",))
    seq = torch.tensor([[0, 0, 3, 7, 9], [0, 0, 0, 0, 5]])
    base = model.user_scores(seq)
    model.cfg = dataclasses.replace(model.cfg, last_item_prior=2.0, prior_decay=0.5)
    with torch.no_grad():
        scores = model.user_scores(seq)
        unit = torch.nn.functional.normalize(model.modality_tables["text"].weight, dim=-1)
        q = torch.stack([(0.25 * unit[3] + 0.5 * unit[7] + 1.0 * unit[9]) / 1.75, unit[5]])
        prior = q @ unit.T
        prior[:, 0] = 0.0
        expected = base + 2.0 * base[:, 1:].std(1, keepdim=True) * prior
    assert torch.allclose(scores, expected, atol=1e-4)
    model.cfg = dataclasses.replace(model.cfg, exclude_seen=True)
    with torch.no_grad():
        excluded = model.user_scores(seq)
    assert torch.isinf(excluded[0, [3, 7, 9]]).all() and torch.isinf(excluded[1, 5])
    keep = torch.ones_like(excluded, dtype=torch.bool)
    keep[0, [0, 3, 7, 9]] = keep[1, [0, 5]] = False
    assert torch.equal(excluded[keep], scores[keep])
    assert StudentConfig.from_dict({"num_items": 3}).prior_decay == 0.0  # an old config: the last item alone


def test_last_item_prior_weight_is_saved_and_absent_from_old_configs(tmp_path) -> None:
    model = make_student()
    assert "last_item_prior" not in model.cfg.to_dict()  # off: the config reads as before the key existed
    model.cfg = dataclasses.replace(model.cfg, last_item_prior=0.5)
    save_student(model, tmp_path)
    loaded = load_student(tmp_path)
    assert loaded.cfg.last_item_prior == 0.5
    seq = torch.tensor([[0, 3, 7, 9]])
    with torch.no_grad():
        assert torch.equal(model.user_scores(seq), loaded.user_scores(seq))


def attribute_student(output: str = "fused") -> Student:
    torch.manual_seed(0)
    # items 1..6: item 1 holds attributes 1 and 2, item 2 holds 2, item 3 holds 1, 2 and 3; the rest none
    attributes = torch.zeros(7, 3, dtype=torch.long)
    attributes[1, :2] = torch.tensor([1, 2])
    attributes[2, 0] = 2
    attributes[3] = torch.tensor([1, 2, 3])
    cfg = StudentConfig(
        num_items=6,
        hidden=8,
        dropout=0.0,
        max_len=5,
        modalities=("text",),
        modality_dim=4,
        num_codes=0,
        num_attributes=3,
        attribute_width=3,
        output=output,
    )
    return Student(cfg, {"text": torch.randn(7, 4)}, attributes).eval()


@pytest.mark.parametrize("output", ["fused", "id"])
def test_attributes_add_the_mean_of_their_rows_to_the_id_side(output: str) -> None:
    model = attribute_student(output)
    a, ids = model.attribute_emb.weight, model.item_emb.weight
    id_side = ids.clone()
    id_side[1] += (a[1] + a[2]) / 2
    id_side[2] += a[2]
    id_side[3] += (a[1] + a[2] + a[3]) / 3  # items 4-6 (and padding) keep their ID row alone
    expected = id_side
    if output == "fused":
        expected = id_side + model.modality_proj["text"](model.modality_tables["text"].weight)
    with torch.no_grad():
        assert torch.allclose(model.item_representations(), expected, atol=1e-6)
        some = torch.tensor([[3, 0], [1, 5]])
        assert torch.allclose(model.output_vectors(some), expected[some], atol=1e-6)
    # the shared rows are trained by every item that holds them: a loss on item 2 alone moves attribute 2
    model.output_vectors(torch.tensor([2])).sum().backward()
    grad = model.attribute_emb.weight.grad
    assert grad[2].abs().sum() > 0 and grad[[0, 1, 3]].abs().sum() == 0


def test_attributes_round_trip_and_a_wrong_shape_is_refused(tmp_path) -> None:
    model = attribute_student()
    save_student(model, tmp_path)
    loaded = load_student(tmp_path)
    assert torch.equal(loaded.attribute_ids, model.attribute_ids)
    seq = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model.user_scores(seq), loaded.user_scores(seq))
    with pytest.raises(ValueError, match=r"attribute ids have shape \(7, 2\), expected \(7, 3\)"):
        Student(model.cfg, None, torch.zeros(7, 2, dtype=torch.long))
    # a model without attributes has none, and its config does not mention them
    plain = make_student()
    assert plain.attribute_emb is None and "num_attributes" not in plain.cfg.to_dict()
