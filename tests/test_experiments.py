"""The experiment suite on a tiny demo catalogue, and the report's aggregation on hand-made run folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

import pipeline.experiments.report as report_mod
import pipeline.experiments.suite as suite_mod
from pipeline.config import PROJECT_ROOT, Params, load_params, with_overrides
from pipeline.errors import PipelineError
from pipeline.experiments.report import aggregate, ndcg_per_user, paired_test, write_report
from pipeline.experiments.suite import (
    parse_overrides,
    plan_runs,
    prepare_shared,
    run_suite,
    shared_data,
    stale_runs,
    variant_seeds,
)
from pipeline.io import read_json, write_json, write_parquet

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


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path, list[dict[str, Any]]]:
    """sasrec_id + kdsr over 2 seeds, 2 epochs, on 150 demo users: built once for the module."""
    root = tmp_path_factory.mktemp("suite")
    base = with_overrides(load_params(), {**TINY, "embed.cache_dir": str(root / "embed_cache")})
    out = root / "tiny"
    results = run_suite(base, out, variants=["sasrec_id", "kdsr"], seeds=2, progress=False)
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
        ("sasrec_id", 1, "done"),
        ("kdsr", 1, "done"),
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
    assert read_json(out / "suite.json")["seeds"] == {"sasrec_id": 2, "kdsr": 2}


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_unchanged_shared_steps(tiny_suite, monkeypatch) -> None:
    base, out, first = tiny_suite
    for name in ("run_ingest", "run_embed", "run_correlate", "run_train", "run_evaluate"):
        monkeypatch.setattr(suite_mod, name, _forbid(name))
    again = run_suite(base, out, variants=["sasrec_id", "kdsr"], seeds=2, progress=False)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [r["test"] for r in again] == [r["test"] for r in first]


@pytest.mark.slow
def test_an_unevaluated_run_only_evaluates(tiny_suite, tmp_path, monkeypatch) -> None:
    base, out, first = tiny_suite
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "runs" / "kdsr" / "seed1" / "metrics.json").unlink()
    monkeypatch.setattr(suite_mod, "run_train", _forbid("run_train"))
    again = run_suite(base, copy, variants=["kdsr"], seeds=2, progress=False, report=False)
    assert [r["status"] for r in again] == ["skipped", "done"]
    assert again[1]["test"] == first[3]["test"]


@pytest.mark.slow
def test_a_record_older_than_an_option_matches_that_options_default(
    tiny_suite, tmp_path, monkeypatch
) -> None:
    base, out, first = tiny_suite
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for seed in ("seed0", "seed1"):  # as a version without train.kd.neighbour_pairs wrote them
        path = copy / "runs" / "kdsr" / seed / "params.json"
        record = read_json(path)
        del record["params"]["train"]["kd"]["neighbour_pairs"]
        write_json(path, record)
    shared = shared_data(base, copy / "data")
    assert stale_runs(plan_runs(base, copy, variant_seeds(["kdsr"], 2, 1)), shared) == []
    monkeypatch.setattr(suite_mod, "run_train", _forbid("run_train"))
    again = run_suite(base, copy, variants=["kdsr"], seeds=2, progress=False, report=False)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert [r["test"] for r in again] == [r["test"] for r in first if r["variant"] == "kdsr"]
    changed = with_overrides(base, {"train.kd.neighbour_pairs": 8})  # not the default: those runs are stale
    assert len(stale_runs(plan_runs(changed, copy, variant_seeds(["kdsr"], 2, 1)), shared)) == 2


@pytest.mark.slow
def test_changed_params_rerun_only_later_steps_and_flag_stale_runs(tiny_suite, tmp_path, monkeypatch) -> None:
    base, out, _ = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    calls: list[str] = []
    for name in ("run_ingest", "run_embed", "run_correlate"):
        monkeypatch.setattr(suite_mod, name, lambda *a, _n=name, **k: calls.append(_n))
    changed = with_overrides(base, {"correlate.codes": 6})
    shared = prepare_shared(changed, data)
    assert calls == ["run_correlate"]
    assert read_json(data / "correlate.params.json")["params"]["correlate"]["codes"] == 6
    # the finished runs were made with the old supervision: the suite refuses to mix them in
    specs = plan_runs(changed, out, variant_seeds(["kdsr"], 2, 1))
    assert stale_runs(specs, shared) == [out / "runs" / "kdsr" / "seed0", out / "runs" / "kdsr" / "seed1"]
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
        "kdsr_holistic_only": 1,
        "kdsr_codes_only": 1,
        "kdsr_no_async": 1,
        "kdsr_gru4rec": 1,
    }
    specs = {s.name: s for s in plan_runs(base, Path("o"), counts)}
    assert len(specs) == 13
    assert specs["kdsr-seed2"].params.train.seed == 12 and specs["kdsr-seed2"].run_dir == Path(
        "o/runs/kdsr/seed2"
    )
    assert specs["kdsr-seed0"].params == with_overrides(base, {"train.seed": 10})
    assert specs["sasrec_id-seed0"].params.train.modalities == []
    mod = specs["sasrec_modality-seed1"].params.train
    assert mod.modalities == ["text"] and mod.kd.holistic_weight == 0 and mod.kd.code_weight == 0
    assert mod.async_lr.schedule == "none"
    assert specs["kdsr_holistic_only-seed0"].params.train.kd.code_weight == 0
    assert specs["kdsr_holistic_only-seed0"].params.train.kd.holistic_weight == base.train.kd.holistic_weight
    assert specs["kdsr_codes_only-seed0"].params.train.kd.holistic_weight == 0
    assert specs["kdsr_no_async-seed0"].params.train.async_lr.schedule == "none"
    assert specs["kdsr_gru4rec-seed0"].params.train.backbone == "gru4rec"


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
    from stages.suite import parse_args  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    args = parse_args(["--out", "s", "--variants", "kdsr", "sasrec_id", "--set", "train.epochs=1"])
    assert args.out == tmp_path / "s" and args.variants == ["kdsr", "sasrec_id"]
    assert args.overrides == ["train.epochs=1"] and args.seeds == 3 and args.jobs == 1


def test_beauty_config_reads_the_shared_benchmark_files() -> None:
    p = load_params(PROJECT_ROOT / "configs" / "beauty.yaml")
    assert p.data.source == "sequences"
    assert p.data.sequences_file == "../shared/data/amazon-beauty/Beauty.txt"
    assert p.data.items_file == "../shared/data/amazon-beauty/items.tsv"
    assert p.data.item_id_column == "item_id"
    assert p.data.text_columns == ["idgenrec_text", "s3rec_attribute_names"]
    assert p.data.image_column is None and p.train.modalities == ["text"]
