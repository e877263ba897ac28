"""Schema: write the shipped params.yaml and the README's parameter table from the params schema.

    python -m stages.schema --check   # exit 1 and show how params.yaml / README.md differ from the schema
    python -m stages.schema --write   # rewrite params.yaml and the README table (between its markers)

A command-line tool, not a dvc.yaml stage. Every params key is written once, in pipeline/config/ (its name,
default, bounds and ``description``); run ``--write`` after changing one. tests/test_schema_docs.py fails
while a generated file has drifted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.io import atomic_path
from pipeline.schema_docs import documents, drift
from stages._common import main

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.schema", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="report drift, exit 1 when there is any")
    mode.add_argument("--write", action="store_true", help="rewrite params.yaml and the README table")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, root: Path = ROOT) -> int:
    """0 when the generated files equal what the schema gives (after ``--write``: when written), else 1."""
    stale = 0
    for path, text in documents(root).items():
        diff = drift(path.name, text, path.read_text())
        if diff is None:
            print(f"{path}: follows the schema")
        elif args.write:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            print(f"{path}: rewritten from the schema")
        else:
            stale += 1
            print(diff)
    if stale:
        print(
            "generated from the schema but changed since: run python -m stages.schema --write",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: sys.exit(run(arguments)))
