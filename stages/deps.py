"""Deps: keep dvc.yaml's code ``deps`` equal to what each stage imports (:mod:`pipeline.stage_deps`).

    python -m stages.deps --check   # exit 1 and name each stage's missing / extra code deps
    python -m stages.deps --write   # rewrite the code deps of every stage in dvc.yaml (nothing else)

A command-line tool, not a dvc.yaml stage. Run ``--write`` after changing an import; then ``dvc repro``
reruns the stages whose code changed. tests/test_stage_deps.py fails while dvc.yaml has drifted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.io import atomic_path
from pipeline.stage_deps import check, rewrite
from stages._common import main

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.deps", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="report drift, exit 1 when there is any")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps in dvc.yaml")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, root: Path = ROOT) -> int:
    """0 when dvc.yaml's code deps follow the imports (after ``--write``: when it is written), else 1."""
    if args.write:
        text = rewrite(root)
        if text != (root / "dvc.yaml").read_text():
            with atomic_path(root / "dvc.yaml") as tmp:
                tmp.write_text(text)
            print(f"{root / 'dvc.yaml'}: code deps rewritten")
        else:
            print(f"{root / 'dvc.yaml'}: code deps already follow the imports")
        return 0
    drifts = check(root)
    for drift in drifts:
        print(drift)
    if drifts:
        print(
            "dvc.yaml's code deps differ from the imports: run python -m stages.deps --write", file=sys.stderr
        )
        return 1
    print("dvc.yaml's code deps follow the imports")
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: sys.exit(run(arguments)))
