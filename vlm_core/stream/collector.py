"""The garbage collector's pauses in a long-running stage, counted.

CPython's cycle collector runs on whichever thread allocates past a threshold and holds
the interpreter lock while it runs, so a collection stops every Python thread of the
process. A full (oldest-generation) collection visits every tracked object: a process that
holds Ray, Kafka, torch and a model tracks some 470 thousand, and one full collection of
them took 279 ms on this project's 2-core test machine, long enough to be a stream's
slowest 1 % on its own. :func:`watch_collections` adds every collection's pause to a
:class:`~vlm_core.stream.profile.StageProfile` as two stages, ``gc`` (young generations)
and ``gc full``, so the bench's stage tables show whether the collector is where a
stream's time goes (in the bench's paced streams it was not: docs/performance-notes.md,
"Transparent huge pages, the garbage collector, and why batches are sent").
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from vlm_core.stream.profile import StageProfile, StageTotals

#: The stage names a watched profile gets, for young and for full collections.
YOUNG_STAGE = "gc"
FULL_STAGE = "gc full"
_OLDEST = 2

_watch_lock = threading.Lock()
_watched: _CollectionWatch | None = None


class _CollectionWatch:
    """A ``gc.callbacks`` entry that totals each generation's pauses. It keeps its own
    totals and takes no lock: a collection runs in whichever thread allocates, which may
    hold any lock of the process (a profile's own, mid-snapshot), so the profile reads
    these totals (``StageProfile.include``) rather than being written to. Collections
    do not nest, so one pair of start clocks serves."""

    def __init__(self, profile: StageProfile) -> None:
        self.profile = profile
        self._wall = self._cpu = 0.0
        self._totals: dict[str, list[float]] = {YOUNG_STAGE: [0, 0.0, 0.0], FULL_STAGE: [0, 0.0, 0.0]}
        profile.include(self.totals)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._wall, self._cpu = time.perf_counter(), time.thread_time()
            return
        totals = self._totals[FULL_STAGE if info.get("generation") == _OLDEST else YOUNG_STAGE]
        totals[0] += 1
        totals[1] += time.perf_counter() - self._wall
        totals[2] += time.thread_time() - self._cpu

    def totals(self) -> dict[str, StageTotals]:
        return {stage: StageTotals(int(c), w, p) for stage, (c, w, p) in list(self._totals.items()) if c}


def watch_collections(profile: StageProfile) -> bool:
    """Count this process's collections in ``profile``. One profile a process: the
    collector is the process's, and counting its pauses twice would double them in a
    bench's totals (a processor that holds its models has two profiles). Returns whether
    ``profile`` is the one watched now."""
    global _watched
    with _watch_lock:
        if _watched is None:
            _watched = _CollectionWatch(profile)
            gc.callbacks.append(_watched)
        return _watched.profile is profile
