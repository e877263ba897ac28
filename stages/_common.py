"""What every stage entry point shares: logging set-up and clean exits on expected errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError


def main(run: Callable[[], None]) -> None:
    """Run a stage body from the project root; print expected errors without a traceback and exit 2."""
    logging.basicConfig(
        level=os.environ.get("KDSR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.chdir(Path(__file__).resolve().parent.parent)
    try:
        run()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
