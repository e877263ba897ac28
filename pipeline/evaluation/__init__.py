"""Evaluation: full-ranking metrics (shared with training validation) and the evaluate stage."""
