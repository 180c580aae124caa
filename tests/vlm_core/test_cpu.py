import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vlm_core.cpu import (
    KERNEL_FLAGS,
    describe_host,
    keep_freed_memory,
    keep_freed_memory_environment,
    lower_priority,
    lower_thread_priority,
)


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


def test_keeping_memory_takes_a_size_of_zero_or_more() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        keep_freed_memory(-1)


_REPEATED_BATCHES = """
import resource
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vlm_core.cpu import keep_freed_memory

def one_pass():
    blocks = [np.ones(n << 20, np.uint8) for n in (3, 9, 5)]
    del blocks

def passes():
    one_pass()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(19):
        one_pass()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

if "keep" in sys.argv:
    assert keep_freed_memory()
print(ThreadPoolExecutor(1).submit(passes).result() if "thread" in sys.argv else passes())
"""


def _page_faults_of_repeated_batches(*args: str, env: dict[str, str] | None = None) -> int:
    """Minor page faults of 19 passes that allocate and free a forward pass's worth of
    blocks (3, 9 and 5 MB), after one pass, in a fresh process: this one's allocator may
    have been changed by the tests before."""
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    command = [sys.executable, "-c", _REPEATED_BATCHES, *args]
    return int(subprocess.run(command, env={**plain, **(env or {})}, capture_output=True, text=True, check=True).stdout)


def test_memory_kept_for_the_next_batch_is_not_faulted_in_again() -> None:
    kept, default = _page_faults_of_repeated_batches("keep"), _page_faults_of_repeated_batches()
    assert kept < 100 < default, (kept, default)  # the C library's defaults fault these blocks in again


def test_a_process_started_with_the_environment_keeps_memory_in_every_thread() -> None:
    # A model replica runs its forward pass on a thread of its own.
    kept = _page_faults_of_repeated_batches("thread", env=keep_freed_memory_environment())
    default = _page_faults_of_repeated_batches("thread")
    assert kept < 100 < default, (kept, default)


def test_the_environment_leaves_a_users_own_tunables_the_last_word() -> None:
    env = keep_freed_memory_environment(2**20, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert env["GLIBC_TUNABLES"].split(":") == [
        "glibc.malloc.arena_max=1",
        "glibc.malloc.trim_threshold=1048576",
        "glibc.malloc.mmap_threshold=33554432",
        "glibc.malloc.arena_max=4",
    ]
    assert keep_freed_memory_environment(environ={})["GLIBC_TUNABLES"].startswith("glibc.malloc.arena_max=1:")


def test_lower_thread_priority_changes_the_calling_thread_alone() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            seen: list[int] = []

            def worker() -> None:
                seen.append(int(lower_thread_priority(9)))
                seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
                seen.append(int(lower_thread_priority(9)))  # already there

            thread = threading.Thread(target=worker)
            thread.start()
            thread.join()
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            os.write(write, ",".join(map(str, seen)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    changed, niceness, again, main = map(int, os.read(read, 64).decode().split(","))
    assert (changed, niceness, again) == (1, 9, 0)
    assert main == os.getpriority(os.PRIO_PROCESS, 0)  # the thread that forked is as it was
    with pytest.raises(ValueError, match="between 0 and 19"):
        lower_thread_priority(20)
