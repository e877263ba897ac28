"""Benchmark every pipeline stage on three scenarios and print one table (Markdown) + write it as JSON.

    make bench                                     # = .venv/bin/python benchmarks/run_all.py
    make bench-quick                               # tiny sizes: a smoke test of the whole runner
    .venv/bin/python benchmarks/run_all.py --scenarios demo beauty --stages train evaluate --epochs 3 \\
        --device cuda

Scenarios:
  demo    the project's params.yaml (the deterministic demo data set, text + image teachers).
  beauty  configs/beauty.yaml on ../shared/data/amazon-beauty (skipped, with a note, when it is absent).
  large   ingest: a generated Amazon-2014 ratings CSV + metadata of --large-items items and
          --large-interactions interactions (default 1,000,000 / 10,000,000);
          embed -> correlate -> train -> evaluate: a generated demo catalogue of --large-catalogue items
          (default 100,000; text only, 1.85 users per item like Beauty), so correlate builds a 100k-item
          top-k. Both inputs are generated once per work dir, unmeasured, and reused while their sizes match.

Every stage runs in its own child process (``python -m``-like, from the project root, MLflow off), so the
numbers are per stage: wall seconds of the process (start-up and imports included), seconds of the stage
function alone, peak RSS (the child's own address space, VmHWM, or a process it started if larger; the
parent's ``wait4`` figure is kept as ``peak_rss_wait4_mb``: Linux counts the image a child replaced at exec,
so that one never drops below the runner's own RSS), CPU seconds (user + system; CPU s / stage s ~ cores kept busy), a throughput (ingest: raw
interactions/s; embed, correlate: items/s per modality summed; train: training sequences/s, the harmonic
mean over epochs; evaluate: evaluated sequences/s, validation + test), the device and, where CUDA is used,
the GPU name and peak allocated/reserved memory. The embed cache is emptied before embed (a cold run) and
train never resumes from a checkpoint.

Stages read what the earlier stages wrote into the same work dir (default /tmp/kdsr-bench/<scenario>),
so ``--stages train evaluate`` reuses the data of an earlier run; a stage whose input is missing is
reported as failed with the command that builds it. Results go to
benchmarks/results/<host>-<date>.json (and a .md next to it); each stage's log to <work>/logs/<stage>.log.
The exit status is 1 when a stage failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import child_main  # noqa: E402
from benchmarks.report import default_output, markdown_table, run_header  # noqa: E402
from benchmarks.scenarios import (  # noqa: E402
    LARGE_DEFAULTS,
    LARGE_EPOCHS,
    MARKER,
    QUICK,
    SCENARIOS,
    STAGES,
    build_scenario,
    run_scenario,
)
from pipeline.io import atomic_path, write_json  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run_all.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"train.epochs for every scenario (default: the params file's; large: {LARGE_EPOCHS})",
    )
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="embed/correlate/train/evaluate device (default auto: the params files' setting)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test sizes: demo {QUICK['demo_users']} users / {QUICK['demo_items']} items, "
        f"large {QUICK['large_items']:,} items, {QUICK['epochs']} epoch",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kdsr-bench"), help="<workdir>/<scenario>")
    ap.add_argument("--fresh", action="store_true", help="delete each scenario's work dir first")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/<host>-<date>.json)"
    )
    ap.add_argument("--demo-params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--beauty-params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    for name, help_text in (
        ("large_items", "items of the large ingest"),
        ("large_interactions", "interactions of the large ingest"),
        ("large_catalogue", "items of the large embed/correlate/train/evaluate catalogue"),
    ):
        ap.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"{help_text} (default {LARGE_DEFAULTS[name]:,}; --quick: {QUICK[name]:,})",
        )
    ap.add_argument("--stage-timeout", type=float, default=None, help="kill a stage after this many seconds")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # a measured child process
    args = ap.parse_args(argv)
    for name in ("epochs", *LARGE_DEFAULTS):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when a stage failed)."""
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return 0
    now = dt.datetime.now().astimezone()
    out = (args.out or default_output(now)).resolve()
    stages = [s for s in STAGES if s in args.stages]  # always in pipeline order
    report: dict[str, Any] = {**run_header(args, now), "scenarios": {}, "rows": []}
    for name in [s for s in SCENARIOS if s in args.scenarios]:
        sc = build_scenario(name, args)
        if args.fresh and sc.work.exists():
            if not (sc.work / MARKER).exists():
                raise SystemExit(
                    f"--fresh: {sc.work} was not made by this script ({MARKER} missing); not deleting it"
                )
            shutil.rmtree(sc.work)
        report["rows"].extend(run_scenario(sc, stages, args))
        report["scenarios"][name] = sc.summary()
    report["load_average_after"] = list(os.getloadavg())
    table = markdown_table(report["rows"])
    write_json(out, report)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"# KDSR stage benchmark: {report['host']}, {report['date']}\n\n{table}")
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    failed = any(r["status"] == "failed" for r in report["rows"])
    return 1 if failed or any(s["errors"] for s in report["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
