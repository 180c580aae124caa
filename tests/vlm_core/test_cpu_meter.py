"""Per-process CPU accounting read from /proc (this process burns a known amount)."""

from __future__ import annotations

import os
import time

import pytest

from vlm_core.cpu import CpuMeter, cpu_seconds


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_seconds_of_this_process_grows_with_work() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    burn(0.3)
    after = cpu_seconds(os.getpid())
    assert after is not None and after - before >= 0.25


def test_a_missing_process_reads_none() -> None:
    assert cpu_seconds(2**22 + 12345) is None


def test_meter_divides_each_groups_cpu_by_the_frames() -> None:
    meter = CpuMeter({"me": [os.getpid()], "gone": [2**22 + 12345]})
    meter.start()
    burn(0.4)
    per_frame = meter.stop(frames=100)
    assert 3.5 <= per_frame["me"] <= 6.0  # ~400 ms over 100 frames, plus the interpreter
    assert per_frame["gone"] == 0.0
    with pytest.raises(ValueError):
        meter.stop(frames=0)
