"""Published full-ranking results on the data files the suite runs on: the one place that holds them.

The suite report (:mod:`pipeline.experiments.render`) puts these rows beside the suite's own (mean ± std over
seeds) in the same columns, with the protocol written out, so a reader sees where the project stands. The data
set is recognised from ``data.source: sequences`` and the sequences file's name (:func:`dataset_of`); other
data gets no such table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

MetricName = str  # an evaluate-report key: "hr_at_10", "ndcg_at_50", ...


@dataclass(frozen=True)
class PublishedRow:
    """One published result: where it comes from, the model, and its value per metric (None: not reported)."""

    source: str
    model: str
    values: dict[MetricName, float | None]


@dataclass(frozen=True)
class PublishedTable:
    """The published full-ranking results on one data set, under one protocol."""

    dataset: str  # the key of :data:`PUBLISHED`
    files: str  # which data files the numbers are on
    protocol: str  # how the published rows were evaluated, written out
    mask_history: bool  # whether the published protocol masks the user's history
    split: str  # the published split, as ``data.split`` spells it
    columns: tuple[tuple[MetricName, str], ...]  # (metric, column label), in the published table's order
    rows: tuple[PublishedRow, ...]
    note: str = ""


def _row(
    metrics: tuple[MetricName, ...], source: str, model: str, values: tuple[float | None, ...]
) -> PublishedRow:
    return PublishedRow(source, model, dict(zip(metrics, values, strict=True)))


_BEAUTY = ("hr_at_10", "hr_at_20", "ndcg_at_10", "ndcg_at_20")
_SCIENTIFIC = ("hr_at_10", "ndcg_at_10", "hr_at_50", "ndcg_at_50")

PUBLISHED: dict[str, PublishedTable] = {
    "beauty": PublishedTable(
        dataset="beauty",
        files="Amazon Beauty, the P5/S3-Rec files (22,363 users, 12,101 items)",
        protocol="leave-one-out (last item test), ranking against every item, the user's history masked",
        mask_history=True,
        split="loo",
        columns=tuple(zip(_BEAUTY, ("HR@10", "HR@20", "NDCG@10", "NDCG@20"), strict=True)),
        rows=(
            _row(
                _BEAUTY,
                "TASTE (CIKM 2023; OpenMatch/TASTE test logs)",
                "T5-base text retrieval",
                (0.1030, 0.1550, 0.0517, 0.0649),
            ),
            _row(_BEAUTY, "BSARec (AAAI 2024)", "ID transformer", (0.1008, 0.1373, 0.0611, 0.0703)),
            _row(
                _BEAUTY,
                "eSASRec benchmark (RecSys 2025; blondered/transformer_benchmark)",
                "SASRec + sampled softmax (256)",
                (0.0921, None, 0.0531, None),
            ),
            _row(_BEAUTY, "eSASRec benchmark", "eSASRec (LiGR layers)", (0.0928, None, 0.0523, None)),
        ),
    ),
    "scientific": PublishedTable(
        dataset="scientific",
        files=(
            "Amazon Scientific, the UniSRec split (8,442 users / 4,385 items / 59,427 interactions; "
            "these files 8,317 / 4,344 / 58,492, a near-identical variant)"
        ),
        protocol=(
            "leave-one-out (last item test), RecBole full ranking against every item WITHOUT history masking "
            "(the user's own past items stay in the ranking)"
        ),
        mask_history=False,
        split="loo",
        columns=tuple(zip(_SCIENTIFIC, ("R@10", "NDCG@10", "R@50", "NDCG@50"), strict=True)),
        rows=(
            _row(
                _SCIENTIFIC,
                "MISSRec (MM 2023)",
                "text + image + ID, pre-trained",
                (0.1360, 0.0753, 0.2431, 0.0983),
            ),
            _row(_SCIENTIFIC, "UniSRec (KDD 2022)", "text + ID", (0.1235, 0.0634, 0.2473, 0.0904)),
            _row(_SCIENTIFIC, "VQ-Rec (WWW 2023)", "text codes", (0.1211, 0.0643, 0.2369, 0.0897)),
            _row(_SCIENTIFIC, "UniSRec Table 2", "SASRec (RecBole)", (0.1080, 0.0553, 0.2042, 0.0760)),
        ),
        note="R@k = HR@k with one target per user.",
    ),
}

SEQUENCE_FILES = {"beauty.txt": "beauty", "scientific.txt": "scientific"}  # file name (any case) -> data set


def dataset_of(params: dict[str, Any] | None) -> str | None:
    """The :data:`PUBLISHED` key of a config (a ``model_dump``), or None when it is no known data set."""
    data = (params or {}).get("data") or {}
    if data.get("source") != "sequences" or not data.get("sequences_file"):
        return None
    return SEQUENCE_FILES.get(PurePath(str(data["sequences_file"])).name.lower())


def published_context(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the report needs to put the suite beside the published rows: the data set and our protocol.

    ``params`` is the suite's base config (``suite.json``'s ``params``); None without a known data set.
    """
    dataset = dataset_of(params)
    if dataset is None or params is None:
        return None
    return {
        "dataset": dataset,
        "mask_history": bool(params.get("eval", {}).get("mask_history", True)),
        "split": str(params.get("data", {}).get("split", "loo")),
    }


def _cell(stat: dict[str, float | None] | None) -> str:
    if stat is None:
        return "–"
    return f"{stat['mean']:.4f}" if stat["std"] is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _rerun_hint(table: PublishedTable, ours_masked: bool, ours_split: str) -> str:
    """How to get rows comparable with the published ones, when this suite's are not."""
    settings = (
        [f"eval.mask_history={str(table.mask_history).lower()}"] if ours_masked != table.mask_history else []
    )
    settings += [f"data.split={table.split}"] if ours_split != table.split else []
    if not settings:
        return ""
    return f" For comparable rows run the suite with `--set {' '.join(settings)}` (into another `--out`)."


def render_published(results: dict[str, Any]) -> list[str]:
    """The ``results.md`` section "Published full-ranking results on these files" (no lines without one).

    Published rows first, then each variant of the suite (test mean ± std over seeds) in the same columns; a
    suite whose protocol differs from the published one says so in its rows ("not comparable").
    """
    context = results.get("published")
    if not context or context.get("dataset") not in PUBLISHED:
        return []
    table = PUBLISHED[context["dataset"]]
    ours_masked, ours_split = bool(context["mask_history"]), context["split"]
    masking = "history masked" if ours_masked else "history not masked"
    comparable = ours_masked == table.mask_history and ours_split == table.split
    ours = f"this suite ({masking}{'' if comparable else ': not comparable'}"
    if ours_split != table.split:
        ours += f", split {ours_split}"
    lines = [
        "",
        "## Published full-ranking results on these files",
        "",
        f"{table.files}. Published protocol: {table.protocol}. "
        f"This suite: {'leave-one-out' if ours_split == 'loo' else ours_split + ' split'}, ranking against "
        f"every item, {masking} (`eval.mask_history: {str(ours_masked).lower()}`); its rows are test means ± "
        "std over seeds."
        + (f" {table.note}" if table.note else "")
        + _rerun_hint(table, ours_masked, ours_split),
        "",
        "| source | model | " + " | ".join(label for _, label in table.columns) + " |",
        "|---|---|" + "--:|" * len(table.columns),
    ]
    for row in table.rows:
        cells = ["–" if row.values[m] is None else f"{row.values[m]:.4f}" for m, _ in table.columns]
        lines.append(f"| {row.source} | {row.model} | " + " | ".join(cells) + " |")
    for variant, entry in results["variants"].items():
        cells = [_cell(entry["test"].get(m)) for m, _ in table.columns]
        seeds = f"{entry['n']} seed{'s' if entry['n'] != 1 else ''}"
        lines.append(f"| {ours}, {seeds}) | {variant} | " + " | ".join(cells) + " |")
    return lines
