"""Params: write the whole params file an experiment config stands for (its overrides merged over its base).

    python -m stages.params --config configs/beauty.yaml --out params.yaml && dvc repro

A command-line tool, not a dvc.yaml stage. The output is validated first and written atomically (``--out``)
or printed; comments are not carried over. The shipped configs override the built-in defaults
(``base: defaults``), so overwriting params.yaml does not change what they mean.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, parse_params
from pipeline.config.files import params_chain, read_params_file
from pipeline.io import atomic_path
from stages._common import main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.params", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="e.g. configs/beauty.yaml")
    ap.add_argument("--out", type=Path, default=None, help="write here (atomically) instead of printing")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()  # before main() changes directory
    args.out = args.out.resolve() if args.out else None
    return args


def merged_params(config: Path) -> str:
    """The YAML text of ``config`` merged over its base, validated and typed (every key, in schema order)."""
    params = parse_params(read_params_file(config), str(config))
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _stdout_stat() -> os.stat_result | None:
    try:
        return os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured by pytest)
        return None


def run(args: argparse.Namespace) -> None:
    chain = params_chain(args.config)
    if args.out is not None and args.out in chain:
        raise ConfigError(
            f"--out {args.out}: {args.config} reads that file; write the merged params elsewhere"
        )
    stdout = _stdout_stat() if args.out is None else None
    for path in chain:  # `> file` empties the file before this runs: say so rather than "file is empty"
        if stdout is not None and path.exists() and os.path.samestat(stdout, path.stat()):
            raise ConfigError(
                f"stdout is {path}, which {args.config} reads, and the shell emptied it before this command "
                f"ran: restore it (e.g. git checkout {path.name}) and use --out instead of a redirect"
            )
    text = merged_params(args.config)
    if args.out is None:
        sys.stdout.write(text)
        return
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: run(arguments))
