#!/usr/bin/env bash
# The test suite: set up, then lint and run pytest. Extra arguments go to pytest (e.g. `-k metrics`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check pipeline stages tests benchmarks
.venv/bin/python -m pytest "$@"
