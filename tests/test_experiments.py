"""The experiment suite on a tiny demo catalogue, and the report's aggregation on hand-made run folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

import pipeline.experiments.report as report_mod
from pipeline.config import PROJECT_ROOT, Params, flatten, load_params, with_overrides
from pipeline.errors import PipelineError
from pipeline.experiments.plan import (
    ABLATIONS,
    KD_WEIGHTS,
    MAIN_VARIANTS,
    TWINS,
    VARIANTS,
    parse_overrides,
    plan_runs,
    twin_overrides,
    variant_seeds,
)
from pipeline.experiments.report import aggregate, ndcg_per_user, paired_test, write_report
from pipeline.experiments.shared import prepare_shared, shared_data
from pipeline.experiments.suite import run_suite, stale_runs
from pipeline.io import read_json, write_json, write_parquet
from pipeline.tracking import Tracker

TINY = {
    "data.demo.users": 150,
    "data.demo.items": 60,
    "data.demo.families": 4,
    "data.demo.image_size": 16,
    "embed.device": "cpu",
    "correlate.device": "cpu",
    "correlate.dim": 16,
    "correlate.sub_vectors": 4,
    "correlate.codes": 4,
    "correlate.sample_pairs": 500,
    "correlate.topk": 5,
    "train.modalities": ["text"],  # no image model: the text teacher alone costs a few seconds
    "train.device": "cpu",
    "train.epochs": 2,
    "train.hidden": 16,
    "train.batch_size": 64,
    "mlflow.enabled": False,
}
RUN_FILES = ("metrics.json", "per_user.parquet", "train_curve.csv", "summary.json", "params.json")
# each stage's library function, as ``run_stage`` imports it when the stage runs
STAGE_FUNCTIONS = {
    "run_ingest": "pipeline.data.ingest.run_ingest",
    "run_embed": "pipeline.teachers.embed.run_embed",
    "run_correlate": "pipeline.supervision.correlate.run_correlate",
    "run_train": "pipeline.training.train.run_train",
    "run_evaluate": "pipeline.evaluation.evaluate.run_evaluate",
}


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path, list[dict[str, Any]]]:
    """sasrec_id + kdsr (and so kdsr_twin) over 2 seeds, 2 epochs, on 150 demo users: built once."""
    root = tmp_path_factory.mktemp("suite")
    base = with_overrides(load_params(), {**TINY, "embed.cache_dir": str(root / "embed_cache")})
    out = root / "tiny"
    results = run_suite(base, out, variants=["sasrec_id", "kdsr"], seeds=2, progress=False)
    write_report(out)
    return base, out, results


def _forbid(name: str):
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{name} was called")

    return fail


@pytest.mark.slow
def test_suite_writes_every_run_and_the_shared_data(tiny_suite) -> None:
    base, out, results = tiny_suite
    assert [(r["variant"], r["seed"], r["status"]) for r in results] == [
        ("sasrec_id", 0, "done"),  # seed-major: every variant's first seed first
        ("kdsr", 0, "done"),
        ("kdsr_twin", 0, "done"),  # kdsr brings its twin, with the same seeds
        ("sasrec_id", 1, "done"),
        ("kdsr", 1, "done"),
        ("kdsr_twin", 1, "done"),
    ]
    for step in ("ingest", "embed", "correlate"):
        assert (out / "data" / f"{step}.params.json").exists()
    assert (out / "data" / "supervision" / "teacher_text.parquet").exists()
    for r in results:
        d = out / "runs" / r["variant"] / f"seed{r['seed']}"
        for name in RUN_FILES:
            assert (d / name).exists(), d / name
        assert (d / "models" / "model.safetensors").exists()
        assert not (d / "checkpoints").exists()  # removed once the run finished
        metrics = read_json(d / "metrics.json")
        assert metrics["test"] == r["test"]
        summary = read_json(d / "summary.json")
        assert summary["train_seed"] == base.train.seed + r["seed"]
        assert summary["epochs_run"] == 2 and 1 <= summary["best_epoch"] <= 2
        assert 0 < summary["seconds_to_best"] <= summary["seconds_total"]
        run_params = read_json(d / "params.json")["params"]
        assert run_params["train"]["modalities"] == ([] if r["variant"] == "sasrec_id" else ["text"])
    # different seeds give different models
    assert results[0]["test"] != results[1]["test"]
    suite = read_json(out / "suite.json")
    assert suite["seeds"] == {"sasrec_id": 2, "kdsr": 2, "kdsr_twin": 2}
    assert suite["twins"] == {"kdsr": "kdsr_twin"}
    # the twin's recorded config is the variant's with both distillation weights at zero, nothing else
    for k in (0, 1):
        mine = read_json(out / "runs" / "kdsr" / f"seed{k}" / "params.json")
        twin = read_json(out / "runs" / "kdsr_twin" / f"seed{k}" / "params.json")
        assert mine["params"]["train"]["kd"]["holistic_weight"] > 0
        twin["params"]["train"]["kd"].update(
            holistic_weight=mine["params"]["train"]["kd"]["holistic_weight"],
            code_weight=mine["params"]["train"]["kd"]["code_weight"],
        )
        assert twin == mine


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_unchanged_shared_steps(tiny_suite, monkeypatch) -> None:
    base, out, first = tiny_suite
    for name in ("run_ingest", "run_embed", "run_correlate", "run_train", "run_evaluate"):
        monkeypatch.setattr(STAGE_FUNCTIONS[name], _forbid(name))
    again = run_suite(base, out, variants=["sasrec_id", "kdsr"], seeds=2, progress=False)
    assert [r["status"] for r in again] == ["skipped"] * 6
    assert [r["test"] for r in again] == [r["test"] for r in first]


@pytest.mark.slow
def test_an_unevaluated_run_only_evaluates(tiny_suite, tmp_path, monkeypatch) -> None:
    base, out, first = tiny_suite
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "runs" / "kdsr" / "seed1" / "metrics.json").unlink()
    monkeypatch.setattr(STAGE_FUNCTIONS["run_train"], _forbid("run_train"))
    again = run_suite(base, copy, variants=["kdsr"], seeds=2, progress=False)
    assert [(r["variant"], r["status"]) for r in again] == [
        ("kdsr", "skipped"),
        ("kdsr_twin", "skipped"),
        ("kdsr", "done"),
        ("kdsr_twin", "skipped"),
    ]
    assert again[2]["test"] == first[4]["test"]


@pytest.mark.slow
def test_a_record_older_than_an_option_matches_that_options_default(
    tiny_suite, tmp_path, monkeypatch
) -> None:
    base, out, first = tiny_suite
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for path in copy.glob("runs/kdsr*/seed*/params.json"):  # as a version without random_pairs wrote them
        record = read_json(path)
        del record["params"]["train"]["kd"]["random_pairs"]
        write_json(path, record)
    shared = shared_data(base, copy / "data")
    assert stale_runs(plan_runs(base, copy, variant_seeds(["kdsr"], 2, 1)), shared) == []
    monkeypatch.setattr(STAGE_FUNCTIONS["run_train"], _forbid("run_train"))
    again = run_suite(base, copy, variants=["kdsr"], seeds=2, progress=False)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [r["test"] for r in again] == [r["test"] for r in first if r["variant"] != "sasrec_id"]
    changed = with_overrides(base, {"train.kd.random_pairs": 3})  # not the default: those runs are stale
    assert len(stale_runs(plan_runs(changed, copy, variant_seeds(["kdsr"], 2, 1)), shared)) == 4


@pytest.mark.slow
def test_changed_params_rerun_only_later_steps_and_flag_stale_runs(tiny_suite, tmp_path, monkeypatch) -> None:
    base, out, _ = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    calls: list[str] = []
    for name in ("run_ingest", "run_embed", "run_correlate"):
        monkeypatch.setattr(STAGE_FUNCTIONS[name], lambda *a, _n=name, **k: calls.append(_n))
    changed = with_overrides(base, {"correlate.codes": 6})
    shared = prepare_shared(changed, data)
    assert calls == ["run_correlate"]
    assert read_json(data / "correlate.params.json")["params"]["correlate"]["codes"] == 6
    # the finished runs were made with the old supervision: the suite refuses to mix them in
    specs = plan_runs(changed, out, variant_seeds(["kdsr"], 2, 1))
    assert stale_runs(specs, shared) == [
        out / "runs" / v / f"seed{k}" for k in (0, 1) for v in ("kdsr", "kdsr_twin")
    ]
    assert (
        stale_runs(plan_runs(base, out, variant_seeds(["kdsr"], 2, 1)), shared_data(base, out / "data")) == []
    )
    with pytest.raises(PipelineError, match="finished runs of another config"):
        run_suite(changed, out, variants=["kdsr"], seeds=2, progress=False)
    assert calls == ["run_correlate"]  # refused before any work


@pytest.mark.slow
def test_results_md_has_rows_mean_std_and_p_values(tiny_suite) -> None:
    _, out, results = tiny_suite
    md = (out / "results.md").read_text()
    res = read_json(out / "results.json")
    ndcg = [r["test"]["ndcg_at_20"] for r in results if r["variant"] == "kdsr"]
    mean, std = np.mean(ndcg), np.std(ndcg, ddof=1)
    assert "| kdsr | 2 | " in md and "| sasrec_id | 2 | " in md and "| popularity | – | " in md
    assert f"{mean:.4f} ± {std:.4f}" in md
    assert res["variants"]["kdsr"]["test"]["ndcg_at_20"]["mean"] == pytest.approx(mean)
    assert res["baseline"] == "sasrec_id"  # the only baseline run
    sig = res["significance"]["kdsr"]
    kd = [ndcg_per_user(out / "runs" / "kdsr" / f"seed{k}" / "per_user.parquet") for k in (0, 1)]
    bl = [ndcg_per_user(out / "runs" / "sasrec_id" / f"seed{k}" / "per_user.parquet") for k in (0, 1)]
    users = sorted(kd[0])
    a = np.array([(kd[0][u] + kd[1][u]) / 2 for u in users])
    b = np.array([(bl[0][u] + bl[1][u]) / 2 for u in users])
    assert (
        sig["users"]
        == len(users)
        == read_json(out / "runs" / "kdsr" / "seed0" / "metrics.json")["cases"]["test"]
    )
    assert sig["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert sig["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert f"{sig['wilcoxon_p']:.3g}" in md and f"{sig['ttest_p']:.3g}" in md
    assert (out / "test_metrics.png").stat().st_size > 0 and (out / "valid_curves.png").stat().st_size > 0
    # what is left of the teacher: per run (cached next to the model), averaged per variant, shown in the md
    assert res["variants"]["sasrec_id"]["teacher_agreement"] == {}
    per_run = [read_json(out / "runs" / "kdsr" / f"seed{k}" / "teacher_agreement.json") for k in (0, 1)]
    agreed = res["variants"]["kdsr"]["teacher_agreement"]["text"]
    assert agreed["table_r"] == pytest.approx(np.mean([r["text"]["table_r"] for r in per_run]))
    assert -1.0 <= agreed["kd_r"] <= 1.0 and per_run[0]["text"]["pairs"] > 40_000
    assert "## What is left of the teacher's correlations" in md and f"| {agreed['table_r']:.3f} |" in md
    # the KD effect: kdsr against its twin, the same paired test over users on the seed-averaged NDCG@20
    effect = res["kd_effect"]["kdsr"]
    assert effect["twin"] == "kdsr_twin" and effect["seeds"] == [0, 1]
    tw = [ndcg_per_user(out / "runs" / "kdsr_twin" / f"seed{k}" / "per_user.parquet") for k in (0, 1)]
    t = np.array([(tw[0][u] + tw[1][u]) / 2 for u in users])
    assert effect["users"]["users"] == len(users) and effect["users"]["twin_mean"] == pytest.approx(t.mean())
    if not np.array_equal(a, t):
        assert effect["users"]["ttest_p"] == pytest.approx(stats.ttest_rel(a, t).pvalue)
    twin_ndcg = [r["test"]["ndcg_at_20"] for r in results if r["variant"] == "kdsr_twin"]
    assert effect["per_seed"]["differences"] == pytest.approx(np.subtract(ndcg, twin_ndcg))
    assert "## KD effect: each KDSR variant vs its twin" in md and "| kdsr | kdsr_twin (twin) | 0, 1 | " in md


# --------------------------------------------------------------------------------------------- hand-made runs
METRICS = [f"{m}_at_{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)]


def _fake_run(out: Path, variant: str, seed: int, value: float, test_ranks: dict[int, list[int]]) -> None:
    """A finished run whose every test metric is ``value``; per-user ranks as given (valid rows are noise)."""
    d = out / "runs" / variant / f"seed{seed}"
    pop = {m: 0.05 for m in METRICS}
    write_json(
        d / "metrics.json",
        {
            "test": {m: value for m in METRICS},
            "valid": {m: value / 2 for m in METRICS},
            "popularity": {"test": pop, "valid": pop},
            "cases": {"valid": 4, "test": 4},
        },
    )
    write_json(d / "summary.json", {"best_epoch": 3 + 2 * seed, "seconds_to_best": 10.0 * (seed + 1)})
    users = [u for u, rs in test_ranks.items() for _ in rs] + [1, 2, 3, 4]
    ranks = [r for rs in test_ranks.values() for r in rs] + [0, 0, 0, 0]
    write_parquet(
        d / "per_user.parquet",
        pa.table(
            {
                "user": pa.array(users, pa.int32()),
                "part": ["test"] * (len(users) - 4) + ["valid"] * 4,
                "target": pa.array([1] * len(users), pa.int32()),
                "rank": pa.array(ranks, pa.int32()),
            }
        ),
    )
    (d / "train_curve.csv").write_text("epoch,valid_ndcg_at_10\n1,0.1\n2,0.2\n")


def g(rank: int) -> float:
    """NDCG@20 of one case: 1/log2(rank+2) inside the top 20, else 0."""
    return 1 / math.log2(rank + 2) if rank < 20 else 0.0


@pytest.fixture
def fake_suite(tmp_path: Path) -> Path:
    out = tmp_path / "fake"
    _fake_run(out, "sasrec_id", 0, 0.10, {1: [5], 2: [5], 3: [5], 4: [5]})
    _fake_run(out, "sasrec_id", 1, 0.12, {1: [5], 2: [5], 3: [5], 4: [5]})
    _fake_run(out, "sasrec_modality", 0, 0.20, {1: [1], 2: [4], 3: [30], 4: [5]})
    _fake_run(out, "sasrec_modality", 1, 0.24, {1: [2], 2: [4], 3: [40], 4: [7]})
    _fake_run(out, "kdsr", 0, 0.30, {1: [0], 2: [1], 3: [25], 4: [3, 50]})  # user 4: two test cases
    _fake_run(out, "kdsr", 1, 0.36, {1: [0], 2: [2], 3: [19], 4: [3, 3]})
    _fake_run(out, "kdsr_gru4rec", 0, 0.25, {1: [0], 2: [0], 3: [0], 4: [0]})
    return out


def test_report_aggregates_known_means_stds_and_paired_tests(fake_suite: Path) -> None:
    res = aggregate(fake_suite)
    v = res["variants"]
    assert list(v) == ["sasrec_id", "sasrec_modality", "kdsr", "kdsr_gru4rec"]
    assert res["metrics"] == METRICS
    # mean ± sample std of (0.30, 0.36): 0.33 ± sqrt(2 * 0.03^2 / 1)
    assert v["kdsr"]["test"]["ndcg_at_20"]["mean"] == pytest.approx(0.33)
    assert v["kdsr"]["test"]["hr_at_5"]["std"] == pytest.approx(0.03 * math.sqrt(2))
    assert v["sasrec_id"]["test"]["ndcg_at_20"]["std"] == pytest.approx(0.01 * math.sqrt(2))
    assert v["kdsr"]["valid"]["ndcg_at_10"]["mean"] == pytest.approx(0.165)
    assert v["kdsr_gru4rec"]["n"] == 1 and v["kdsr_gru4rec"]["test"]["hr_at_20"]["std"] is None
    assert v["kdsr"]["best_epoch"] == pytest.approx(4.0) and v["kdsr"]["seconds_to_best"] == pytest.approx(
        15.0
    )
    # best baseline by mean test NDCG@20: sasrec_modality (0.22 > 0.11)
    assert res["baseline"] == "sasrec_modality"
    assert res["relative_change"]["kdsr"]["ndcg_at_20"] == pytest.approx(50.0)
    assert res["relative_change"]["kdsr_gru4rec"]["hr_at_10"] == pytest.approx(100 * (0.25 / 0.22 - 1))
    assert "sasrec_id" not in res["relative_change"]
    assert res["popularity"]["test"]["hr_at_20"] == 0.05
    # per-user NDCG@20 averaged over seeds (user 4 of kdsr averages its two cases first)
    kdsr = np.array(
        [
            (g(0) + g(0)) / 2,
            (g(1) + g(2)) / 2,
            (g(25) + g(19)) / 2,
            ((g(3) + g(50)) / 2 + (g(3) + g(3)) / 2) / 2,
        ]
    )
    base = np.array([(g(1) + g(2)) / 2, (g(4) + g(4)) / 2, (g(30) + g(40)) / 2, (g(5) + g(7)) / 2])
    sig = res["significance"]["kdsr"]
    assert sig["baseline"] == "sasrec_modality" and sig["users"] == 4 and sig["metric"] == "ndcg_at_20"
    assert sig["mean"] == pytest.approx(kdsr.mean()) and sig["baseline_mean"] == pytest.approx(base.mean())
    assert sig["wilcoxon_p"] == pytest.approx(stats.wilcoxon(kdsr, base).pvalue)
    assert sig["ttest_p"] == pytest.approx(stats.ttest_rel(kdsr, base).pvalue)


def test_report_files_render_the_table(fake_suite: Path) -> None:
    res = write_report(fake_suite)
    md = (fake_suite / "results.md").read_text()
    assert "| kdsr | 2 | 0.3300 ± 0.0424 | 0.3300 ± 0.0424 |" in md
    assert md.count("| kdsr | 2 | ") == 1 and "| 4.0 | 15.0 |" in md
    assert "| kdsr_gru4rec | 1 | 0.2500 | " in md  # one seed: no std
    assert "| popularity | – | 0.0500 | " in md
    assert "| kdsr | +50.0% | +50.0% |" in md
    sig = res["significance"]["kdsr"]
    assert f"| kdsr | sasrec_modality | 4 | {sig['mean']:.4f} | {sig['baseline_mean']:.4f} | " in md
    assert f"{sig['wilcoxon_p']:.3g} | {sig['ttest_p']:.3g} |" in md
    assert "`train.modalities=[]`" in md  # variant overrides, from the known variants
    assert json.loads((fake_suite / "results.json").read_text())["baseline"] == "sasrec_modality"
    for png in ("test_metrics.png", "valid_curves.png"):
        assert (fake_suite / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fake_twin_suite(fake_suite: Path) -> Path:
    """The fake suite plus kdsr's twin (3 seeds: the third has no kdsr partner), kdsr_codes_only (shares
    kdsr_twin) and kdsr_no_async (whose twin is sasrec_modality)."""
    out = fake_suite
    _fake_run(out, "kdsr_twin", 0, 0.25, {1: [1], 2: [5], 3: [30], 4: [10]})
    _fake_run(out, "kdsr_twin", 1, 0.40, {1: [1], 2: [5], 3: [30], 4: [10]})
    _fake_run(out, "kdsr_twin", 2, 0.50, {1: [0], 2: [0], 3: [0], 4: [0]})  # unpaired: must not count
    _fake_run(out, "kdsr_codes_only", 0, 0.28, {1: [0], 2: [1], 3: [25], 4: [3, 50]})
    _fake_run(out, "kdsr_no_async", 0, 0.21, {1: [0], 2: [3], 3: [12], 4: [5]})
    return out


def test_kd_effect_pairs_each_variant_with_its_twin(fake_twin_suite: Path) -> None:
    res = aggregate(fake_twin_suite)
    assert list(res["variants"]) == [
        "sasrec_id",
        "sasrec_modality",
        "kdsr",
        "kdsr_twin",
        "kdsr_codes_only",
        "kdsr_no_async",
        "kdsr_gru4rec",
    ]
    effects = res["kd_effect"]
    assert list(effects) == ["kdsr", "kdsr_codes_only", "kdsr_no_async"]  # kdsr_gru4rec: no twin ran
    # twins are not KDSR variants: no comparison of theirs against the best baseline
    assert "kdsr_twin" not in res["relative_change"] and "kdsr_twin" not in res["significance"]
    assert res["baseline"] == "sasrec_modality"  # the twin (mean 0.383) is not a baseline candidate

    e = effects["kdsr"]
    assert e["twin"] == "kdsr_twin" and e["seeds"] == [0, 1] and e["metric"] == "ndcg_at_20"
    # means over the paired seeds only: the twin's (0.25, 0.40), not its third seed
    hr = e["test"]["hr_at_20"]
    assert hr["mean"] == pytest.approx(0.33) and hr["std"] == pytest.approx(0.03 * math.sqrt(2))
    assert hr["twin_mean"] == pytest.approx(0.325) and hr["twin_std"] == pytest.approx(0.075 * math.sqrt(2))
    assert hr["relative"] == pytest.approx(100 * (0.33 - 0.325) / 0.325)  # +1.54 %
    assert res["variants"]["kdsr_twin"]["n"] == 3  # the main table keeps every seed
    # over seeds: NDCG@20 differences 0.30 - 0.25 and 0.36 - 0.40
    seeds = e["per_seed"]
    assert seeds["differences"] == pytest.approx([0.05, -0.04])
    assert seeds["mean"] == pytest.approx(0.005) and seeds["std"] == pytest.approx(0.045 * math.sqrt(2))
    assert (seeds["better"], seeds["worse"], seeds["tied"]) == (1, 1, 0)
    # over users: seed-averaged per-user NDCG@20 of kdsr and of the twin's seeds 0 and 1
    kdsr = np.array(
        [
            (g(0) + g(0)) / 2,
            (g(1) + g(2)) / 2,
            (g(25) + g(19)) / 2,
            ((g(3) + g(50)) / 2 + (g(3) + g(3)) / 2) / 2,
        ]
    )
    twin = np.array([g(1), g(5), g(30), g(10)])
    d = kdsr - twin
    assert np.all(d > 0) and len(set(np.abs(d))) == 4
    users = e["users"]
    assert users["users"] == 4
    assert users["mean"] == pytest.approx(kdsr.mean()) and users["twin_mean"] == pytest.approx(twin.mean())
    # exact Wilcoxon: every one of 4 differences positive, W- = 0, p = 2 * (1 / 2^4)
    assert users["wilcoxon_p"] == pytest.approx(0.125)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    assert users["ttest_p"] == pytest.approx(2 * stats.t.sf(t, df=3))
    assert users["ttest_p"] == pytest.approx(stats.ttest_rel(kdsr, twin).pvalue)

    # kdsr_codes_only shares kdsr's twin, paired on seed 0 only (it ran one seed)
    c = effects["kdsr_codes_only"]
    assert c["twin"] == "kdsr_twin" and c["seeds"] == [0]
    assert c["test"]["ndcg_at_20"]["twin_mean"] == pytest.approx(0.25)
    assert c["test"]["ndcg_at_20"]["std"] is None and c["per_seed"]["std"] is None
    assert c["per_seed"]["differences"] == pytest.approx([0.03]) and c["per_seed"]["better"] == 1
    mine0 = np.array([g(0), g(1), g(25), (g(3) + g(50)) / 2])
    twin0 = np.array([g(1), g(5), g(30), g(10)])
    assert c["users"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(mine0, twin0).pvalue)
    assert c["users"]["ttest_p"] == pytest.approx(stats.ttest_rel(mine0, twin0).pvalue)

    # kdsr_no_async's twin is sasrec_modality (no async LR, no KD), seed 0 of each; user 4 ties
    n = effects["kdsr_no_async"]
    assert n["twin"] == "sasrec_modality" and n["seeds"] == [0]
    assert n["test"]["ndcg_at_20"]["relative"] == pytest.approx(5.0)  # 0.21 vs 0.20
    mine0 = np.array([g(0), g(3), g(12), g(5)])
    twin0 = np.array([g(1), g(4), g(30), g(5)])
    assert n["users"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(mine0, twin0).pvalue)
    assert n["users"]["ttest_p"] == pytest.approx(stats.ttest_rel(mine0, twin0).pvalue)


def test_kd_effect_is_rendered_saved_and_logged(fake_twin_suite: Path) -> None:
    logged: dict[str, float] = {}
    artifacts: list[str] = []
    fake_mlflow = SimpleNamespace(
        log_metrics=lambda metrics, step=None: logged.update(metrics),
        log_artifact=lambda path, artifact_path=None: artifacts.append(Path(path).name),
    )
    res = write_report(fake_twin_suite, tracker=Tracker(SimpleNamespace(), fake_mlflow))
    saved = json.loads((fake_twin_suite / "results.json").read_text())["kd_effect"]
    assert saved == json.loads(json.dumps(res["kd_effect"])) and saved["kdsr"]["users"]["wilcoxon_p"] == 0.125
    md = (fake_twin_suite / "results.md").read_text()
    assert "## KD effect: each KDSR variant vs its twin" in md
    assert "| kdsr | kdsr | 0, 1 | 0.3300 ± 0.0424 |" in md
    assert "| kdsr | kdsr_twin (twin) | 0, 1 | 0.3250 ± 0.1061 |" in md
    assert "| kdsr | change | | +1.5% | +1.5% |" in md
    assert "| kdsr_no_async | sasrec_modality (twin) | 0 | 0.2000 |" in md
    u = res["kd_effect"]["kdsr"]["users"]
    assert (
        f"| kdsr | kdsr_twin | 4 | {u['mean']:.4f} | {u['twin_mean']:.4f} | 0.125 | {u['ttest_p']:.3g} | "
        "+0.0050 ± 0.0636 | 1 / 1 / 0 |"
    ) in md
    assert "| kdsr_codes_only | kdsr_twin | 4 | " in md and "| +0.0300 | 1 / 0 / 0 |" in md
    # the comparison with the best baseline is still there
    assert "| kdsr | sasrec_modality | 4 | " in md and "| kdsr | +50.0% | +50.0% |" in md
    # MLflow: flat kd_effect.<variant>.<name> metrics on the suite's run, next to the report files
    assert logged["kd_effect.kdsr.test_hr_at_20_change_pct"] == pytest.approx(100 * (0.33 / 0.325 - 1))
    assert logged["kd_effect.kdsr.ndcg_at_20_wilcoxon_p"] == pytest.approx(0.125)
    assert logged["kd_effect.kdsr.ndcg_at_20_seed_diff_mean"] == pytest.approx(0.005)
    assert logged["kd_effect.kdsr.ndcg_at_20_seeds_won"] == 1.0
    assert logged["kd_effect.kdsr_no_async.ndcg_at_20_ttest_p"] == pytest.approx(
        res["kd_effect"]["kdsr_no_async"]["users"]["ttest_p"]
    )
    assert logged["kdsr_twin.test_ndcg_at_20_mean"] == pytest.approx(np.mean([0.25, 0.40, 0.50]))
    assert {"results.md", "results.json"} <= set(artifacts)


def test_a_suite_without_twins_has_no_kd_effect(fake_suite: Path) -> None:
    res = write_report(fake_suite)
    assert res["kd_effect"] == {}
    assert "No KDSR variant with its twin in this suite" in (fake_suite / "results.md").read_text()


def test_paired_test_without_differences_reports_no_p_value() -> None:
    same = np.array([0.5, 0.2, 0.1])
    assert paired_test(same, same)["wilcoxon_p"] is None and paired_test(same, same)["ttest_p"] is None


def test_report_without_runs_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(PipelineError, match="no finished run"):
        aggregate(tmp_path)
    monkeypatch.setattr(report_mod, "start_run", _forbid("start_run"))  # no empty MLflow run either
    with pytest.raises(PipelineError, match="no finished run"):
        report_mod.run_report(tmp_path, load_params().mlflow)


# --------------------------------------------------------------------------------------------- planning, CLI
def test_plan_applies_variant_overrides_and_seeds() -> None:
    base = with_overrides(load_params(), {"train.modalities": ["text"], "train.seed": 10})
    counts = variant_seeds(None, 3, 1)
    assert counts == {
        "sasrec_id": 3,
        "sasrec_modality": 3,
        "kdsr": 3,
        "kdsr_twin": 3,
        "kdsr_holistic_only": 1,
        "kdsr_codes_only": 1,
        "kdsr_no_async": 1,
        "kdsr_gru4rec": 1,
        "kdsr_gru4rec_twin": 1,
        "kdsr_bsarec": 1,
        "kdsr_bsarec_twin": 1,
        "kdsr_session_graph": 1,
        "kdsr_session_graph_twin": 1,
    }
    specs = {s.name: s for s in plan_runs(base, Path("o"), counts)}
    assert len(specs) == 21
    assert specs["kdsr-seed2"].params.train.seed == 12 and specs["kdsr-seed2"].run_dir == Path(
        "o/runs/kdsr/seed2"
    )
    assert specs["kdsr-seed0"].params == with_overrides(base, {"train.seed": 10})
    assert specs["sasrec_id-seed0"].params.train.modalities == []
    assert specs["sasrec_id-seed0"].params.train.attributes is False  # IDs alone
    mod = specs["sasrec_modality-seed1"].params.train
    assert mod.modalities == ["text"] and mod.kd.holistic_weight == 0 and mod.kd.code_weight == 0
    assert mod.async_lr.schedule == "none"
    assert specs["kdsr_holistic_only-seed0"].params.train.kd.code_weight == 0
    assert specs["kdsr_holistic_only-seed0"].params.train.kd.holistic_weight == base.train.kd.holistic_weight
    assert specs["kdsr_codes_only-seed0"].params.train.kd.holistic_weight == 0
    assert specs["kdsr_no_async-seed0"].params.train.async_lr.schedule == "none"
    assert specs["kdsr_gru4rec-seed0"].params.train.backbone == "gru4rec"
    twin = specs["kdsr_gru4rec_twin-seed0"].params.train
    assert twin.backbone == "gru4rec" and twin.kd.holistic_weight == twin.kd.code_weight == 0
    assert twin.async_lr == base.train.async_lr  # the twin keeps the asynchronous LR
    # without twins, all variants means the variants other than the added *_twin ones
    assert list(variant_seeds(None, 3, 1, twins=False)) == [
        "sasrec_id",
        "sasrec_modality",
        "kdsr",
        "kdsr_holistic_only",
        "kdsr_codes_only",
        "kdsr_no_async",
        "kdsr_gru4rec",
        "kdsr_bsarec",
        "kdsr_session_graph",
    ]
    assert specs["kdsr_bsarec_twin-seed0"].params.train.backbone == "bsarec"
    for name in ("kdsr_session_graph-seed0", "kdsr_session_graph_twin-seed0"):
        graph = specs[name].params.train
        assert (graph.backbone, graph.fusion, graph.dropout) == ("session_graph", "paper_gate", 0.4)
    assert specs["kdsr_session_graph_twin-seed0"].params.train.kd.holistic_weight == 0


def test_plan_errors_name_the_problem() -> None:
    with pytest.raises(PipelineError, match="unknown variant"):
        variant_seeds(["kdsr", "bert4rec"], 3, 1)
    no_modality = with_overrides(load_params(), {"train.modalities": []})
    with pytest.raises(PipelineError, match="needs modalities"):
        plan_runs(no_modality, Path("o"), variant_seeds(["kdsr"], 1, 1))
    assert len(plan_runs(no_modality, Path("o"), variant_seeds(["sasrec_id"], 2, 1))) == 2


def test_set_overrides_parse_as_yaml() -> None:
    assert parse_overrides(["train.epochs=5", "train.modalities=[text]", "data.image_column=null"]) == {
        "train.epochs": 5,
        "train.modalities": ["text"],
        "data.image_column": None,
    }
    with pytest.raises(PipelineError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_cli_resolves_paths_before_changing_directory(tmp_path: Path, monkeypatch) -> None:
    from stages.suite import parse_args

    monkeypatch.chdir(tmp_path)
    args = parse_args(["--out", "s", "--variants", "kdsr", "sasrec_id", "--set", "train.epochs=1"])
    assert args.out == tmp_path / "s" and args.variants == ["kdsr", "sasrec_id"]
    assert args.overrides == ["train.epochs=1"] and args.seeds == 3 and args.jobs == 1
    assert args.twins is True
    assert parse_args(["--out", "s", "--no-twins"]).twins is False
    assert parse_args(["--out", "s", "--variants", "kdsr_twin"]).variants == ["kdsr_twin"]


def test_cli_passes_twins_to_the_suite(tmp_path: Path, monkeypatch) -> None:
    import stages.suite as cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "run_suite", lambda base, out, **kw: calls.append(kw))
    cli.run(cli.parse_args(["--out", str(tmp_path / "s"), "--variants", "kdsr", "--no-twins"]))
    cli.run(cli.parse_args(["--out", str(tmp_path / "s"), "--variants", "kdsr"]))
    assert [c["twins"] for c in calls] == [False, True] and calls[0]["variants"] == ["kdsr"]


# --------------------------------------------------------------------------------------------- twins
def test_twin_overrides_zero_the_distillation_weights_only() -> None:
    over = {"train.backbone": "gru4rec", "train.kd.code_weight": 0.3}
    assert twin_overrides(over) == {
        "train.backbone": "gru4rec",
        "train.kd.code_weight": 0.0,
        "train.kd.holistic_weight": 0.0,
    }
    assert over == {"train.backbone": "gru4rec", "train.kd.code_weight": 0.3}  # not modified in place
    assert twin_overrides({}) == VARIANTS["kdsr_twin"]
    assert twin_overrides(VARIANTS["kdsr_gru4rec"]) == VARIANTS["kdsr_gru4rec_twin"]
    # a twin that equals an existing variant is that variant: no duplicate runs
    assert twin_overrides(VARIANTS["kdsr_no_async"]) == VARIANTS["sasrec_modality"]
    assert TWINS == {
        "kdsr": "kdsr_twin",
        "kdsr_holistic_only": "kdsr_twin",
        "kdsr_codes_only": "kdsr_twin",
        "kdsr_no_async": "sasrec_modality",
        "kdsr_gru4rec": "kdsr_gru4rec_twin",
        "kdsr_bsarec": "kdsr_bsarec_twin",
        "kdsr_session_graph": "kdsr_session_graph_twin",
    }
    assert "kdsr_twin" in MAIN_VARIANTS and "kdsr_gru4rec_twin" in ABLATIONS
    assert not set(TWINS) & set(TWINS.values())  # a twin has no twin
    assert list(VARIANTS).index("kdsr_twin") == list(VARIANTS).index("kdsr") + 1


def test_twins_come_with_their_variants_seeds() -> None:
    assert variant_seeds(["kdsr"], 3, 1) == {"kdsr": 3, "kdsr_twin": 3}
    assert variant_seeds(["kdsr"], 3, 1, twins=False) == {"kdsr": 3}
    assert variant_seeds(["kdsr_gru4rec"], 3, 2) == {"kdsr_gru4rec": 2, "kdsr_gru4rec_twin": 2}
    # shared twins are scheduled once; a twin that is also asked for keeps the larger seed count
    assert variant_seeds(["kdsr_holistic_only", "kdsr_codes_only"], 3, 2) == {
        "kdsr_holistic_only": 2,
        "kdsr_twin": 2,
        "kdsr_codes_only": 2,
    }
    assert variant_seeds(["kdsr_no_async"], 3, 2) == {"kdsr_no_async": 2, "sasrec_modality": 2}
    assert variant_seeds(["kdsr_no_async", "sasrec_modality"], 3, 2) == {
        "kdsr_no_async": 2,
        "sasrec_modality": 3,
    }
    assert variant_seeds(["kdsr_twin"], 3, 1) == {"kdsr_twin": 3}  # a twin alone brings nothing
    # main variants first, seed-major: the twin's seed k runs next to the variant's seed k
    names = [
        s.name for s in plan_runs(load_params(), Path("o"), variant_seeds(["kdsr", "kdsr_gru4rec"], 2, 1))
    ]
    assert names == [
        "kdsr-seed0",
        "kdsr_twin-seed0",
        "kdsr-seed1",
        "kdsr_twin-seed1",
        "kdsr_gru4rec-seed0",
        "kdsr_gru4rec_twin-seed0",
    ]


def test_a_kdsr_variant_without_distillation_is_flagged(caplog) -> None:
    base = with_overrides(
        load_params(), parse_overrides(["train.kd.holistic_weight=0", "train.kd.code_weight=0"])
    )
    with caplog.at_level("WARNING", logger="pipeline.experiments.plan"):
        specs = plan_runs(base, Path("o"), variant_seeds(["kdsr"], 1, 1))
    assert specs[0].params == specs[1].params  # the pair is still planned, and says why it is pointless
    assert "kdsr distils nothing under this config" in caplog.text


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["train.kd.holistic_weight=0.3", "train.kd.code_weight=0.7", "train.epochs=3"],
        ["train.async_lr.schedule=step", "train.async_lr.step_epochs=[2, 4]", "train.fusion=gate"],
        ["train.backbone=gru4rec", "train.lr=5e-4", "train.modalities=[text]", "train.kd.tau=2.0"],
        [
            "train.kd.holistic_loss=mse",
            "train.kd.neighbour_pairs=8",
            "train.async_lr.start_scale=0.1",
            "correlate.codes=20",
        ],
    ],
)
def test_a_twin_differs_from_its_variant_only_in_the_distillation_weights(sets: list[str]) -> None:
    base = with_overrides(load_params(), parse_overrides(sets))
    specs = {s.name: s for s in plan_runs(base, Path("o"), variant_seeds(None, 2, 2))}
    for variant, twin in TWINS.items():
        for k in (0, 1):
            mine, theirs = specs[f"{variant}-seed{k}"].params, specs[f"{twin}-seed{k}"].params
            a, b = flatten(mine.model_dump()), flatten(theirs.model_dump())
            assert {key for key in a if a[key] != b[key]} <= set(KD_WEIGHTS), (variant, sets)
            assert theirs.train.kd.holistic_weight == theirs.train.kd.code_weight == 0
            assert with_overrides(mine, dict.fromkeys(KD_WEIGHTS, 0.0)) == theirs
    # the --set values reach both members of a pair (as validated: "5e-4" is a string to YAML 1.1)
    resolved = flatten(base.model_dump())
    for key in parse_overrides(sets):
        if key not in KD_WEIGHTS:
            for name in ("kdsr-seed1", "kdsr_twin-seed1", "kdsr_gru4rec_twin-seed0"):
                assert flatten(specs[name].params.model_dump())[key] == resolved[key]
    if "train.lr=5e-4" in sets:
        assert specs["kdsr_twin-seed0"].params.train.lr == 5e-4
    kd = specs["kdsr-seed0"].params.train.kd
    assert (kd.holistic_weight, kd.code_weight) == (base.train.kd.holistic_weight, base.train.kd.code_weight)


def test_beauty_config_reads_the_shared_benchmark_files() -> None:
    p = load_params(PROJECT_ROOT / "configs" / "beauty.yaml")
    assert p.data.source == "sequences"
    assert p.data.sequences_file == "../shared/data/amazon-beauty/Beauty.txt"
    assert p.data.items_file == "../shared/data/amazon-beauty/items.tsv"
    assert p.data.item_id_column == "item_id"
    assert p.data.text_columns == ["idgenrec_text", "s3rec_attribute_names"]
    assert p.data.image_column is None and p.train.modalities == ["text"]


def test_report_puts_the_published_results_of_its_data_set_beside_its_rows(fake_suite: Path) -> None:
    params = {"data": {"source": "sequences", "sequences_file": "d/Beauty.txt", "split": "loo"}}
    write_json(
        fake_suite / "suite.json", {"name": "fake", "params": {**params, "eval": {"mask_history": True}}}
    )
    res = write_report(fake_suite)
    assert res["published"] == {"dataset": "beauty", "mask_history": True, "split": "loo"}
    md = (fake_suite / "results.md").read_text()
    assert "## Published full-ranking results on these files" in md
    assert "| BSARec (AAAI 2024) | ID transformer | 0.1008 | 0.1373 | 0.0611 | 0.0703 |" in md
    assert (
        "| this suite (history masked, 2 seeds) | kdsr | " + " | ".join(["0.3300 ± 0.0424"] * 4) + " |" in md
    )
    # a suite on other data (here the demo) has no such table
    write_json(fake_suite / "suite.json", {"name": "fake", "params": {"data": {"source": "demo"}}})
    assert write_report(fake_suite)["published"] is None
    assert "Published full-ranking results" not in (fake_suite / "results.md").read_text()
