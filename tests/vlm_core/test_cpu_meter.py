"""Per-process CPU accounting read from /proc (this process burns a known amount)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vlm_core.cpu import CpuMeter, ThreadMeter, cpu_seconds, name_thread, thread_seconds


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


def test_thread_meter_names_the_thread_that_worked() -> None:
    import threading

    ready, go, burned, read = (threading.Event() for _ in range(4))

    def worker_burns() -> None:
        name_thread("burner")
        ready.set()
        go.wait(30)  # burns only between the two readings
        end = time.thread_time() + 0.4  # its own CPU: the test process may run other threads
        while time.thread_time() < end:
            pass
        burned.set()
        read.wait(30)  # alive for both readings: a thread that ended counts for nothing

    groups = {"me": [os.getpid()], "gone": [2**22 + 12345]}
    every, busiest = ThreadMeter(groups, top=10_000), ThreadMeter(groups, top=1)
    worker = threading.Thread(target=worker_burns)
    worker.start()
    ready.wait(30)
    every.start()
    busiest.start()
    go.set()
    burned.wait(30)
    per_frame, folded = every.stop(frames=100), busiest.stop(frames=100)
    read.set()
    worker.join()
    assert 3.5 <= per_frame["me / burner"] <= 6.0, per_frame  # ~400 ms over 100 frames
    assert all(key.startswith("me / ") for key in per_frame) and ThreadMeter.OTHERS not in str(per_frame)
    assert len(folded) == min(2, len(per_frame)) and all(key.startswith("me / ") for key in folded)
    if len(per_frame) > 1:
        assert f"me / {ThreadMeter.OTHERS}" in folded
    assert thread_seconds(2**22 + 12345) == {}
    mine = thread_seconds(os.getpid())
    assert threading.get_native_id() in mine and all(seconds >= 0 for _name, seconds in mine.values())
    with pytest.raises(ValueError):
        every.stop(frames=0)
    with pytest.raises(ValueError):
        ThreadMeter({}, top=0)


def test_thread_meter_counts_all_of_a_thread_started_between_the_readings() -> None:
    import threading

    burned, read = threading.Event(), threading.Event()

    def late_burner() -> None:
        name_thread("late-burner")
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        burned.set()
        read.wait(30)

    meter = ThreadMeter({"me": [os.getpid()]}, top=10_000)
    meter.start()
    worker = threading.Thread(target=late_burner)
    worker.start()
    burned.wait(30)
    per_frame = meter.stop(frames=100)
    read.set()
    worker.join()
    assert 2.5 <= per_frame["me / late-burner"] <= 4.5, per_frame  # ~300 ms over 100 frames


def test_a_thread_takes_its_python_name_for_the_kernel_cut_to_15_bytes() -> None:
    import threading

    names: dict[str, str] = {}

    def named() -> None:
        assert name_thread()
        names["own"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        assert name_thread("infer")
        names["given"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    worker = threading.Thread(target=named, name="stream-processor-of-a-long-name")
    worker.start()
    worker.join()
    assert names == {"own": "stream-processor"[:15], "given": "infer"}
