"""User-facing errors: the stage entry points print these without a traceback and exit non-zero."""


class PipelineError(Exception):
    """An expected failure caused by input or configuration; its message names the file, line or key."""


class DataError(PipelineError):
    """Input data is missing, malformed beyond tolerance, or empty after filtering."""


class OutputLocked(PipelineError):
    """Another live process holds the lock of an output folder or file this run would write."""
