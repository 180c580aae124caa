import os
import signal
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
    # Asleep is not waiting for a core.
    assert stages["wait"].run_queue_s < 0.025


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="the OS reports no run-queue wait")
def test_a_stage_sharing_its_core_with_a_busy_process_counts_run_queue_wait() -> None:
    # In a child pinned to one CPU beside a spinning grandchild, so the test run itself
    # keeps its cores. (Two threads of one process would take turns at the GIL, asleep.)
    with StageProfile().measure("before the fork"):  # this thread's file, which the child must not read
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            spinner = os.fork()
            if spinner == 0:
                while True:
                    pass
            profile = StageProfile()
            with profile.measure("spin"):
                end = time.thread_time() + 0.2
                while time.thread_time() < end:
                    pass
            os.kill(spinner, signal.SIGKILL)
            os.waitpid(spinner, 0)
            totals = profile.snapshot()["spin"]
            os.write(write, f"{totals.wall_s} {totals.cpu_s} {totals.run_queue_s}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    wall_s, cpu_s, run_queue_s = map(float, os.read(read, 200).split())
    # While the stage ran its 0.2 s, the spinner had the core about as long: that time was
    # run-queue wait, not the stage's own waiting.
    assert cpu_s >= 0.2
    assert run_queue_s >= 0.1
    assert run_queue_s >= 0.8 * (wall_s - cpu_s)


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
    before = {"decode": StageTotals(10, 1.0, 0.5, 0.1)}
    after = {"decode": StageTotals(20, 3.0, 1.5, 0.3), "poll": StageTotals(4, 0.2, 0.1)}
    assert per_frame_ms(before, after, 100) == {
        "decode": {"wall": 20.0, "cpu": 10.0, "run_queue": 2.0},
        "poll": {"wall": 2.0, "cpu": 1.0, "run_queue": 0.0},
    }
    with pytest.raises(ValueError, match="frames must be positive"):
        per_frame_ms(before, after, 0)
