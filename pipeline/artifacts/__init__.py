"""Typed readers of the pipeline's artefacts: one reader per file, validating it once."""

from pipeline.artifacts.sequences import Sequences, check_sequences, read_sequences

__all__ = ["Sequences", "check_sequences", "read_sequences"]
