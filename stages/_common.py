"""What every stage entry point shares: logging set-up and clean exits on expected errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import threads
from pipeline.errors import PipelineError
from pipeline.progress import quiet_third_party_bars

log = logging.getLogger("stages")


def describe_os_error(err: OSError) -> str:
    """One line for an OS error that names the path(s) involved (``err.filename``) when the error knows it."""
    what = err.strerror or str(err) or type(err).__name__
    if err.filename is not None and err.filename2 is not None:
        return f"{err.filename} -> {err.filename2}: {what}"
    if err.filename is not None:
        return f"{err.filename}: {what}"
    return str(err) or what


def main(run: Callable[[], None]) -> None:
    """Run a stage body from the project root; print expected errors without a traceback and exit 2.

    Expected errors are :class:`PipelineError` (bad input or configuration), ``OSError`` (a missing or
    unreadable file, a read-only folder, a full disk: the message names the path) and ``ValueError`` (an
    input file that cannot be parsed); each gives one ``error:`` line on stderr and exit code 2. The
    traceback is logged at DEBUG level (``KDSR_LOG_LEVEL=DEBUG``).
    """
    logging.basicConfig(
        level=os.environ.get("KDSR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.chdir(Path(__file__).resolve().parent.parent)
    log.info(threads.describe())
    quiet_third_party_bars()  # off a terminal, Hugging Face / MLflow bars would fill logs with carriage returns
    try:
        run()
    except PipelineError as err:  # may list several problems, one per line
        _fail(str(err), one_line=False)
    except OSError as err:  # FileNotFoundError, PermissionError, ENOSPC, ...
        _fail(describe_os_error(err))
    except ValueError as err:
        _fail(f"{err} ({type(err).__name__})" if str(err) else type(err).__name__)


def dvc_removed_outputs_hint() -> str | None:
    """The hint for a stage that fails under ``dvc repro`` / ``dvc exp run`` in this workspace, where DVC
    deleted the stage's outputs before starting it; None elsewhere.

    DVC sets ``DVC_STAGE`` (the stage's name) and ``DVC_ROOT`` (the repository) for every stage command; a
    queued or ``--temp`` experiment runs in a copy whose ``DVC_ROOT`` names the original repository, and
    leaves this workspace's outputs alone.
    """
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage or not root or Path(root).resolve() != Path.cwd().resolve():
        return None
    return (
        f"DVC removed the outputs of stage {stage!r} before running it; restore the last committed ones with "
        f"`dvc checkout {stage}` (its `cache: false` files, kept in git, with `git checkout -- <file>`)"
    )


def _fail(message: str, one_line: bool = True) -> None:
    log.debug("traceback of the error below", exc_info=True)
    if one_line:
        message = " ".join(message.split())
    print(f"error: {message}", file=sys.stderr)
    hint = dvc_removed_outputs_hint()
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(2)
