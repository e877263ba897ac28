"""CPU threads: as many as the cores this process may actually run on, decided before torch starts.

torch sizes its OpenMP pool from the machine's cores, not from what the process is allowed: in a container
limited to 2 CPUs on a 64-core host it starts 64 threads, and each one spin-waits at every barrier for a
core it does not get. :func:`configure_threads` sets ``OMP_NUM_THREADS`` to :func:`cpu_budget` (the CPU
affinity mask, capped by a cgroup CPU quota) unless the user set it, and must run before ``import torch``
(OpenMP reads its environment once, when the library loads): the stage entry points call it from
``stages/__init__.py``. This module imports nothing heavy for that reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


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


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """Set ``OMP_NUM_THREADS`` to :func:`cpu_budget` unless already set; returns the thread count in force.

    Call before torch is imported. A user's ``OMP_NUM_THREADS`` always wins (e.g. ``OMP_NUM_THREADS=1`` for
    each of two jobs sharing two cores).
    """
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    n = cpu_budget()
    environ["OMP_NUM_THREADS"] = str(n)
    return n
