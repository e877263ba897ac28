"""The training loop on tiny hand-made data: distillation terms, asynchronous LR, outputs, exact resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import ConfigError, Params, with_overrides
from pipeline.errors import PipelineError
from pipeline.io import read_parquet, vectors_from_column, write_parquet
from pipeline.models import load_student
from pipeline.supervision.codebooks import CorrelationCodebook
from pipeline.training.train import run_train

N_ITEMS, N_USERS, DIM = 40, 80, 16


def write_tiny_data(root: Path, modalities=("text",)) -> tuple[Path, Path]:
    """Users walk through one of 4 item families; each family's teacher vectors share a direction."""
    rng = np.random.default_rng(0)
    seqs = []
    for u in range(N_USERS):
        fam = u % 4
        fam_items = np.arange(1 + fam * 10, 11 + fam * 10)
        n = int(rng.integers(5, 10))
        start = int(rng.integers(0, 10 - 4))
        seqs.append([int(fam_items[(start + k) % 10]) for k in range(n)])
    n = np.array([len(s) for s in seqs])
    seq_path = root / "sequences.parquet"
    write_parquet(
        seq_path,
        pa.table(
            {
                "user": pa.array(np.arange(1, N_USERS + 1), pa.int32()),
                "user_id": [f"u{u}" for u in range(N_USERS)],
                "items": pa.array(seqs, pa.list_(pa.int32())),
                "train_end": pa.array(n - 2, pa.int32()),
                "valid_end": pa.array(n - 1, pa.int32()),
            }
        ),
    )
    sup = root / "supervision"
    for m in modalities:
        centers = rng.normal(size=(4, DIM))
        vec = np.stack([centers[(i - 1) // 10] + 0.3 * rng.normal(size=DIM) for i in range(1, N_ITEMS + 1)])
        write_parquet(
            sup / f"teacher_{m}.parquet",
            {
                "item": pa.array(np.arange(1, N_ITEMS + 1), pa.int32()),
                "vector": vec.astype(np.float32),
                "missing": pa.array([False] * N_ITEMS),
            },
            metadata={"missing_policy": "mean"},
        )
        CorrelationCodebook(torch.tensor(rng.uniform(-1, 1, size=(6, 4)), dtype=torch.float32)).save(
            sup / f"codebook_{m}.safetensors"
        )
    return seq_path, sup


def params(base: Params, **over) -> Params:
    defaults = {
        "train.device": "cpu",
        "train.hidden": 16,
        "train.heads": 2,
        "train.max_len": 8,
        "train.batch_size": 16,
        "train.epochs": 3,
        "train.dropout": 0.1,
        "train.modalities": ["text"],
        "train.lr": 0.005,
        "train.warmup_epochs": 0,  # a constant base rate, whatever the demo's schedule
        "train.cosine": False,
        "train.precision": "float32",  # the same arithmetic on every CI machine (bf16: its own test)
        "eval.batch_size": 7,
        "mlflow.enabled": False,
    }
    defaults.update(over)
    return with_overrides(base, defaults)


def train(p: Params, tmp: Path, seq: Path, sup: Path, name: str, **kw):
    kw.setdefault("checkpoint_root", tmp / "ckpt")
    return run_train(
        p.train,
        p.correlate.score,
        p.eval,
        p.mlflow,
        sequences_path=seq,
        supervision_dir=sup,
        model_dir=tmp / name / "models",
        curve_path=tmp / name / "curve.csv",
        progress=False,
        **kw,
    )


def test_kdsr_run_writes_model_and_curve_with_every_term(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **{"train.async_lr.warmup_epochs": 4})
    summary = train(p, tmp_path, seq, sup, "kd")
    assert summary["finished"] and 1 <= summary["best_epoch"] <= 3
    rows = list(csv.DictReader((tmp_path / "kd" / "curve.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for col in (
        "ce",
        "hol_text",
        "code_text",
        "lr_default",
        "lr_modality",
        "lr_no_decay",
        "valid_ndcg_at_10",
        "seconds",
        "seq_per_s",
    ):
        assert col in rows[0], col
    assert float(rows[0]["hol_text"]) >= 0 and float(rows[0]["code_text"]) > 0
    # asynchronous rate: the modality group starts at 1/4 of the base rate and rises towards it
    lr_mod = [float(r["lr_modality"]) for r in rows]
    assert lr_mod[0] < lr_mod[1] < lr_mod[2] < float(rows[2]["lr_default"])
    model = load_student(tmp_path / "kd" / "models")
    assert model.cfg.modalities == ("text",) and model.cfg.num_codes == 6 and model.cfg.code_groups == 0
    # no checkpoint is left behind after a finished run
    assert not any((tmp_path / "ckpt").rglob("*.pt"))


def test_bfloat16_training_follows_the_float32_run(base_params: Params, tmp_path: Path) -> None:
    # train.precision: bfloat16 autocasts the step's matmuls (auto picks it on AMX CPUs and GPUs); the
    # losses stay within bf16 rounding of the float32 run's, and validation still scores in float32
    seq, sup = write_tiny_data(tmp_path)
    curves = {}
    for precision in ("float32", "bfloat16"):
        train(params(base_params, **{"train.precision": precision}), tmp_path, seq, sup, precision)
        curves[precision] = list(csv.DictReader((tmp_path / precision / "curve.csv").open()))
    for key in ("ce", "hol_text", "code_text"):
        f32, b16 = (float(curves[p][0][key]) for p in ("float32", "bfloat16"))
        assert b16 == pytest.approx(f32, rel=0.05, abs=1e-3), key
        assert b16 != f32  # the bf16 path did run
    assert float(curves["bfloat16"][-1]["valid_ndcg_at_10"]) > 0


def test_vq_codebook_from_the_correlate_stage_trains_one_head_per_sub_vector(
    base_params: Params, tmp_path: Path
) -> None:
    from pipeline.supervision.codebooks import ProductCodebook, load_codebook
    from pipeline.supervision.correlate import run_correlate

    seq, sup = write_tiny_data(tmp_path)
    teacher = read_parquet(sup / "teacher_text.parquet")  # the tiny data's family-structured vectors
    write_parquet(
        tmp_path / "emb" / "text.parquet",
        {
            "item": teacher.column("item"),
            "vector": vectors_from_column(teacher.column("vector")),
            "missing": teacher.column("missing"),
        },
        metadata={"model": "synthetic", "missing_policy": "mean"},
    )
    p = params(
        base_params,
        **{
            "correlate.quantizer": "vq",
            "correlate.dim": DIM,
            "correlate.sub_vectors": 4,
            "correlate.codes": 5,
            "correlate.topk": 5,
            "correlate.sample_pairs": 500,
            "correlate.device": "cpu",
            "train.epochs": 2,
        },
    )
    vq_sup = tmp_path / "vq_supervision"
    run_correlate(p.correlate, ["text"], p.mlflow, tmp_path / "emb", seq, vq_sup)
    assert isinstance(load_codebook(vq_sup / "codebook_text.safetensors"), ProductCodebook)
    assert train(p, tmp_path, seq, vq_sup, "vq")["finished"]
    rows = list(csv.DictReader((tmp_path / "vq" / "curve.csv").open()))
    for col in ("code_text", "code_acc_text", "grad_code_text", "hol_text"):
        assert col in rows[0], col
    # mean CE over 4 heads of 5 levels: positive, and near log 5 at the start; accuracy a mean of shares
    assert 0 < float(rows[0]["code_text"]) < 2 * np.log(5)
    assert all(0.0 <= float(r["code_acc_text"]) <= 1.0 for r in rows)
    model = load_student(tmp_path / "vq" / "models")
    assert (model.cfg.num_codes, model.cfg.code_groups) == (5, 4)
    assert model.code_logits("text", torch.tensor([1, 2]), torch.tensor([3, 4])).shape == (2, 4, 5)


# sparse: the sampled softmax with lazy-Adam table updates, whose optimiser checkpoints two parts
SPARSE = {
    "train.loss": "sampled_softmax",
    "train.num_negatives": 8,
    "train.negatives": "popularity",
    "train.embedding_updates": "sparse",
}


REFRESH = {"train.refresh.enabled": True, "train.refresh.epochs": 1}


@pytest.mark.parametrize("over", [{}, SPARSE, REFRESH], ids=["dense", "sparse", "refresh"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(
    base_params: Params, tmp_path: Path, over: dict
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **over)
    train(p, tmp_path, seq, sup, "straight", checkpoint_root=tmp_path / "ck1")
    first = train(p, tmp_path, seq, sup, "resumed", checkpoint_root=tmp_path / "ck2", max_epochs_this_call=1)
    assert not first["finished"] and not (tmp_path / "resumed" / "models").exists()
    train(p, tmp_path, seq, sup, "resumed", checkpoint_root=tmp_path / "ck2")
    a = load_file(tmp_path / "straight" / "models" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "models" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_id_only_needs_no_supervision(base_params: Params, tmp_path: Path) -> None:
    seq, _ = write_tiny_data(tmp_path)
    p = params(base_params, **{"train.modalities": [], "train.epochs": 2})
    summary = train(p, tmp_path, seq, tmp_path / "nowhere", "id")
    assert summary["finished"]
    assert load_student(tmp_path / "id" / "models").cfg.modalities == ()


@pytest.mark.parametrize("backbone", ["gru4rec"])
def test_distillation_works_on_another_backbone(base_params: Params, tmp_path: Path, backbone: str) -> None:
    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **{"train.backbone": backbone, "train.epochs": 2})
    assert train(p, tmp_path, seq, sup, backbone)["finished"]


def test_missing_supervision_for_a_modality_is_a_clear_error(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **{"train.modalities": ["text", "image"]})
    with pytest.raises(PipelineError, match="teacher_image.parquet"):
        train(p, tmp_path, seq, sup, "x")


def test_teacher_neighbour_pairs_join_the_distillation(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    mse = {"train.kd.holistic_loss": "mse"}  # neighbour pairs join the batch's unique pairs (mse form)
    p = params(base_params, **{**mse, "train.epochs": 1, "train.kd.neighbour_pairs": 64})
    with pytest.raises(PipelineError, match="topk_text.parquet is missing"):
        train(p, tmp_path, seq, sup, "no_lists")
    family = [
        [j for j in range(1 + (i - 1) // 10 * 10, 11 + (i - 1) // 10 * 10) if j != i] for i in range(1, 41)
    ]
    write_parquet(
        sup / "topk_text.parquet",
        pa.table({"item": pa.array(range(1, N_ITEMS + 1), pa.int32()), "neighbors": family}),
    )
    assert train(p, tmp_path, seq, sup, "neighbours")["finished"]
    plain = params(base_params, **{**mse, "train.epochs": 1})
    train(plain, tmp_path, seq, sup, "plain")
    row = {
        name: next(csv.DictReader((tmp_path / name / "curve.csv").open())) for name in ("neighbours", "plain")
    }
    # the same batches and within-sequence pairs; the neighbour pairs change the distillation terms
    assert row["neighbours"]["hol_text"] != row["plain"]["hol_text"]
    assert row["neighbours"]["code_text"] != row["plain"]["code_text"]


def test_training_beats_popularity_on_structured_data(base_params: Params, tmp_path: Path) -> None:
    from pipeline.artifacts import read_sequences
    from pipeline.evaluation.cases import load_eval_cases
    from pipeline.evaluation.metrics import evaluate_scorer, popularity_scores

    seq, sup = write_tiny_data(tmp_path)
    p = params(base_params, **{"train.epochs": 15, "train.patience": 15})
    train(p, tmp_path, seq, sup, "kd")
    model = load_student(tmp_path / "kd" / "models")
    cases = load_eval_cases(seq, "test", 8)
    ours, _ = evaluate_scorer(model.user_scores, cases, [10], True, 32)
    s = read_sequences(seq)
    pop = popularity_scores(s, N_ITEMS)
    base, _ = evaluate_scorer(lambda x: pop.expand(len(x), -1), cases, [10], True, 32)
    assert ours["ndcg_at_10"] > base["ndcg_at_10"] + 0.05


def test_paper_wiring_with_frobenius_distillation_trains_and_logs_the_diagnostics(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    over = {
        "train.output": "id",
        "train.fusion": "paper_gate",
        "train.kd.holistic_loss": "frobenius",
        "train.kd.projection": "none",
        "train.kd.random_pairs": 4,
        "train.kd.holistic_weight": 0.5,
        "train.kd.code_weight": 0.5,
        "train.async_lr.schedule": "exponential",
    }
    summary = train(params(base_params, **over), tmp_path, seq, sup, "paper")
    assert summary["finished"]
    rows = list(csv.DictReader((tmp_path / "paper" / "curve.csv").open()))
    for col in (
        "grad_ce_text",
        "grad_hol_text",
        "grad_code_text",
        "table_r_text",
        "kd_r_text",
        "code_acc_text",
    ):
        assert col in rows[0], col
    # no projection: the holistic head is the table, so the two agreements are one number
    assert all(r["table_r_text"] == r["kd_r_text"] for r in rows)
    assert float(rows[0]["grad_ce_text"]) > 0 and float(rows[0]["hol_text"]) > 0
    model = load_student(tmp_path / "paper" / "models")
    assert (model.cfg.output, model.cfg.fusion, model.cfg.kd_projection) == ("id", "paper_gate", "none")
    # its twin: the same wiring without the distillation terms logs only the CE's gradient
    twin = train(
        params(base_params, **{**over, "train.kd.holistic_weight": 0.0, "train.kd.code_weight": 0.0}),
        tmp_path,
        seq,
        sup,
        "twin",
    )
    assert twin["finished"]
    rows = list(csv.DictReader((tmp_path / "twin" / "curve.csv").open()))
    assert "grad_ce_text" in rows[0] and "grad_hol_text" not in rows[0] and "hol_text" not in rows[0]


def test_future_targets_and_label_smoothing_reach_the_training_loss_and_need_the_full_softmax(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    ce = {}
    for name, keys in {
        "next": {},
        "future": {"train.future_targets": 2},
        "smooth": {"train.label_smoothing": 0.1},
    }.items():
        p = params(base_params, **{"train.epochs": 1, **keys})
        assert train(p, tmp_path, seq, sup, name)["finished"]
        ce[name] = float(next(csv.DictReader((tmp_path / name / "curve.csv").open()))["ce"])
    # the same seed and batches: a label spread over later items, or over the catalogue, is harder to fit than
    # the next item alone
    assert ce["future"] > ce["next"] and ce["smooth"] > ce["next"], ce
    with pytest.raises(ConfigError, match="future_targets needs loss ce"):
        params(base_params, **{"train.future_targets": 2, "train.loss": "sampled_softmax"})
    with pytest.raises(ConfigError, match="label_smoothing needs loss ce"):
        params(base_params, **{"train.label_smoothing": 0.1, "train.loss": "sampled_softmax"})
    with pytest.raises(ConfigError, match="label_smoothing"):
        params(base_params, **{"train.label_smoothing": 1.0})


def test_frobenius_loss_refuses_neighbour_pairs(base_params: Params) -> None:
    with pytest.raises(ConfigError, match="neighbour_pairs must be 0"):
        params(base_params, **{"train.kd.holistic_loss": "frobenius", "train.kd.neighbour_pairs": 8})


def test_last_item_prior_weight_is_chosen_on_validation_and_saved(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    plain = train(params(base_params, **{"train.last_item_prior": []}), tmp_path, seq, sup, "plain")
    p = params(base_params, **{"train.last_item_prior": [0.0, 0.5, 3.0]})
    summary = train(p, tmp_path, seq, sup, "prior")
    model = load_student(tmp_path / "prior" / "models")
    assert model.cfg.last_item_prior in (0.0, 0.5, 3.0)
    # the epochs are the plain run's (training never sees the prior); the saved model's validation is at least
    # the plain model's, since weight 0 was a candidate
    assert summary["best_epoch"] == plain["best_epoch"]
    assert summary["best_valid"]["ndcg_at_10"] >= plain["best_valid"]["ndcg_at_10"]
    if model.cfg.last_item_prior == 0.0:
        assert summary["best_valid"] == plain["best_valid"]


def write_tiny_items(root: Path, attributes: list[list[str]]) -> Path:
    path = root / "items.parquet"  # next to sequences.parquet, where ingest writes it
    write_parquet(
        path,
        pa.table(
            {
                "item": pa.array(np.arange(1, N_ITEMS + 1), pa.int32()),
                "item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)],
                "text": [""] * N_ITEMS,
                "image": pa.array([None] * N_ITEMS, pa.string()),
                "attributes": pa.array(attributes, pa.list_(pa.string())),
            }
        ),
    )
    return path


def test_item_attributes_are_learned_from_the_catalogue_and_saved_with_the_model(
    base_params: Params, tmp_path: Path
) -> None:
    seq, sup = write_tiny_data(tmp_path)
    # each family's items share "fam=<k>"; item 1 alone has "only=1" (dropped: one item); items 31-40 none
    attrs = [
        [f"fam={(i - 1) // 10}"] + (["only=1"] if i == 1 else []) if i <= 30 else [] for i in range(1, 41)
    ]
    write_tiny_items(tmp_path, attrs)
    train(params(base_params, **{"train.epochs": 1}), tmp_path, seq, sup, "attr")
    model = load_student(tmp_path / "attr" / "models")
    assert (model.cfg.num_attributes, model.cfg.attribute_width) == (3, 1)
    expected = torch.zeros(N_ITEMS + 1, 1, dtype=torch.long)
    expected[1:31, 0] = torch.arange(30) // 10 + 1  # fam=0, fam=1, fam=2 are ids 1, 2, 3
    assert torch.equal(model.attribute_ids, expected)
    # train.attributes: false leaves them out
    train(params(base_params, **{"train.epochs": 1, "train.attributes": False}), tmp_path, seq, sup, "off")
    assert load_student(tmp_path / "off" / "models").attribute_emb is None


def test_attributes_of_another_ingest_run_are_refused(base_params: Params, tmp_path: Path) -> None:
    seq, sup = write_tiny_data(tmp_path)
    write_tiny_items(tmp_path, [["a=1"]] * N_ITEMS)
    table = read_parquet(seq)
    write_parquet(seq, table, metadata={"items_sha256": "0" * 64})  # written with some other items.parquet
    with pytest.raises(PipelineError, match=r"written with another items.parquet"):
        train(params(base_params, **{"train.epochs": 1}), tmp_path, seq, sup, "stale")
