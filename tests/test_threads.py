"""CPU thread budget: the cores a process may run on, set before torch loads (pipeline.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import threads
from pipeline.config import PROJECT_ROOT


def test_cgroup_quota_v2_v1_and_none(tmp_path: Path) -> None:
    v2, q, p = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    v2.write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(v2, q, p) == 1.5
    v2.write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(v2, q, p) is None
    v2.unlink()
    q.write_text("200000\n")
    p.write_text("100000\n")
    assert threads.cgroup_cpu_quota(v2, q, p) == 2.0
    q.write_text("-1\n")  # v1: no quota
    assert threads.cgroup_cpu_quota(v2, q, p) is None
    q.unlink()
    assert threads.cgroup_cpu_quota(v2, q, p) is None


def test_budget_is_the_affinity_mask_capped_by_the_quota_rounded_up(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 2.0)
    assert threads.cpu_budget() == 2  # docker --cpus 2 on a 64-core host
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.5)
    assert threads.cpu_budget() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.2)
    assert threads.cpu_budget() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.cpu_budget() == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3}, raising=False)  # taskset -c 3
    assert threads.cpu_budget() == 1


def test_a_users_omp_num_threads_wins(monkeypatch) -> None:
    monkeypatch.setattr(threads, "cpu_budget", lambda: 8)
    monkeypatch.setattr(threads, "busy_cpus", lambda sample_s: 0.0)
    env = {"OMP_NUM_THREADS": "1"}
    assert threads.configure_threads(env) == 1 and env["OMP_NUM_THREADS"] == "1"
    assert "set by the user" in threads.describe()
    env = {}
    assert threads.configure_threads(env) == 8 and env["OMP_NUM_THREADS"] == "8"
    env = {"OMP_NUM_THREADS": "lots"}  # not a count: replaced
    assert threads.configure_threads(env) == 8 and env["OMP_NUM_THREADS"] == "8"


STAT_0 = """cpu  300 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345
"""
# 100 jiffies later: cpu0 busy 90 of them (another job), cpu1 busy 10 (noise)
STAT_1 = """cpu  400 0 100 1100 0 0 0 0 0 0
cpu0 190 0 50 510 0 0 0 0 0 0
cpu1 210 0 50 590 0 0 0 0 0 0
intr 12399
"""


def test_busy_cores_from_two_proc_stat_snapshots() -> None:
    assert threads.busy_between(STAT_0, STAT_1) == pytest.approx(1.0)  # 0.9 + 0.1
    assert threads.busy_between(STAT_0, STAT_1, cpus={1}) == pytest.approx(0.1)  # outside the mask: ignored
    assert threads.busy_between(STAT_0, STAT_0) == 0.0


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 2), (0.4, 2), (0.9, 1), (1.6, 1), (3.0, 1)])
def test_cores_busy_with_other_work_are_left_to_it(monkeypatch, busy: float, expected: int) -> None:
    monkeypatch.setattr(threads, "cpu_budget", lambda: 2)
    monkeypatch.setattr(threads, "busy_cpus", lambda sample_s: busy)
    env: dict[str, str] = {}
    assert threads.configure_threads(env) == expected and env["OMP_NUM_THREADS"] == str(expected)
    assert f"{expected} of the 2 cores" in threads.describe()


def test_the_stages_package_sets_the_budget_before_torch_is_imported() -> None:
    # OpenMP reads OMP_NUM_THREADS once, when torch loads: `python -m stages.<x>` imports `stages` first, and
    # that must set it without importing torch itself
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import os, sys; import stages; print('torch' in sys.modules, os.environ['OMP_NUM_THREADS'])"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True
    )
    imported, n = proc.stdout.split()
    assert imported == "False" and 1 <= int(n) <= threads.cpu_budget()
