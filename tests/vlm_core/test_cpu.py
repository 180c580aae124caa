import os
import threading

import pytest

from vlm_core.cpu import lower_priority


def test_lower_priority_reaches_every_thread_and_new_ones_inherit() -> None:
    # In a child process, so the test run itself keeps its priority.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ready = threading.Event()
            release = threading.Event()
            seen: list[int] = []

            def early() -> None:
                ready.set()
                release.wait()
                seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

            thread = threading.Thread(target=early)
            thread.start()
            ready.wait()
            changed = lower_priority(7)
            release.set()
            thread.join()
            late = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
            late.start()
            late.join()
            again = lower_priority(7)
            os.write(write, f"{changed} {again} {seen[0]} {seen[1]} {os.getpriority(os.PRIO_PROCESS, 0)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    changed, again, early_nice, late_nice, main_nice = map(int, os.read(read, 100).split())
    assert changed >= 2 and again == 0
    assert early_nice == late_nice == main_nice == 7


def test_lower_priority_rejects_out_of_range_and_zero_is_a_no_op() -> None:
    with pytest.raises(ValueError, match="between 0 and 19"):
        lower_priority(20)
    assert lower_priority(0) == 0
