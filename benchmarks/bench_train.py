"""Train + evaluate benchmark: seconds per epoch, sequences/s, epochs and seconds to the best validation
epoch, and validation/test HR@20 and NDCG@20 for each named variant, on prepared data.

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
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    import torch

    from pipeline.config import load_params, with_overrides
    from pipeline.layout import Layout
    from pipeline.runner import prepare_data, run_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_params(args.params)
    extra = parse_overrides(args.set)
    if args.device:
        extra["train.device"] = args.device
    base = with_overrides(base, {"mlflow.enabled": False, **extra})
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
                "valid_hr_at_20": report["valid"]["hr_at_20"],
                "valid_ndcg_at_20": report["valid"]["ndcg_at_20"],
                "test_hr_at_10": report["test"]["hr_at_10"],
                "test_ndcg_at_10": report["test"]["ndcg_at_10"],
                "test_hr_at_20": report["test"]["hr_at_20"],
                "test_ndcg_at_20": report["test"]["ndcg_at_20"],
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            }
            if device == "cuda":
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    cols = [
        "variant",
        "seed",
        "device",
        "epochs_run",
        "best_epoch",
        "seconds_per_epoch",
        "seconds_to_best",
        "test_hr_at_20",
        "test_ndcg_at_20",
        "valid_ndcg_at_20",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        print(
            "| "
            + " | ".join(
                f"{r[c]:.4f}" if isinstance(r[c], float) and c.startswith(("test", "valid")) else str(r[c])
                for c in cols
            )
            + " |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
