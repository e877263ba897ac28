"""Train + evaluate benchmark: seconds per epoch, sequences/s, epochs and seconds to the best validation
epoch, and validation/test HR, NDCG and MRR at 10, 20 and 50 for each named variant, on prepared data.
With ``--unmasked`` the trained model is also evaluated on test WITHOUT history masking (RecBole's protocol,
that of the published Scientific results), into ``<run>/unmasked/``: keys ``test_unmasked_<metric>_at_<k>``. The
trained weights are the same; the post-hoc choices (the prior's weight, ``train.exclude_seen``) are made again on
validation ranked the same way, as a run with ``eval.mask_history: false`` would make them (``unmasked_prior``,
``unmasked_exclude_seen`` in the row).

Prepared data is a folder with ``processed/sequences.parquet`` and ``supervision/`` (what the ingest and
correlate stages write); ``--prepare`` builds it for the Amazon Beauty sequences from ../shared/data. The
training path imports neither polars, dvc nor mlflow, so the same command runs on a bare GPU machine:

    python benchmarks/bench_train.py --prepare --data /tmp/beauty          # on a CPU machine with polars
    python benchmarks/bench_train.py --data /tmp/beauty --variants sasrec_id kdsr --device cuda --json out.json

Variants are dotted overrides of ``--params`` (default configs/beauty.yaml); add more with --set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("KDSR_MLFLOW", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder with processed/ and supervision/")
    ap.add_argument("--prepare", action="store_true", help="build --data with ingest/embed/correlate first")
    from pipeline.experiments.plan import VARIANTS, parse_overrides  # the suite's definitions

    ap.add_argument("--variants", nargs="+", default=["sasrec_id", "kdsr"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the params file's train.device)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra dotted overrides")
    ap.add_argument("--out", type=Path, default=None, help="where models/curves go (default: <data>/bench)")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--unmasked",
        action="store_true",
        help="also evaluate on test without history masking (RecBole's protocol), no second training",
    )
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    import torch

    from pipeline.config import load_params, with_overrides
    from pipeline.evaluation.evaluate import UNMASKED_DIR, run_evaluate_unmasked
    from pipeline.layout import Layout
    from pipeline.runner import prepare_data, run_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_params(args.params)
    extra = parse_overrides(args.set)
    if args.device:
        extra["train.device"] = args.device
    base = with_overrides(base, {"mlflow.enabled": False, **extra})
    base = with_overrides(base, {"eval.ks": sorted({*base.eval.ks, *ROW_KS})})  # a row's cut-offs always
    if args.prepare:  # ingest -> embed -> correlate into --data (needs polars and the teachers)
        prepare_data(base, Layout.flat(args.data))
    out = args.out or args.data / "bench"
    device = "cuda" if (base.train.device != "cpu" and torch.cuda.is_available()) else "cpu"
    machine = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    results = []
    for variant in args.variants:
        for seed in args.seeds:
            p = with_overrides(base, {**VARIANTS[variant], "train.seed": seed})
            layout = Layout.bench_run(args.data, out, variant, seed)
            t0 = time.perf_counter()
            summary = run_stage("train", p, layout, progress=False)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            report = run_stage("evaluate", p, layout, progress=False)
            eval_s = time.perf_counter() - t1
            epochs = summary["epochs_run"]
            row = {
                "variant": variant,
                "seed": seed,
                "device": device,
                "machine": machine,
                "epochs_run": epochs,
                "best_epoch": summary["best_epoch"],
                "seconds_total": round(summary["seconds_total"], 2),
                "seconds_to_best": round(summary["seconds_to_best"], 2),
                "seconds_per_epoch": round(train_s / max(1, epochs), 2),
                "evaluate_seconds": round(eval_s, 2),
                **row_metrics(report["valid"], "valid"),
                **row_metrics(report["test"], "test"),
            }
            if args.unmasked:  # the same model, test ranked with the user's own past items kept
                t2 = time.perf_counter()
                student, chooser = unmasked_student(p, layout, device)
                row["unmasked_prior"] = student.cfg.last_item_prior
                row["unmasked_exclude_seen"] = student.cfg.exclude_seen
                unmasked = run_evaluate_unmasked(
                    p.eval,
                    layout.sequences,
                    layout.models,
                    layout.metrics.parent / UNMASKED_DIR,
                    student=student,
                    device=device,
                    valid_student=chooser,
                )
                row["unmasked_evaluate_seconds"] = round(time.perf_counter() - t2, 2)
                row.update(row_metrics(unmasked["test"], "test_unmasked"))
            row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
            if device == "cuda":
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n" + markdown_table(results, args.unmasked))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


ROW_KS = (10, 20, 50)  # cut-offs of a result row (published results report @10, @20 and @50)
TABLE_COLUMNS = (
    "variant",
    "seed",
    "device",
    "epochs_run",
    "best_epoch",
    "seconds_per_epoch",
    "seconds_to_best",
    "test_hr_at_10",
    "test_hr_at_20",
    "test_ndcg_at_10",
    "test_ndcg_at_20",
    "valid_ndcg_at_20",
)
UNMASKED_COLUMNS = (  # RecBole's names: R@k is HR@k with one target per user
    ("test_unmasked_hr_at_10", "unmasked R@10"),
    ("test_unmasked_ndcg_at_10", "unmasked NDCG@10"),
    ("test_unmasked_hr_at_50", "unmasked R@50"),
    ("test_unmasked_ndcg_at_50", "unmasked NDCG@50"),
)


def row_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"<prefix>_<hr|ndcg|mrr>_at_<k>": value}`` for k in :data:`ROW_KS` from one part of a report."""
    return {f"{prefix}_{m}_at_{k}": metrics[f"{m}_at_{k}"] for k in ROW_KS for m in ("hr", "ndcg", "mrr")}


def unmasked_student(p, layout, device: str):
    """The trained student with its post-hoc choices made on validation without history masking, and the
    network that made them (the same model unless it was refreshed: then the network validation chose)."""
    import torch

    from pipeline.artifacts.sequences import read_sequences
    from pipeline.evaluation.cases import load_eval_cases
    from pipeline.models import load_student
    from pipeline.models.persist import is_refreshed
    from pipeline.training.prior import set_prior_weight
    from pipeline.training.refresh import carry_choices

    student = load_student(layout.models, device)
    chooser = load_student(layout.models, device, selected=True) if is_refreshed(layout.models) else student
    valid = load_eval_cases(layout.sequences, "valid", student.max_len)
    unmasked = p.eval.model_copy(update={"mask_history": False})
    set_prior_weight(chooser, valid, p.train, unmasked, torch.device(device))
    if chooser is not student:
        t = p.train
        carry_choices(
            chooser, student, read_sequences(layout.sequences), t.transition_window, t.transition_decay
        )
    return student, chooser


def markdown_table(results: list[dict], unmasked: bool) -> str:
    """The printed table: timing, test HR/NDCG at 10 and 20 (and the unmasked R/NDCG at 10 and 50)."""
    cols = [(c, c) for c in TABLE_COLUMNS] + (list(UNMASKED_COLUMNS) if unmasked else [])
    lines = ["| " + " | ".join(head for _, head in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [
            f"{r[c]:.4f}"
            if isinstance(r.get(c), float) and c.startswith(("test", "valid"))
            else str(r.get(c, "–"))
            for c, _ in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
