"""CPU threads: as many as the cores this process may actually run on, decided before torch starts.

torch sizes its OpenMP pool from the machine's cores, not from what the process is allowed: in a container
limited to 2 CPUs on a 64-core host it starts 64 threads, and each one spin-waits at every barrier for a
core it does not get. :func:`configure_threads` sets ``OMP_NUM_THREADS`` to :func:`cpu_budget` (the CPU
affinity mask, capped by a cgroup CPU quota) unless the user set it, and must run before ``import torch``
(OpenMP reads its environment once, when the library loads): the stage entry points call it from
``stages/__init__.py``. This module imports nothing heavy for that reason.

Cores busy with other processes when a stage starts are left to them: OpenMP threads spin-wait at every
barrier, so two threads on two cores that another job also uses run several times slower than one thread
(the demo's training step on 2 cores beside one other single-threaded job: 3.0 s per epoch with 2 threads,
1.0 s with 1; alone 0.7 s and 1.0 s; docs/RESULTS.md). :func:`busy_cpus` samples ``/proc/stat`` for 0.1 s
to see them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.1

#: what :func:`configure_threads` decided, for the stage log: (threads, cores, busy cores, set by the user)
decision: tuple[int, int, float, bool] | None = None


def cgroup_cpu_quota(
    v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """CPUs' worth of time the process's cgroup may use per period (e.g. 2.0 for ``docker --cpus 2``);
    None when there is no quota or it cannot be read."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q, p = int(v1_quota.read_text()), int(v1_period.read_text())
        return None if q <= 0 or p <= 0 else q / p
    except (OSError, ValueError):
        return None


def cpu_budget() -> int:
    """Cores this process may run on: its CPU affinity mask (``taskset``, cpusets), capped by a cgroup quota
    rounded up (a 1.5-CPU quota still lets two threads make progress); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cpu_times(text: str, cpus: set[int] | None) -> dict[int, tuple[int, int]]:
    """Per CPU of ``/proc/stat`` text: (busy, total) jiffies; only ``cpus`` when given."""
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpus is not None and cpu not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        out[cpu] = (sum(values) - idle, sum(values))
    return out


def busy_between(before: str, after: str, cpus: set[int] | None = None) -> float:
    """Cores' worth of busy time between two ``/proc/stat`` snapshots (1.0: one core fully busy)."""
    a, b = _cpu_times(before, cpus), _cpu_times(after, cpus)
    busy = 0.0
    for cpu, (busy1, total1) in b.items():
        busy0, total0 = a.get(cpu, (busy1, total1))
        if total1 > total0:
            busy += (busy1 - busy0) / (total1 - total0)
    return busy


def busy_cpus(sample_s: float = SAMPLE_S) -> float:
    """Cores' worth of CPU time other processes use now, sampled over ``sample_s`` seconds while this process
    sleeps; 0.0 where ``/proc/stat`` cannot be read."""
    try:
        cpus: set[int] | None = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        cpus = None
    try:
        before = PROC_STAT.read_text()
        time.sleep(sample_s)
        after = PROC_STAT.read_text()
    except OSError:
        return 0.0
    return busy_between(before, after, cpus)


def configure_threads(environ: MutableMapping[str, str] = os.environ, sample_s: float = SAMPLE_S) -> int:
    """Set ``OMP_NUM_THREADS`` unless already set: :func:`cpu_budget` less the cores other processes keep busy
    (:func:`busy_cpus`, rounded), at least 1. Returns the thread count in force.

    Call before torch is imported. A user's ``OMP_NUM_THREADS`` always wins (e.g. ``OMP_NUM_THREADS=1`` for
    each of two jobs sharing two cores).
    """
    global decision
    cores = cpu_budget()
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        n = int(environ["OMP_NUM_THREADS"])
        decision = (n, cores, 0.0, True)
        return n
    busy = busy_cpus(sample_s) if cores > 1 and sample_s > 0 else 0.0
    n = max(1, cores - int(busy + 0.5))
    environ["OMP_NUM_THREADS"] = str(n)
    decision = (n, cores, busy, False)
    return n


def describe() -> str:
    """One line for the log: the thread count and why."""
    if decision is None:
        return "CPU threads: torch's default"
    n, cores, busy, user = decision
    if user:
        return f"CPU threads: {n} (OMP_NUM_THREADS set by the user; {cores} cores available)"
    return f"CPU threads: {n} of the {cores} cores this process may use ({busy:.1f} busy with other work at start)"
