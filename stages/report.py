"""Report: a suite folder's runs/*/seed*/ -> results.md, results.json and PNG plots (no training).

    python -m stages.report --out reports/suite/beauty

A command-line tool, not a dvc.yaml stage. The plots and tables are logged to the suite's MLflow parent run
when tracking is on (the ``mlflow`` section the suite ran with, from ``<out>/suite.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, load_params, parse_params
from pipeline.experiments.plan import SUITE_FILE
from pipeline.experiments.report import run_report
from pipeline.io import output_lock, read_json
from stages._common import main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="suite folder, e.g. reports/suite/beauty")
    ap.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file for the mlflow section when <out>/suite.json is missing (params.yaml)",
    )
    args = ap.parse_args(argv)
    args.out = args.out.resolve()  # before main() changes directory
    args.params = args.params.resolve() if args.params else None
    return args


def run(args: argparse.Namespace) -> None:
    suite_file = args.out / SUITE_FILE
    if args.params is None and suite_file.exists():
        mlflow_params = parse_params(read_json(suite_file)["params"], str(suite_file)).mlflow
    else:
        mlflow_params = load_params(args.params or DEFAULT_PARAMS).mlflow
    with output_lock(args.out):  # not while a suite writes into the folder
        run_report(args.out, mlflow_params)


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
