"""How many CPU threads a graft process may use by default.

One rule for training and serving: `OMP_NUM_THREADS` when it is set (the standard way to cap a process's threads,
and how test runners, job schedulers and `torchrun` share one machine's cores between processes), else the CPUs
this process may run on (its affinity mask: `taskset`, container cpusets), else `os.cpu_count()`. Oversubscribed
cores cost far more than idle ones: OpenMP threads spin while their partner waits to be scheduled.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The default thread count for this process (at least 1); see the module docstring."""
    told = os.environ.get("OMP_NUM_THREADS", "").strip()
    if told.isdigit() and int(told) > 0:
        return int(told)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
