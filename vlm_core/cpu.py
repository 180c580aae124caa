"""CPU priority for the parts of a pipeline that are not its bottleneck.

On a host where the model replicas and the Kafka plumbing share few cores, the model is
the stage that sets throughput. Running the plumbing (stream processor, local broker,
measuring clients) at a higher niceness lets the scheduler give the model its core
whenever both are runnable, while the plumbing still gets every idle cycle.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

MAX_NICENESS = 19


def lower_priority(niceness: int) -> int:
    """Raise every thread of this process to at least ``niceness``; returns threads changed.

    Linux keeps a niceness per thread, so each existing thread is changed; threads started
    afterwards inherit the value of the thread that starts them. Raising niceness needs no
    privileges. 0 leaves everything as it is.
    """
    if not 0 <= niceness <= MAX_NICENESS:
        raise ValueError(f"niceness must be between 0 and {MAX_NICENESS}, got {niceness}")
    if niceness == 0:
        return 0
    task_dir = Path("/proc/self/task")
    thread_ids = [int(p.name) for p in task_dir.iterdir()] if task_dir.is_dir() else [0]
    changed = 0
    for tid in thread_ids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
    return changed
