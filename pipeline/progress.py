"""Progress that reads well everywhere: a tqdm bar on a terminal, plain log lines elsewhere.

A tqdm bar redraws itself with carriage returns, which turns ``dvc repro > log``, CI logs and the output of
the suite's worker processes into one unreadable line. :func:`progress_bar` takes tqdm's arguments and
returns a tqdm object in both cases, so a call site only swaps ``tqdm(...)`` for ``progress_bar(...)``:

* stderr is a terminal: the usual ``tqdm.auto`` bar;
* stderr is not a terminal (a file, a pipe): a :class:`LogProgress`, which draws nothing and logs one plain
  line (``epoch 3/30: 40% 120/300 [00:12<00:18, 9.8batch/s, loss=5.12]``) at every further 10 % of the
  total or every ``KDSR_PROGRESS_INTERVAL`` seconds (default 30), whichever comes first, and one at the end.

``KDSR_PROGRESS`` forces a mode: ``bar``, ``log``, ``off`` (default ``auto``: decided by ``isatty``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm as _std_tqdm

log = logging.getLogger("pipeline.progress")

MODES = ("auto", "bar", "log", "off")
DEFAULT_INTERVAL_S = 30.0
LOG_STEP = 0.1  # a line at every further 10 % of the total


def progress_mode(file: TextIO | None = None) -> str:
    """``bar``, ``log`` or ``off``: ``KDSR_PROGRESS`` when set, else ``bar`` if ``file`` (default stderr)
    is a terminal and ``log`` if it is not."""
    mode = os.environ.get("KDSR_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"KDSR_PROGRESS must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    stream = file if file is not None else sys.stderr
    try:
        return "bar" if stream is not None and stream.isatty() else "log"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "log"


def _interval_s() -> float:
    raw = os.environ.get("KDSR_PROGRESS_INTERVAL", "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"KDSR_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}") from None
    return max(0.0, value)


class _Discard:
    """A file that swallows everything: a :class:`LogProgress` never writes a bar."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class LogProgress(_std_tqdm):
    """A tqdm that logs plain lines (no ``\\r``, no bar) at every further 10 % or every ``interval_s``.

    It counts, times and formats like tqdm (``update``, ``set_postfix``, iteration, context manager), but
    every redraw goes through :meth:`display`, which decides whether to log a line. Lines go to the
    ``pipeline.progress`` logger when logging is configured (stages do), else straight to stderr.
    """

    def __init__(self, *args: Any, interval_s: float | None = None, **kwargs: Any) -> None:
        self._interval = _interval_s() if interval_s is None else max(0.0, float(interval_s))
        self._last_line_t: float | None = None
        self._last_line_n: float | None = None
        self._last_step = 0  # number of LOG_STEP fractions already reported
        self._t0 = time.monotonic()
        kwargs["file"] = _Discard()
        kwargs["ascii"] = True
        kwargs["disable"] = bool(kwargs.get("disable") or False)  # tqdm's None means "off unless a tty"
        kwargs.setdefault("mininterval", min(1.0, self._interval) if self._interval else 0.0)
        kwargs.pop("dynamic_ncols", None)
        kwargs.pop("position", None)
        super().__init__(*args, **kwargs)

    # tqdm calls this for every redraw; ``close`` calls it with ``disable`` already set
    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None and msg != "":  # tqdm's "... (more hidden) ..." filler
            return True
        final = bool(self.disable) or msg == ""
        self._maybe_log(final)
        return True

    def _maybe_log(self, final: bool) -> None:
        n = self.n
        if self._last_line_n is not None and n == self._last_line_n:
            return  # nothing new since the last line
        if n == 0 and not final:
            return  # the opening redraw: nothing to say yet
        now = time.monotonic()
        total = self.total
        step = math.floor(n / total / LOG_STEP + 1e-9) if total else 0
        due = final or (total and step > self._last_step)
        if not due:
            due = now - (self._last_line_t if self._last_line_t is not None else self._t0) >= self._interval
        if not due:
            return
        self._last_line_t, self._last_line_n, self._last_step = now, n, max(self._last_step, step)
        self._emit(self.plain_line())

    def plain_line(self) -> str:
        """The current state as one line without a bar: ``desc: 40% 4/10 [00:04<00:06, 1.0it/s, k=v]``."""
        d = dict(self.format_dict)
        head = "{desc}: " if d.get("prefix") else ""
        if d.get("total"):
            fmt = head + "{percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        else:
            fmt = head + "{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        d["bar_format"] = fmt
        d["ncols"] = None
        return self.format_meter(**d).replace("\r", "").replace("\n", " ")

    @staticmethod
    def _emit(line: str) -> None:
        if logging.getLogger().hasHandlers() or log.hasHandlers():
            log.info(line)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def quiet_third_party_bars() -> None:
    """Off a terminal, turn off the bars of libraries that do not go through :func:`progress_bar` (Hugging
    Face downloads and weight loading, MLflow artifact transfers): they would put ``\r`` into the log.

    Call it early (a stage's start): libraries read these settings when imported. Explicit settings win.
    """
    if progress_mode() == "bar":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hub = sys.modules.get("huggingface_hub")
    if hub is not None and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":  # imported already
        with contextlib.suppress(Exception):
            hub.utils.disable_progress_bars()


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> _std_tqdm:
    """tqdm's arguments in, a tqdm out: a bar on a terminal, a :class:`LogProgress` elsewhere.

    ``disable=True`` turns it off as with tqdm; ``disable=None`` (tqdm's "only on a terminal") means on,
    since a non-terminal gets log lines instead of a bar. ``interval_s`` overrides ``KDSR_PROGRESS_INTERVAL``
    for the log lines.
    """
    mode = progress_mode(kwargs.get("file"))
    disable = kwargs.pop("disable", False)
    interval_s = kwargs.pop("interval_s", None)  # LogProgress only
    if mode == "off" or disable is True:
        return _std_tqdm(iterable, disable=True, **kwargs)
    if mode == "bar":
        from tqdm.auto import tqdm  # a notebook widget under Jupyter

        return tqdm(iterable, disable=False, **kwargs)
    kwargs.pop("file", None)
    return LogProgress(iterable, interval_s=interval_s, **kwargs)
