# Entry points for people and CI. Extra benchmark options: make bench BENCH_ARGS="--scenarios demo --device cuda"
PYTHON := .venv/bin/python
BENCH_ARGS ?=

.PHONY: help setup repro test bench bench-quick

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup:  ## create .venv and install the project (re-installs only when pyproject.toml changes)
	bash scripts/setup.sh

repro:  ## set up, then dvc repro every stage on the demo data and show the metrics
	bash scripts/repro.sh

test:  ## set up, then ruff and pytest
	bash scripts/test.sh

bench: setup  ## every stage on demo, Beauty and a large generated catalogue -> benchmarks/results/
	$(PYTHON) benchmarks/run_all.py $(BENCH_ARGS)

bench-quick: setup  ## the same runner at smoke-test sizes (a few minutes on CPU)
	$(PYTHON) benchmarks/run_all.py --quick $(BENCH_ARGS)
