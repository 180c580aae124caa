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


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a live process has used (``/proc/<pid>/stat``), or
    None when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    except (OSError, IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU milliseconds per frame of named groups of processes between ``start`` and
    ``stop``: each group's summed CPU time difference over the frames in between. A
    process gone at either end counts for what it used while both readings exist."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: sorted(set(pids)) for name, pids in groups.items()}
        self._start: dict[int, float] = {}

    def start(self) -> None:
        self._start = {pid: s for pids in self.groups.values() for pid in pids if (s := cpu_seconds(pid)) is not None}

    def stop(self, frames: int) -> dict[str, float]:
        if frames <= 0:
            raise ValueError("frames must be positive")
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                end = cpu_seconds(pid)
                if end is not None and pid in self._start:
                    total += end - self._start[pid]
            used[name] = round(1000 * total / frames, 3)
        return used
