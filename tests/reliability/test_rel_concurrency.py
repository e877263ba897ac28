"""Concurrency (issue 23): one run at a time per output folder. A second stage run or suite into a folder
another live process is writing stops at once, naming the folder and the holder's pid, and touches nothing;
start-up clean-up deletes only the staging folders of runs that are gone (before, a second ingest started
0.8 s after the first deleted the first one's staging folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT, Params
from pipeline.errors import OutputLocked
from pipeline.experiments.suite import run_suite
from pipeline.io import output_lock, staged_dir
from pipeline.layout import Layout
from pipeline.runner import run_stage
from stages._common import main

# a second process that stages `target` (holding its lock), writes a file into its staging folder, prints the
# staging folder and waits for a line on stdin before it finishes (or is killed)
_STAGER = """
import sys
from pathlib import Path
from pipeline.io import staged_dir
with staged_dir(Path(sys.argv[1])) as tmp:
    (tmp / "child.txt").write_text("child")
    print(tmp, flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def stager():
    """Start the staging process on a target; yields a function ``start(target) -> (process, staging)``."""
    procs: list[subprocess.Popen] = []

    def start(target: Path) -> tuple[subprocess.Popen, Path]:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", _STAGER, str(target)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline().strip()
        assert line, "the staging process did not start"
        return proc, Path(line)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _finish(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_a_second_run_into_a_held_folder_stops_naming_it_and_the_pid(tmp_path: Path, stager) -> None:
    target = tmp_path / "processed"
    proc, staging = stager(target)
    with pytest.raises(OutputLocked) as err, staged_dir(target, clear_stale=True):
        raise AssertionError("entered a folder another process holds")
    msg = str(err.value)
    assert msg.startswith(f"another run holds {target} (pid {proc.pid}: ")
    assert "wait for it to finish, or write elsewhere" in msg
    assert (staging / "child.txt").read_text() == "child"  # the live staging folder survived start-up
    _finish(proc)
    assert (target / "child.txt").read_text() == "child"  # and the first run finished normally
    assert not staging.exists()
    with staged_dir(target) as tmp:  # released when the holder finished
        (tmp / "second.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["second.txt"]


def test_a_dead_runs_staging_folder_is_cleaned(tmp_path: Path, stager) -> None:
    target = tmp_path / "processed"
    proc, staging = stager(target)
    proc.send_signal(signal.SIGKILL)  # killed mid-run: its staging folder stays, its lock dies with it
    proc.wait(timeout=30)
    assert staging.is_dir()
    with staged_dir(target, clear_stale=True) as tmp:
        assert not staging.exists()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nor its lock file


def test_a_stage_run_into_a_held_output_stops_before_touching_anything(
    tmp_path: Path, tiny_params: Params, stager, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    layout = Layout.flat(tmp_path / "data")
    proc, _ = stager(layout.processed)
    monkeypatch.chdir(tmp_path)  # main() changes to the project root; this puts the test's folder back after
    with pytest.raises(SystemExit) as info:
        main(lambda: run_stage("ingest", tiny_params, layout))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: another run holds {layout.processed} (pid {proc.pid}: -c {layout.processed}); "
        "wait for it to finish, or write elsewhere\n"
    )
    assert not layout.data_stats.exists()  # the other outputs of the stage were not touched either
    _finish(proc)


def test_a_second_suite_into_a_held_folder_stops_before_reading_or_writing(
    tmp_path: Path, tiny_params: Params, stager
) -> None:
    out = tmp_path / "suite"
    proc, _ = stager(out)
    with pytest.raises(OutputLocked, match=rf"another run holds {out} \(pid {proc.pid}: "):
        run_suite(tiny_params, out, variants=["sasrec_id"], seeds=1, progress=False)
    _finish(proc)
    assert [p.name for p in out.iterdir()] == ["child.txt"]  # no suite.json, no data/: nothing was written


def test_nested_holds_in_one_process_are_free_and_released_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "models"
    with output_lock(target), output_lock(target), staged_dir(target) as tmp:
        (tmp / "w").write_text("w")
    assert (target / "w").read_text() == "w"
    with output_lock(target):  # released: taken again at once
        pass
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the lock file is removed
