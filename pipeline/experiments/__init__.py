"""The experiment suite (baselines, KDSR, ablations over seeds) and its aggregated report."""
