"""Stage benchmarks: the runner (run_all.py) and its harness, scenarios and report modules."""
