"""Rendering the suite report: the results as Markdown tables, and the PNG plots (curves and bars)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.experiments.anchors import render_published
from pipeline.experiments.plan import BASELINES
from pipeline.io import atomic_path

CURVE_METRIC = "valid_ndcg_at_10"  # the validation curve plotted per variant (the selection metric)


def _label(metric: str) -> str:
    name, k = metric.rsplit("_at_", 1)
    return f"{name.upper()}@{k}"


def _fmt_mean_std(stat: dict[str, float | None]) -> str:
    return f"{stat['mean']:.4f}" if stat["std"] is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def _fmt_override(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def render_markdown(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """``results.md``: the test table, relative changes, the paired tests and the variants' overrides."""
    names = results["metrics"]
    head = ["variant", "n", *map(_label, names), "epochs to best", "seconds to best"]
    lines = [
        f"# Experiment suite `{results['suite']}`",
        "",
        "Test metrics with full-catalogue ranking: mean ± sample standard deviation over seeds (n seeds). "
        "Epochs and seconds to the best epoch (chosen on validation NDCG@10) are means over seeds. "
        f"Cases: {results['cases'].get('test', '?')} test, {results['cases'].get('valid', '?')} validation.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" + "--:|" * (len(head) - 1),
    ]
    pop = results["popularity"].get("test")
    if pop:
        cells = [f"{pop[m]:.4f}" if m in pop else "–" for m in names]
        lines.append("| popularity | – | " + " | ".join(cells) + " | – | – |")
    for v, e in results["variants"].items():
        cells = [_fmt_mean_std(e["test"][m]) for m in names]
        timing = [_fmt(e["best_epoch"], ".1f"), _fmt(e["seconds_to_best"], ".1f")]
        lines.append(f"| {v} | {e['n']} | " + " | ".join(cells + timing) + " |")
    lines += render_published(results)

    baseline, select = results["baseline"], _label(results["selection_metric"])
    lines += ["", "## Relative change vs the best baseline", ""]
    if baseline is None:
        lines.append(f"No baseline ({', '.join(BASELINES)}) in this suite.")
    elif not results["relative_change"]:
        lines.append("No KDSR variant in this suite.")
    else:
        lines += [
            f"Baseline: `{baseline}`, the better of {', '.join(BASELINES)} by mean test {select}.",
            "",
            "| variant | " + " | ".join(map(_label, names)) + " |",
            "|---|" + "--:|" * len(names),
        ]
        for v, rel in results["relative_change"].items():
            lines.append(f"| {v} | " + " | ".join(_fmt(rel[m], "+.1f") + "%" for m in names) + " |")

    lines += [
        "",
        f"## Paired significance over users (per-user test {select}, averaged over seeds)",
        "",
        "Wilcoxon signed-rank test and paired t-test of each KDSR variant against the best baseline; "
        "n/a when every user's difference is zero.",
        "",
    ]
    if results["significance"]:
        lines += [
            f"| variant | vs | users | mean {select} | baseline mean | Wilcoxon p | paired t-test p |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for v, s in results["significance"].items():
            lines.append(
                f"| {v} | {s['baseline']} | {s['users']} | {_fmt(s['mean'], '.4f')} | "
                f"{_fmt(s['baseline_mean'], '.4f')} | {_fmt_p(s['wilcoxon_p'])} | {_fmt_p(s['ttest_p'])} |"
            )
    else:
        lines.append("Needs a baseline and a KDSR variant.")

    lines += _render_kd_effect(results.get("kd_effect", {}), names)

    agreement = [(v, m, a) for v, e in results["variants"].items() for m, a in e["teacher_agreement"].items()]
    if agreement:
        lines += [
            "",
            "## What is left of the teacher's correlations",
            "",
            "Pearson r between the teacher's item-pair scores and the trained student's on 50,000 random item "
            "pairs (mean over seeds): of the modality table itself (ξ(m_i, m_j)) and of the distillation head "
            "(ξ(P m_i, P m_j)). Both are 1.0 at initialisation; lower means more of the teacher was forgotten.",
            "",
            "| variant | modality | table r | distillation head r |",
            "|---|---|--:|--:|",
        ]
        for v, m, a in agreement:
            lines.append(f"| {v} | {m} | {a['table_r']:.3f} | {a['kd_r']:.3f} |")

    lines += ["", "## Variants (overrides of the base config)", "", "| variant | overrides |", "|---|---|"]
    for v, over in results["overrides"].items():
        text = ", ".join(f"`{k}={_fmt_override(x)}`" for k, x in (over or {}).items()) or "base config"
        lines.append(f"| {v} | {text} |")
    if plots:
        lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _render_kd_effect(effects: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The KD-effect section of ``results.md``: each KDSR variant against its twin."""
    lines = [
        "",
        "## KD effect: each KDSR variant vs its twin",
        "",
        "The twin is the same configuration with `train.kd.holistic_weight` and `train.kd.code_weight` at 0 (same "
        "wiring, same asynchronous LR, same seeds), so the difference is the effect of distillation alone. "
        "Test metrics: mean ± sample standard deviation over the seeds both ran; change = (variant − twin) / twin.",
        "",
    ]
    if not effects:
        return [
            *lines,
            "No KDSR variant with its twin in this suite (the suite runs twins unless `--no-twins`).",
        ]
    lines += [
        "| variant | run | seeds | " + " | ".join(map(_label, names)) + " |",
        "|---|---|--:|" + "--:|" * len(names),
    ]
    for v, e in effects.items():
        seeds = ", ".join(map(str, e["seeds"]))
        mine = [_fmt_mean_std({"mean": e["test"][m]["mean"], "std": e["test"][m]["std"]}) for m in names]
        twin = [
            _fmt_mean_std({"mean": e["test"][m]["twin_mean"], "std": e["test"][m]["twin_std"]}) for m in names
        ]
        change = [_fmt(e["test"][m]["relative"], "+.1f") + "%" for m in names]
        lines += [
            f"| {v} | {v} | {seeds} | " + " | ".join(mine) + " |",
            f"| {v} | {e['twin']} (twin) | {seeds} | " + " | ".join(twin) + " |",
            f"| {v} | change | | " + " | ".join(change) + " |",
        ]
    select = _label(next(iter(effects.values()))["metric"])
    lines += [
        "",
        f"Paired over users: Wilcoxon signed-rank test and paired t-test on per-user test {select} (averaged over "
        f"the seeds both ran). Paired over seeds: the per-seed difference of test {select} (mean ± std) and how "
        "many seeds the variant won, lost and tied.",
        "",
        f"| variant | twin | users | mean {select} | twin mean | Wilcoxon p | paired t-test p | per-seed Δ {select} "
        "| seeds won / lost / tied |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for v, e in effects.items():
        u, d = e["users"], e["per_seed"]
        delta = f"{d['mean']:+.4f}" + ("" if d["std"] is None else f" ± {d['std']:.4f}")
        lines.append(
            f"| {v} | {e['twin']} | {u['users']} | {_fmt(u['mean'], '.4f')} | {_fmt(u['twin_mean'], '.4f')} | "
            f"{_fmt_p(u['wilcoxon_p'])} | {_fmt_p(u['ttest_p'])} | {delta} | "
            f"{d['better']} / {d['worse']} / {d['tied']} |"
        )
    return lines


def _read_curve(path: Path, column: str) -> tuple[list[int], list[float]]:
    epochs: list[int] = []
    values: list[float] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get(column):
                epochs.append(int(float(row["epoch"])))
                values.append(float(row[column]))
    return epochs, values


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_curves(curves: dict[str, tuple[Path, int]], path: Path) -> bool:
    """Validation NDCG@10 per epoch of each variant's curve (variant -> (train curve, its seed)); False when
    no curve exists."""
    from matplotlib.figure import Figure  # matplotlib only when reporting
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    drawn = False
    for v, (curve, seed) in curves.items():
        if curve.exists():
            epochs, values = _read_curve(curve, CURVE_METRIC)
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=f"{v} (seed {seed})")
                drawn = True
    if not drawn:
        return False
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_bars(results: dict[str, Any], path: Path) -> None:
    """Test HR@K and NDCG@K (K = the significance K) per variant with std error bars, popularity first."""
    from matplotlib.figure import Figure

    k = results["selection_metric"].rsplit("_", 1)[1]
    metrics = [f"hr_at_{k}", f"ndcg_at_{k}"]
    rows: list[tuple[str, list[float], list[float]]] = []
    pop = results["popularity"].get("test")
    if pop:
        rows.append(("popularity", [pop[m] for m in metrics], [0.0, 0.0]))
    for v, e in results["variants"].items():
        rows.append(
            (v, [e["test"][m]["mean"] for m in metrics], [e["test"][m]["std"] or 0.0 for m in metrics])
        )
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.38
    for i, m in enumerate(metrics):
        ax.bar(
            x + (i - 0.5) * width,
            [r[1][i] for r in rows],
            width,
            yerr=[r[2][i] for r in rows],
            capsize=3,
            label=_label(m),
        )
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("test metric (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    _save(fig, path)
