#!/usr/bin/env bash
# The main job: set up, then rebuild every DVC stage on the embedded demo data and print the metrics.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/repro.sh -f`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -d .git ] || git init -q  # DVC needs a git (or --no-scm) repository
dvc repro "$@"
dvc metrics show --precision 4
