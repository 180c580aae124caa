import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlm_core.cpu import (
    HOST_IDLE,
    HOST_STEAL,
    KERNEL_FLAGS,
    MODEL_CPUS_ENV,
    CpuPlacement,
    CpuSample,
    CpuTimeline,
    available_cpus,
    cores_over,
    cpu_seconds,
    describe_host,
    format_cpu_list,
    host_ticks,
    keep_freed_memory,
    keep_freed_memory_environment,
    lower_priority,
    lower_thread_priority,
    machine_cpus,
    model_cpus,
    parse_cpu_list,
    pin_thread,
    place_threads,
    restore_threads,
)


def test_lower_priority_reaches_every_thread_but_those_kept_and_new_ones_inherit() -> None:
    # In a child process, so the test run itself keeps its priority.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            start = os.getpriority(os.PRIO_PROCESS, 0)
            release = threading.Event()
            seen: dict[str, int] = {}
            ids: dict[str, int] = {}
            ready = threading.Barrier(3)

            def early(name: str) -> None:
                ids[name] = threading.get_native_id()
                ready.wait()
                release.wait()
                seen[name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

            threads = [threading.Thread(target=early, args=(name,)) for name in ("early", "kept")]
            for thread in threads:
                thread.start()
            ready.wait()
            changed = lower_priority(7, keep={ids["kept"]})
            release.set()
            for thread in threads:
                thread.join()
            late = threading.Thread(target=lambda: seen.update(late=os.getpriority(os.PRIO_PROCESS, 0)))
            late.start()
            late.join()
            again = lower_priority(7, keep={ids["kept"]})
            main = os.getpriority(os.PRIO_PROCESS, 0)
            figures = [changed, again, seen["early"], seen["late"], main, seen["kept"], start]
            os.write(write, " ".join(map(str, figures)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    changed, again, early_nice, late_nice, main_nice, kept_nice, start = map(int, os.read(read, 100).split())
    assert start < 7
    assert changed >= 2 and again == 0
    assert early_nice == late_nice == main_nice == 7
    assert kept_nice == start


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


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("1", {1}), ("0,2", {0, 2}), ("2-3,6", {2, 3, 6}), (" 4 - 5 ", {4, 5}), ("3,3", {3})],
)
def test_a_cpu_list_reads_as_linux_writes_it(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1,", "3-1", "-1", "1-", "1.5"])
def test_what_is_not_a_cpu_list_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="is not a CPU list"):
        parse_cpu_list(text)


@given(st.frozensets(st.integers(0, 200), min_size=1))
def test_the_short_form_of_a_cpu_set_reads_back_as_the_set(cpus: frozenset[int]) -> None:
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == cpus
    assert len(text) <= len(",".join(map(str, sorted(cpus))))


def test_reserving_model_cpus_leaves_the_rest_and_refuses_what_cannot_be() -> None:
    four = frozenset(range(4))
    assert CpuPlacement.reserve("3", four) == CpuPlacement(frozenset({3}), frozenset({0, 1, 2}))
    assert CpuPlacement.reserve("1-2", four).rest == {0, 3}
    with pytest.raises(ValueError, match="this machine has CPUs 0-3; give some of those"):
        CpuPlacement.reserve("2-5", four)
    with pytest.raises(ValueError, match="are all the CPUs there are: leave at least one"):
        CpuPlacement.reserve("0-3", four)
    assert model_cpus({MODEL_CPUS_ENV: "2-3"}) == {2, 3}
    assert model_cpus({MODEL_CPUS_ENV: " "}) is None and model_cpus({}) is None


needs_two_cpus = pytest.mark.skipif(len(available_cpus()) < 2, reason="placement needs two CPUs to choose from")


@needs_two_cpus
def test_a_pinned_thread_runs_on_its_cpus_alone_and_the_others_keep_theirs() -> None:
    everywhere = available_cpus()
    one = frozenset({max(everywhere)})
    seen: list[frozenset[int]] = []

    def worker() -> None:
        seen.append(pin_thread(one))
        seen.append(frozenset(os.sched_getaffinity(0)))
        seen.append(pin_thread(seen[0]))  # back: it returns what it replaced
        seen.append(frozenset(os.sched_getaffinity(0)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [everywhere, one, one, everywhere]
    assert os.sched_getaffinity(0) == everywhere


@needs_two_cpus
def test_placing_a_process_moves_every_thread_and_those_it_starts_and_restoring_moves_them_back() -> None:
    everywhere = available_cpus()
    rest = everywhere - {max(everywhere)}
    # A child with a second thread already running, that starts a third when told.
    code = (
        "import os, sys, threading, time\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))\n"
        "t.start(); t.join()\n"
        "print(seen[0], flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        previous = place_threads(child.pid, rest)
        threads = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(threads) >= 2 and sorted(previous) == sorted(threads)
        assert all(os.sched_getaffinity(t) == rest for t in threads)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == str(sorted(rest))  # a new thread inherits it
        restore_threads(previous)
        assert all(os.sched_getaffinity(t) == everywhere for t in threads)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_machines_cpus_are_the_cgroups_cpuset_else_those_online(tmp_path: Path) -> None:
    def machine(cgroup: str, texts: dict[str, str]) -> frozenset[int]:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        (root / "sys").mkdir(parents=True)
        (root / "cgroup").write_text(cgroup)
        for relative, text in texts.items():
            (root / "sys" / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / "sys" / relative).write_text(text + "\n")
        return machine_cpus(root / "cgroup", root / "sys")

    online = {"devices/system/cpu/online": "0-7"}
    v2 = {"fs/cgroup/pod/cpuset.cpus.effective": "2-5"}
    v1 = {"fs/cgroup/cpuset/pod/cpuset.effective_cpus": "6"}
    assert machine("0::/pod\n", {**v2, **online}) == {2, 3, 4, 5}
    assert machine("4:memory:/x\n3:cpuset,cpu:/pod\n", {**v1, **online}) == {6}
    assert machine("0::/pod\n", online) == set(range(8))  # no cpuset file: the CPUs online
    assert machine("not a cgroup line", {}) == available_cpus()  # nothing readable: this thread's


@needs_two_cpus
def test_a_thread_placed_on_one_cpu_still_sees_the_machines_cpus() -> None:
    seen: list[frozenset[int]] = []
    thread = threading.Thread(target=lambda: (pin_thread(frozenset({0})), seen.append(machine_cpus())))
    thread.start()
    thread.join()
    assert seen == [machine_cpus()] and len(seen[0]) >= 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux reports THP_enabled in /proc")
def test_no_huge_pages_keeps_a_large_array_out_of_huge_pages() -> None:
    """NumPy asks for huge pages for arrays of 4 MB or more; after ``no_huge_pages`` the
    kernel reports the process's huge pages off and maps none for such an array."""
    script = """
import numpy as np
from vlm_core.cpu import no_huge_pages
assert no_huge_pages()
batch = np.ones((16, 3, 224, 224), np.float32)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages:"))
print(status.get("THP_enabled", "").strip(), huge)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]


def test_the_hosts_idle_and_stolen_ticks_are_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 1 5 700 30 0 2 9 0 0\ncpu0 5 0 2 350 15 0 1 4 0 0\n")
    assert host_ticks(stat) == (730, 9)  # idle + iowait, steal
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="cpu line"):
        host_ticks(stat)
    idle, steal = host_ticks()  # this machine's
    assert idle > 0 and steal >= 0


def test_a_cpu_timeline_accounts_for_the_cpu_its_processes_used_interval_by_interval() -> None:
    timeline = CpuTimeline({"this process": [os.getpid()]}, interval_s=0.05)
    before = cpu_seconds(os.getpid())
    timeline.start()
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # busy for a while, then idle
        sum(range(1000))
    time.sleep(0.3)
    samples = timeline.stop()
    used = cpu_seconds(os.getpid())
    assert before is not None and used is not None
    assert len(samples) >= 10 and all(s.seconds > 0 for s in samples)
    assert [s.at_ms for s in samples] == sorted(s.at_ms for s in samples)
    assert {HOST_IDLE, HOST_STEAL, "this process"} <= set(samples[0].cores)
    # Each sample's cores times its length add up to the CPU the process used, within a
    # clock tick or two a reading, and the busy loop shows as the first half's.
    accounted = sum(s.cores["this process"] * s.seconds for s in samples)
    assert accounted == pytest.approx(used - before, abs=0.05)
    assert sum(s.cores["this process"] * s.seconds for s in samples[: len(samples) // 2]) > accounted / 2
    with pytest.raises(ValueError, match="interval_s"):
        CpuTimeline({}, interval_s=0)


def test_a_process_that_ends_during_a_cpu_timeline_counts_while_it_ran_and_never_below_zero() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 0.4\nwhile time.time() < end: pass"]
    )
    timeline = CpuTimeline({"child": [child.pid]}, interval_s=0.05)
    timeline.start()
    child.wait()
    time.sleep(0.3)
    samples = timeline.stop()
    assert all(s.cores["child"] >= 0 for s in samples)
    assert max(s.cores["child"] for s in samples) > 0.3 and samples[-1].cores["child"] == 0


def test_cores_over_windows_weigh_the_samples_they_overlap_by_length() -> None:
    samples = [
        CpuSample(at_ms=1_100, seconds=0.1, cores={"processor": 1.0, HOST_STEAL: 0.0}),
        CpuSample(at_ms=1_200, seconds=0.1, cores={"processor": 0.2, HOST_STEAL: 0.5}),
        CpuSample(at_ms=1_500, seconds=0.3, cores={"processor": 0.6, HOST_STEAL: 0.1}),
    ]
    assert cores_over(samples, [(1_000, 1_600)]) == {"processor": 0.6, HOST_STEAL: 0.16}
    # A window inside the second sample, and one across the second and third: each counted once.
    assert cores_over(samples, [(1_120, 1_150), (1_190, 1_250)]) == {"processor": 0.5, HOST_STEAL: 0.2}
    assert cores_over(samples, [(1_120, 1_150)]) == {"processor": 0.2, HOST_STEAL: 0.5}
    assert cores_over(samples, [(2_000, 3_000)]) == {}
