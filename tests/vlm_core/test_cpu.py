import os
import threading
from pathlib import Path

import pytest

from vlm_core.cpu import KERNEL_FLAGS, describe_host, lower_priority


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


def test_the_host_is_read_from_the_first_processor_of_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    first = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
    flags = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 sha_ni\n"
    cpuinfo.write_text(f"{first}model name\t: AMD EPYC\n{flags}\nprocessor\t: 1\nmodel name\t: other\n")
    host = describe_host(cpuinfo)
    assert (host.cpu, host.family_model) == ("AMD EPYC", "25/17")
    assert host.flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")  # in KERNEL_FLAGS' order
    assert host.cpus == len(os.sched_getaffinity(0))
    assert host.to_json()["flags"] == list(host.flags)


def test_a_host_without_cpuinfo_is_still_described(tmp_path: Path) -> None:
    host = describe_host(tmp_path / "missing")
    assert host.cpu and host.family_model == "" and host.flags == () and host.cpus >= 1
    assert set(describe_host().flags) <= set(KERNEL_FLAGS)
