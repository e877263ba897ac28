"""Published full-ranking results beside the suite's rows (pipeline/experiments/anchors.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.experiments.anchors import PUBLISHED, dataset_of, published_context, render_published

HEAD_BEAUTY = ["| source | model | HR@10 | HR@20 | NDCG@10 | NDCG@20 |", "|---|---|--:|--:|--:|--:|"]
BEAUTY_ROWS = [
    "| TASTE (CIKM 2023; OpenMatch/TASTE test logs) | T5-base text retrieval | 0.1030 | 0.1550 | 0.0517 | 0.0649 |",
    "| BSARec (AAAI 2024) | ID transformer | 0.1008 | 0.1373 | 0.0611 | 0.0703 |",
    "| eSASRec benchmark (RecSys 2025; blondered/transformer_benchmark) | SASRec + sampled softmax (256) | "
    "0.0921 | – | 0.0531 | – |",
    "| eSASRec benchmark | eSASRec (LiGR layers) | 0.0928 | – | 0.0523 | – |",
]
HEAD_SCIENTIFIC = ["| source | model | R@10 | NDCG@10 | R@50 | NDCG@50 |", "|---|---|--:|--:|--:|--:|"]
SCIENTIFIC_ROWS = [
    "| MISSRec (MM 2023) | text + image + ID, pre-trained | 0.1360 | 0.0753 | 0.2431 | 0.0983 |",
    "| UniSRec (KDD 2022) | text + ID | 0.1235 | 0.0634 | 0.2473 | 0.0904 |",
    "| VQ-Rec (WWW 2023) | text codes | 0.1211 | 0.0643 | 0.2369 | 0.0897 |",
    "| UniSRec Table 2 | SASRec (RecBole) | 0.1080 | 0.0553 | 0.2042 | 0.0760 |",
]


def stat(mean: float, std: float | None) -> dict[str, float | None]:
    return {"mean": mean, "std": std}


def fake_results(dataset: str, mask_history: bool, split: str = "loo") -> dict[str, Any]:
    """Two variants: kdsr over 3 seeds with every cut-off, sasrec_id over 1 seed without @50."""
    return {
        "variants": {
            "kdsr": {
                "n": 3,
                "test": {
                    "hr_at_10": stat(0.11, 0.001),
                    "hr_at_20": stat(0.15, 0.002),
                    "hr_at_50": stat(0.25, 0.0031),
                    "ndcg_at_10": stat(0.055, 0.0004),
                    "ndcg_at_20": stat(0.065, 0.0005),
                    "ndcg_at_50": stat(0.085, 0.00061),
                },
            },
            "sasrec_id": {
                "n": 1,
                "test": {
                    "hr_at_10": stat(0.1, None),
                    "hr_at_20": stat(0.14, None),
                    "ndcg_at_10": stat(0.05, None),
                    "ndcg_at_20": stat(0.06, None),
                },
            },
        },
        "published": {"dataset": dataset, "mask_history": mask_history, "split": split},
    }


def table_rows(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("|")]


def test_data_set_is_recognised_from_the_sequences_file_name() -> None:
    def params(source: str, path: str | None) -> dict[str, Any]:
        return {"data": {"source": source, "sequences_file": path}, "eval": {"mask_history": False}}

    assert dataset_of(params("sequences", "../shared/data/amazon-beauty/Beauty.txt")) == "beauty"
    assert dataset_of(params("sequences", "/x/amazon-scientific/Scientific.txt")) == "scientific"
    assert dataset_of(params("sequences", "scientific.TXT")) == "scientific"
    assert dataset_of(params("sequences", "/x/Beauty.txt.bak")) is None
    assert dataset_of(params("sequences", "/x/Toys.txt")) is None
    assert dataset_of(params("amazon2014", "../shared/data/amazon-beauty/Beauty.txt")) is None
    assert dataset_of(params("sequences", None)) is None and dataset_of(None) is None
    assert published_context(params("sequences", "Scientific.txt")) == {
        "dataset": "scientific",
        "mask_history": False,
        "split": "loo",
    }
    assert published_context(params("demo", "Scientific.txt")) is None


def test_beauty_table_puts_our_masked_rows_beside_the_published_ones() -> None:
    lines = render_published(fake_results("beauty", mask_history=True))
    assert lines[1] == "## Published full-ranking results on these files"
    assert (
        "Published protocol: leave-one-out (last item test), ranking against every item, the user's "
        in lines[3]
    )
    assert (
        "This suite: leave-one-out, ranking against every item, history masked (`eval.mask_history: true`)"
        in (lines[3])
    )
    assert table_rows(lines) == [
        *HEAD_BEAUTY,
        *BEAUTY_ROWS,
        "| this suite (history masked, 3 seeds) | kdsr | 0.1100 ± 0.0010 | 0.1500 ± 0.0020 | 0.0550 ± 0.0004 | "
        "0.0650 ± 0.0005 |",
        "| this suite (history masked, 1 seed) | sasrec_id | 0.1000 | 0.1400 | 0.0500 | 0.0600 |",
    ]


def test_scientific_table_uses_our_unmasked_rows_as_comparable() -> None:
    lines = render_published(fake_results("scientific", mask_history=False))
    assert "WITHOUT history masking" in lines[3] and lines[3].endswith("R@k = HR@k with one target per user.")
    assert table_rows(lines) == [
        *HEAD_SCIENTIFIC,
        *SCIENTIFIC_ROWS,
        "| this suite (history not masked, 3 seeds) | kdsr | 0.1100 ± 0.0010 | 0.0550 ± 0.0004 | 0.2500 ± 0.0031 | "
        "0.0850 ± 0.0006 |",
        "| this suite (history not masked, 1 seed) | sasrec_id | 0.1000 | 0.0500 | – | – |",
    ]


@pytest.mark.parametrize(
    ("dataset", "mask", "split", "label"),
    [
        ("scientific", True, "loo", "this suite (history masked: not comparable, 3 seeds)"),
        ("beauty", False, "loo", "this suite (history not masked: not comparable, 3 seeds)"),
        ("beauty", True, "ratio", "this suite (history masked: not comparable, split ratio, 3 seeds)"),
    ],
)
def test_a_suite_under_another_protocol_says_its_rows_are_not_comparable(
    dataset: str, mask: bool, split: str, label: str
) -> None:
    lines = render_published(fake_results(dataset, mask, split))
    setting = f"eval.mask_history={str(not mask).lower()}" if split == "loo" else "data.split=loo"
    assert lines[3].endswith(
        f" For comparable rows run the suite with `--set {setting}` (into another `--out`)."
    )
    rows = table_rows(lines)
    assert rows[2 : 2 + len(PUBLISHED[dataset].rows)] == (
        BEAUTY_ROWS if dataset == "beauty" else SCIENTIFIC_ROWS
    )
    assert rows[-2].startswith(f"| {label} | kdsr | 0.1100 ± 0.0010 | ")


def test_no_table_without_a_known_data_set() -> None:
    results = fake_results("beauty", True)
    assert render_published({**results, "published": None}) == []
    assert render_published({k: v for k, v in results.items() if k != "published"}) == []
