#!/usr/bin/env bash
# The test suite: set up, then lint, check the formatting and run pytest. Extra arguments go to pytest
# (e.g. `-k metrics`); by default the `slow` tests are left out (pyproject.toml), `-m ""` runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check pipeline stages tests benchmarks
.venv/bin/ruff format --check pipeline stages tests benchmarks
.venv/bin/python -m pytest "$@"
