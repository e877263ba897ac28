"""The suite report: ``<out>/runs/<variant>/seed<k>/`` -> ``results.md``, ``results.json`` and PNG plots.

Per variant and test metric: mean ± sample standard deviation over seeds; the relative change of every KDSR
variant against the best non-distillation baseline; the popularity floor; epochs and seconds to the best
epoch; and a paired test over users (Wilcoxon signed-rank and paired t-test on per-user test NDCG@K,
averaged over seeds) of each KDSR variant against that baseline.

The **KD effect** compares each KDSR variant with its twin (the same config without the distillation terms,
:data:`~pipeline.experiments.plan.TWINS`) on the seeds both ran: means ± std, the relative change, the same
paired tests over users, and the per-seed differences (seed k of both uses the same ``train.seed``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from pipeline.errors import PipelineError
from pipeline.experiments.anchors import published_context
from pipeline.experiments.plan import (
    BASELINES,
    RUN_PARAMS,
    RUN_SUMMARY,
    SUITE_FILE,
    SUITE_TAG,
    TWIN_SUFFIX,
    TWINS,
    VARIANTS,
    suite_layout,
    suite_run_dirs,
)
from pipeline.experiments.render import plot_bars, plot_curves, render_markdown
from pipeline.io import atomic_path, read_json, read_parquet, write_json
from pipeline.layout import Layout
from pipeline.tracking import Tracker, find_run_by_tag, start_run

if TYPE_CHECKING:
    from pipeline.config import MLflowParams

log = logging.getLogger(__name__)

TABLE_METRICS = ("hr", "ndcg")  # shown at every K the evaluation computed (5, 10, 20, 50 by default)
SIGNIFICANCE_K = 20  # per-user NDCG@K of the paired test (the largest K when 20 was not evaluated)
CURVES_PNG, BARS_PNG = "valid_curves.png", "test_metrics.png"
AGREEMENT_FILE = "teacher_agreement.json"  # per run: what is left of the teacher's correlations


@dataclass(frozen=True)
class RunResult:
    """What one finished run left behind."""

    variant: str
    seed: int
    run_dir: Path
    metrics: dict[str, Any]  # metrics.json
    summary: dict[str, Any]  # summary.json ({} when missing)

    @property
    def layout(self) -> Layout:
        """The run's artefacts (``run_dir`` is ``<suite>/runs/<variant>/seed<k>``)."""
        return suite_layout(self.run_dir.parents[2], self.run_dir)


# --------------------------------------------------------------------------------------------- reading
def collect_runs(out: Path) -> dict[str, list[RunResult]]:
    """Every finished run (one with ``metrics.json``) under ``out/runs``, per variant, sorted by seed.

    Variants come in :data:`~pipeline.experiments.plan.VARIANTS` order, unknown names after them.
    """
    found: dict[str, list[RunResult]] = {}
    for variant, seed, run_dir in suite_run_dirs(out):
        metrics = suite_layout(out, run_dir).metrics
        if not metrics.exists():
            continue
        summary_path = run_dir / RUN_SUMMARY
        summary = read_json(summary_path) if summary_path.exists() else {}
        found.setdefault(variant, []).append(RunResult(variant, seed, run_dir, read_json(metrics), summary))
    order = [v for v in VARIANTS if v in found] + sorted(v for v in found if v not in VARIANTS)
    return {v: sorted(found[v], key=lambda r: r.seed) for v in order}


def run_agreement(run: RunResult, supervision_dir: Path) -> dict[str, dict[str, float]]:
    """:func:`~pipeline.experiments.retention.teacher_agreement` of one run's model, cached in the run folder.

    Empty for an ID-only run, or when the model or the suite's supervision files are gone.
    """
    from pipeline.experiments.retention import teacher_agreement  # loads torch
    from pipeline.models.persist import load_student

    cache = run.run_dir / AGREEMENT_FILE
    weights = run.layout.model_weights
    if cache.exists() and weights.exists() and cache.stat().st_mtime >= weights.stat().st_mtime:
        return read_json(cache)
    if not weights.exists() or not Path(supervision_dir).is_dir():
        return {}
    model = load_student(weights.parent)
    if not model.cfg.modalities:
        return {}
    params_path = run.run_dir / RUN_PARAMS
    record = read_json(params_path) if params_path.exists() else {}
    score = record.get("params", {}).get("correlate", {}).get("score", "cos")
    agreement = teacher_agreement(model, supervision_dir, score)
    write_json(cache, agreement)
    return agreement


def _require_runs(out: Path) -> dict[str, list[RunResult]]:
    runs = collect_runs(out)
    if not runs:
        raise PipelineError(f"{out}/runs: no finished run (no runs/<variant>/seed<k>/metrics.json)")
    return runs


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def ndcg_per_user(per_user_path: Path, k: int = SIGNIFICANCE_K, part: str = "test") -> dict[int, float]:
    """Per-user NDCG@k from ``per_user.parquet``: 1/log2(rank+2) when rank < k, else 0, mean over a user's
    cases (one under leave-one-out, several under the ratio split)."""
    table = read_parquet(per_user_path, columns=["user", "part", "rank"])
    keep = np.asarray(table.column("part").to_pylist()) == part
    users = table.column("user").to_numpy()[keep]
    ranks = table.column("rank").to_numpy()[keep].astype(np.float64)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    uniq, inverse = np.unique(users, return_inverse=True)
    means = np.bincount(inverse, weights=gains) / np.bincount(inverse)
    return dict(zip(uniq.tolist(), means.tolist(), strict=True))


def seed_averaged_ndcg(runs: Sequence[RunResult], k: int = SIGNIFICANCE_K) -> dict[int, float]:
    """Per-user NDCG@k averaged over a variant's seeds (users every seed evaluated)."""
    per_seed = [ndcg_per_user(r.layout.per_user, k) for r in runs]
    users = set(per_seed[0]).intersection(*per_seed[1:])
    return {u: float(np.mean([s[u] for s in per_seed])) for u in sorted(users)}


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, float | int | None]:
    """Wilcoxon signed-rank and paired t-test p-values of ``a`` vs ``b`` (paired by position).

    Both p-values are None when there are fewer than two pairs or every difference is zero (no test).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out: dict[str, float | int | None] = {
        "users": int(a.size),
        "mean": float(a.mean()) if a.size else None,
        "baseline_mean": float(b.mean()) if b.size else None,
        "wilcoxon_p": None,
        "ttest_p": None,
    }
    if a.size < 2 or np.all(a == b):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w = float(stats.wilcoxon(a, b).pvalue)
        t = float(stats.ttest_rel(a, b).pvalue)
    out["wilcoxon_p"] = w if math.isfinite(w) else None
    out["ttest_p"] = t if math.isfinite(t) else None
    return out


def _relative(mine: float, reference: float) -> float | None:
    """``mine`` against ``reference`` in percent; None when the reference is not positive."""
    return 100.0 * (mine / reference - 1.0) if reference > 0 else None


def kd_effect(
    runs: Sequence[RunResult], twin_runs: Sequence[RunResult], metrics: Sequence[str], k: int = SIGNIFICANCE_K
) -> dict[str, Any] | None:
    """The effect of distillation: a KDSR variant's runs against its twin's, on the seeds both ran.

    Returns:
        ``{"seeds", "metric", "test": {metric: {"mean", "std", "twin_mean", "twin_std", "relative"}},
        "users": paired_test over users of the seed-averaged per-user NDCG@k ("mean", "twin_mean", p-values),
        "per_seed": {"differences", "mean", "std", "better", "worse", "tied"} of test NDCG@k}``; None when
        the two share no seed.
    """
    mine = {r.seed: r for r in runs}
    theirs = {r.seed: r for r in twin_runs}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    a, b = [mine[s] for s in seeds], [theirs[s] for s in seeds]
    test: dict[str, dict[str, float | None]] = {}
    for m in metrics:
        mean, std = mean_std([r.metrics["test"][m] for r in a])
        twin_mean, twin_std = mean_std([r.metrics["test"][m] for r in b])
        test[m] = {
            "mean": mean,
            "std": std,
            "twin_mean": twin_mean,
            "twin_std": twin_std,
            "relative": _relative(mean, twin_mean),
        }
    select = f"ndcg_at_{k}"
    diffs = np.array(
        [x.metrics["test"][select] - y.metrics["test"][select] for x, y in zip(a, b, strict=True)]
    )
    diff_mean, diff_std = mean_std(diffs)
    users_a, users_b = seed_averaged_ndcg(a, k), seed_averaged_ndcg(b, k)
    users = sorted(set(users_a) & set(users_b))
    paired = paired_test(np.array([users_a[u] for u in users]), np.array([users_b[u] for u in users]))
    return {
        "seeds": seeds,
        "metric": select,
        "test": test,
        "users": {
            "users": paired["users"],
            "mean": paired["mean"],
            "twin_mean": paired["baseline_mean"],
            "wilcoxon_p": paired["wilcoxon_p"],
            "ttest_p": paired["ttest_p"],
        },
        "per_seed": {
            "differences": diffs.tolist(),
            "mean": diff_mean,
            "std": diff_std,
            "better": int((diffs > 0).sum()),
            "worse": int((diffs < 0).sum()),
            "tied": int((diffs == 0).sum()),
        },
    }


# --------------------------------------------------------------------------------------------- aggregating
def _metric_names(metrics: dict[str, float]) -> list[str]:
    ks = sorted({int(name.rsplit("_", 1)[1]) for name in metrics if name.startswith("ndcg_at_")})
    return [f"{m}_at_{k}" for m in TABLE_METRICS for k in ks if f"{m}_at_{k}" in metrics]


def _mean_of(runs: Sequence[RunResult], key: str) -> float | None:
    values = [r.summary[key] for r in runs if isinstance(r.summary.get(key), int | float)]
    return float(np.mean(values)) if values else None


def aggregate(out: Path) -> dict[str, Any]:
    """Aggregate the finished runs under ``out`` into the ``results.json`` structure.

    Raises:
        PipelineError: no finished run under ``out/runs``.
    """
    out = Path(out)
    runs = _require_runs(out)
    first = next(iter(runs.values()))[0].metrics
    names = _metric_names(first["test"])
    ks = sorted({int(n.rsplit("_", 1)[1]) for n in names})
    k_sig = SIGNIFICANCE_K if SIGNIFICANCE_K in ks else ks[-1]
    select = f"ndcg_at_{k_sig}"

    variants: dict[str, Any] = {}
    for v, rs in runs.items():
        entry: dict[str, Any] = {"n": len(rs), "seeds": [r.seed for r in rs]}
        for part in ("test", "valid"):
            entry[part] = {}
            for m in names:
                mean, std = mean_std([r.metrics[part][m] for r in rs])
                entry[part][m] = {"mean": mean, "std": std}
        for key in ("best_epoch", "epochs_run", "seconds_to_best", "seconds_total"):
            entry[key] = _mean_of(rs, key)
        agreements = [run_agreement(r, suite_layout(out).supervision) for r in rs]
        entry["teacher_agreement"] = {
            m: {key: mean_std([a[m][key] for a in agreements])[0] for key in ("table_r", "kd_r")}
            for m in sorted(set.intersection(*(set(a) for a in agreements)))
        }
        variants[v] = entry

    popularity = first.get("popularity", {})
    if any(r.metrics.get("popularity") != popularity for rs in runs.values() for r in rs):
        log.warning("runs disagree on the popularity baseline: were they evaluated on the same data?")

    suite_path = out / SUITE_FILE
    suite = read_json(suite_path) if suite_path.exists() else {}
    twins = {**TWINS, **suite.get("twins", {})}
    present = [b for b in BASELINES if b in variants]
    baseline = max(present, key=lambda b: variants[b]["test"][select]["mean"]) if present else None
    kdsr = [v for v in variants if _is_kdsr(v, twins)]
    relative: dict[str, dict[str, float | None]] = {}
    significance: dict[str, Any] = {}
    if baseline is not None:
        base_means = variants[baseline]["test"]
        for v in kdsr:
            relative[v] = {m: _relative(variants[v]["test"][m]["mean"], base_means[m]["mean"]) for m in names}
        base_users = seed_averaged_ndcg(runs[baseline], k_sig)
        for v in kdsr:
            mine = seed_averaged_ndcg(runs[v], k_sig)
            users = sorted(set(mine) & set(base_users))
            significance[v] = {
                "baseline": baseline,
                "metric": select,
                **paired_test(np.array([mine[u] for u in users]), np.array([base_users[u] for u in users])),
            }
    effects: dict[str, Any] = {}
    for v in kdsr:
        twin = twins.get(v)
        if twin in runs and (effect := kd_effect(runs[v], runs[twin], names, k_sig)) is not None:
            effects[v] = {"twin": twin, **effect}
    return {
        "suite": suite.get("name", out.name),
        "metrics": names,
        "variants": variants,
        "overrides": {v: suite.get("variants", {}).get(v, VARIANTS.get(v)) for v in variants},
        "popularity": popularity,
        "baseline": baseline,
        "selection_metric": select,
        "relative_change": relative,
        "significance": significance,
        "kd_effect": effects,
        "cases": first.get("cases", {}),
        "published": published_context(suite.get("params")),  # the data set of the published results
    }


def _is_kdsr(variant: str, twins: dict[str, str]) -> bool:
    """A variant with distillation: one that has a twin, or an unknown ``kdsr*`` name that is no twin."""
    if variant in twins:
        return True
    return variant not in VARIANTS and variant.startswith("kdsr") and not variant.endswith(TWIN_SUFFIX)


def write_report(out: Path, tracker: Tracker | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots into ``out``; log them to ``tracker``'s run.

    Returns:
        The aggregated results (the content of ``results.json``).
    """
    out = Path(out)
    results = aggregate(out)
    plots = []
    curves = {v: (rs[0].layout.train_curve, rs[0].seed) for v, rs in collect_runs(out).items()}
    if plot_curves(curves, out / CURVES_PNG):
        plots.append(CURVES_PNG)
    plot_bars(results, out / BARS_PNG)
    plots.append(BARS_PNG)
    results["plots"] = plots
    write_json(out / "results.json", results)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(render_markdown(results, plots))
    log.info("report: %s (%d variants)", out / "results.md", len(results["variants"]))
    if tracker is not None and tracker.active:
        for name in ("results.md", "results.json", *plots):
            tracker.log_artifact(out / name, artifact_path="report")
        tracker.log_metrics(
            {
                v: {f"test_{m}_mean": s["mean"] for m, s in e["test"].items()}
                for v, e in results["variants"].items()
            }
        )
        tracker.log_metrics(
            {"kd_effect": {v: _kd_effect_metrics(e) for v, e in results["kd_effect"].items()}}
        )
    return results


def _kd_effect_metrics(effect: dict[str, Any]) -> dict[str, float | None]:
    """One KD effect as flat MLflow metrics (``kd_effect.<variant>.<name>``; None values are not logged)."""
    metric = effect["metric"]
    return {
        **{f"test_{m}_change_pct": s["relative"] for m, s in effect["test"].items()},
        f"{metric}_wilcoxon_p": effect["users"]["wilcoxon_p"],
        f"{metric}_ttest_p": effect["users"]["ttest_p"],
        f"{metric}_seed_diff_mean": effect["per_seed"]["mean"],
        f"{metric}_seeds_won": effect["per_seed"]["better"],
        f"{metric}_seeds_lost": effect["per_seed"]["worse"],
    }


def run_report(out: Path, mlflow_params: MLflowParams) -> dict[str, Any]:
    """Write the report of the suite in ``out`` and log it to the suite's MLflow parent run (when on)."""
    out = Path(out)
    _require_runs(out)  # fail before an MLflow run is opened
    tag = str(out.resolve())
    parent_id = find_run_by_tag(mlflow_params, SUITE_TAG, tag)
    with start_run("suite", mlflow_params, run_name=out.name, tags={SUITE_TAG: tag}, run_id=parent_id) as tr:
        return write_report(out, tracker=tr)
