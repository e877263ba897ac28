"""Params: print the whole params file an experiment config stands for (its overrides merged over its base).

    python -m stages.params --config configs/beauty.yaml > params.yaml && dvc repro

A command-line tool, not a dvc.yaml stage. The output is validated first; comments are not carried over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.config import parse_params
from pipeline.config.files import read_params_file
from stages._common import main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.params", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="e.g. configs/beauty.yaml")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()  # before main() changes directory
    return args


def merged_params(config: Path) -> str:
    """The YAML text of ``config`` merged over its base, validated and typed (every key, in schema order)."""
    params = parse_params(read_params_file(config), str(config))
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def run(args: argparse.Namespace) -> None:
    sys.stdout.write(merged_params(args.config))


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
