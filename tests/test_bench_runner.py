"""benchmarks/run_all.py and its modules: per-child measurement (harness), the Markdown table (report), and a
real --quick ingest run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "run_all.py"
if str(PROJECT_ROOT) not in sys.path:  # benchmarks/ is a package of the project root, not installed
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks import harness, report  # noqa: E402


def test_measure_subprocess_reads_the_childs_own_peak_rss(tmp_path: Path) -> None:
    # wait4's figure never drops below the parent's RSS (Linux counts the image replaced at exec), and the
    # pytest process may hold torch and more by now: measure from a small parent process instead
    code = (
        f"import sys, json; from pathlib import Path; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
        "from benchmarks import harness; "
        "big = harness.measure_subprocess([sys.executable, '-c', "
        "'import time; b = bytearray(300 * 2**20); time.sleep(0.2)'], "
        f"Path({str(tmp_path)!r}) / 'big.log'); "
        f"small = harness.measure_subprocess([sys.executable, '-c', 'pass'], Path({str(tmp_path)!r}) / 's.log'); "
        "print(json.dumps([big.returncode, big.timed_out, big.peak_rss_mb, big.wall_s, small.peak_rss_mb]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, timed_out, big_rss, big_wall, small_rss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and not timed_out
    assert 300 <= big_rss < 300 + 200  # the buffer plus an interpreter
    assert big_wall >= 0.2
    # a second, small child gets its own figure, not the running maximum of RUSAGE_CHILDREN
    assert small_rss < 300


def test_own_peak_rss_ignores_the_pre_exec_image(tmp_path: Path) -> None:
    # the child reads its own peak; a 300 MiB buffer in the parent at spawn time must not show in it
    ballast = bytearray(300 * 2**20)
    code = (
        f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
        "from benchmarks import harness; "
        "b = bytearray(100 * 2**20); print(round(harness.own_peak_rss_mb()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own = float(proc.stdout.strip().splitlines()[-1])
    assert 100 <= own < 300  # the buffer plus an interpreter with pydantic, numpy and pyarrow
    # whereas wait4's figure for a child includes the parent's image it replaced at exec
    assert harness.measure_subprocess([sys.executable, "-c", "pass"], tmp_path / "p.log").peak_rss_mb > 300
    del ballast


def test_measure_subprocess_timeout_and_exit_status(tmp_path: Path) -> None:
    m = harness.measure_subprocess(
        [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "slow.log", timeout_s=0.5
    )
    assert m.timed_out and m.returncode == -9 and m.wall_s < 10
    failed = harness.measure_subprocess(
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "fail.log"
    )
    assert failed.returncode == 3
    assert harness._log_tail(tmp_path / "fail.log") == "boom"


def test_markdown_table() -> None:
    rows = [
        {
            "scenario": "demo",
            "stage": "train",
            "status": "ok",
            "wall_s": 12.34,
            "stage_s": 10.0,
            "peak_rss_mb": 2048.4,
            "cpu_s": 20.0,
            "throughput": 1234.5,
            "unit": "seq/s",
            "device": "cuda",
            "gpu": "H100",
            "gpu_peak_mb": 512.6,
        },
        {"scenario": "beauty", "stage": "(all)", "status": "skipped", "note": "skipped: no data"},
    ]
    assert report.markdown_table(rows) == (
        "| scenario | stage | status | wall s | stage s | peak RSS MiB | CPU s | throughput | device | GPU peak MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| demo | train | ok | 12.3 | 10.0 | 2,048 | 20.0 | 1,234 seq/s | cuda (H100) | 513 |\n"
        "| beauty | (all) | skipped |  |  |  |  |  |  |  |\n"
        "\n"
        "- beauty / (all): skipped: no data\n"
    )
    assert report._rate(9.5123, "items/s") == "9.51 items/s"
    assert report._rate(12.25, "items/s") == "12.2 items/s"


def test_quick_demo_ingest_writes_a_measured_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--scenarios", "demo", "--stages", "ingest"]
    cmd += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| demo | ingest | ok |" in proc.stdout

    report = json.loads(out.read_text())
    assert report["scenarios"]["demo"]["epochs"] == 1
    (row,) = report["rows"]
    assert (row["scenario"], row["stage"], row["status"]) == ("demo", "ingest", "ok")
    assert row["wall_s"] > 0 and row["stage_s"] > 0 and row["wall_s"] >= row["stage_s"]
    assert 50 < row["peak_rss_mb"] <= row["peak_rss_wait4_mb"]
    assert row["device"] == "cpu" and row["unit"] == "interactions/s"
    # the throughput counts the raw interactions the stage read, over the stage's own seconds
    stats = json.loads((tmp_path / "work" / "demo" / "data_stats.json").read_text())
    assert row["count"] == stats["raw"]["interactions"] > 0
    assert row["throughput"] == pytest.approx(row["count"] / row["stage_s"])
    assert stats["raw"]["users"] == 300  # --quick shrinks the demo data set
    assert (tmp_path / "work" / "demo" / "processed" / "sequences.parquet").exists()
    assert out.with_suffix(".md").read_text().count("| demo | ingest | ok |") == 1


def test_missing_upstream_output_is_a_failed_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--scenarios", "demo", "--stages", "embed"]
    cmd += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "failed" and "wall_s" not in row
    assert "items.parquet is missing" in row["note"] and "--stages ingest embed" in row["note"]
