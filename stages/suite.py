"""Suite: the experiment suite (baselines, KDSR, ablations over seeds) -> <out>/runs/, results.md/json, plots.

    python -m stages.suite --params configs/beauty.yaml --out reports/suite/beauty --seeds 3 --jobs 1 \
        [--variants kdsr sasrec_id ...] [--no-twins] [--set train.epochs=5 ...]

A command-line tool, not a dvc.yaml stage. Paths are taken relative to the directory it is started from;
relative paths inside the params file stay relative to the project root, like the stages'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, Params, load_params, with_overrides
from pipeline.experiments.plan import VARIANTS, parse_overrides
from pipeline.experiments.report import run_report
from pipeline.experiments.suite import RunsFailed, run_suite
from pipeline.io import output_lock
from stages._common import main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.suite", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="base config (default: the project params.yaml)"
    )
    ap.add_argument("--out", type=Path, required=True, help="suite folder, e.g. reports/suite/beauty")
    ap.add_argument(
        "--seeds", type=int, default=3, help="seeds of sasrec_id, sasrec_modality, kdsr, kdsr_twin (3)"
    )
    ap.add_argument("--ablation-seeds", type=int, default=1, help="seeds of the kdsr_* ablations (1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (1)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all")
    ap.add_argument(
        "--twins",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each KDSR variant's twin (its config without the distillation terms) over the same seeds "
        "(default: on)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base-config key (YAML value), e.g. train.epochs=5; repeatable",
    )
    ap.add_argument("--no-report", action="store_true", help="skip results.md/json and the plots")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.params, args.out = args.params.resolve(), args.out.resolve()  # before main() changes directory
    return args


def run(args: argparse.Namespace) -> None:
    base = with_overrides(load_params(args.params), parse_overrides(args.overrides))
    with output_lock(args.out):  # held from the runs through the report: no other suite writes in between
        _run(args, base)


def _run(args: argparse.Namespace, base: Params) -> None:
    failed: RunsFailed | None = None
    try:
        results = run_suite(
            base,
            args.out,
            variants=args.variants,
            seeds=args.seeds,
            ablation_seeds=args.ablation_seeds,
            jobs=args.jobs,
            progress=not args.no_progress,
            twins=args.twins,
        )
    except RunsFailed as err:  # the report covers the runs that finished; the failure is raised after it
        results, failed = err.results, err
    if results and not args.no_report:
        run_report(args.out, base.mlflow)
    if failed is not None:
        raise failed


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
