"""The benchmark's report: the Markdown table of the stage rows and the default results path."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.tracking import git_rev

ROOT = Path(__file__).resolve().parent.parent


def _rate(value: float | None, unit: str | None) -> str:
    if value is None:
        return ""
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:,.{digits}f} {unit or ''}".strip()


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _summary(row: dict[str, Any]) -> str:
    return (
        f"{row['wall_s']:.1f} s wall ({row['stage_s']:.1f} s in the stage), peak RSS "
        f"{row['peak_rss_mb']:,.0f} MiB, {_rate(row.get('throughput'), row.get('unit'))} on {row['device']}"
    )


TABLE_COLUMNS = (
    "scenario",
    "stage",
    "status",
    "wall s",
    "stage s",
    "peak RSS MiB",
    "CPU s",
    "throughput",
    "device",
    "GPU peak MiB",
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (notes of failed/skipped rows listed under it)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    notes = []
    for r in rows:
        device = r.get("device", "")
        if r.get("gpu"):
            device = f"{device} ({r['gpu']})"
        cells = [
            r["scenario"],
            r["stage"],
            r["status"],
            _num(r.get("wall_s")),
            _num(r.get("stage_s")),
            _num(r.get("peak_rss_mb"), 0),
            _num(r.get("cpu_s")),
            _rate(r.get("throughput"), r.get("unit")),
            device,
            _num(r.get("gpu_peak_mb"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if r.get("note"):
            notes.append(f"- {r['scenario']} / {r['stage']}: {r['note']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def default_output(now: dt.datetime) -> Path:
    """benchmarks/results/<host>-<date>.json (the folder is git-ignored)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0]) or "host"
    return ROOT / "benchmarks" / "results" / f"{host}-{now:%Y%m%d-%H%M%S}.json"


def run_header(args: argparse.Namespace, now: dt.datetime) -> dict[str, Any]:
    """The report's description of the run: host, date, code revision, command, platform, options, load."""
    return {
        "host": socket.gethostname(),
        "date": now.isoformat(timespec="seconds"),
        "git_rev": git_rev(ROOT, short=True),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
    }
