import threading
import time

import pytest

from vlm_core.stream.profile import StageProfile, StageTotals, per_frame_ms


def test_a_wait_costs_wall_time_and_a_busy_loop_costs_cpu_time() -> None:
    profile = StageProfile()
    with profile.measure("wait"):
        time.sleep(0.05)
    with profile.measure("spin"):
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
    stages = profile.snapshot()
    assert stages["wait"].wall_s >= 0.05 > stages["wait"].cpu_s * 5
    assert stages["spin"].cpu_s >= 0.05


def test_threads_add_to_one_profile_without_losing_calls() -> None:
    profile = StageProfile()

    def work() -> None:
        for _ in range(1000):
            profile.add("stage", 0.001, 0.0005)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = profile.snapshot()["stage"]
    assert totals.calls == 4000
    assert totals.wall_s == pytest.approx(4.0)
    assert totals.cpu_s == pytest.approx(2.0)


def test_per_frame_milliseconds_are_the_difference_between_snapshots() -> None:
    before = {"decode": StageTotals(10, 1.0, 0.5)}
    after = {"decode": StageTotals(20, 3.0, 1.5), "poll": StageTotals(4, 0.2, 0.1)}
    assert per_frame_ms(before, after, 100) == {
        "decode": {"wall": 20.0, "cpu": 10.0},
        "poll": {"wall": 2.0, "cpu": 1.0},
    }
    with pytest.raises(ValueError, match="frames must be positive"):
        per_frame_ms(before, after, 0)
