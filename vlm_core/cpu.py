"""CPU priority and placement for the parts of a pipeline, CPU time per process, the
allocator of a process that runs a model, and the host a figure was measured on.

On a host where the model replicas and the Kafka plumbing share few cores, the model is
the stage that sets throughput. Running the plumbing (stream processor, local broker,
measuring clients) at a higher niceness lets the scheduler give the model its core
whenever both are runnable, while the plumbing still gets every idle cycle.

Placement goes further: a node may reserve CPUs for the model forward passes
(:data:`MODEL_CPUS_ENV`, ``vlm local up --model-cpus``). The forward threads then run
on those CPUs alone and everything else the node starts runs on the others, so a
forward pass never waits for a core behind the plumbing, at the price of the plumbing
never using the model's CPUs when the model is idle (on 2 CPUs that price was the higher:
docs/performance-notes.md, "The forward pass on a CPU of its own").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

MAX_NICENESS = 19
#: What a CPU reading is keyed by: a process id, or a (process id, thread id) pair.
_Key = TypeVar("_Key", int, tuple[int, int])

#: The variable that tells a node's processes which CPUs the model forward passes own, as a
#: Linux CPU list ("1", "2-3,6"). ``vlm local up --model-cpus`` sets it for Ray's processes.
MODEL_CPUS_ENV = "VLM_MODEL_CPUS"


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a Linux CPU list: ``"1"``, ``"0,2"``, ``"2-3,6"``. ValueError names what
    is wrong with it."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"{text!r} is not a CPU list: give CPU numbers and ranges, e.g. 1 or 2-3,6") from None
        if first < 0 or last < first:
            raise ValueError(f"{text!r} is not a CPU list: {part!r} is not a CPU number or a rising range")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The short Linux CPU list of ``cpus``: ``{2, 3, 6}`` is ``"2-3,6"``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def available_cpus() -> frozenset[int]:
    """The CPUs the calling thread may run on now (all of them where the OS cannot say)."""
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    return frozenset(sched_getaffinity(0)) if sched_getaffinity else frozenset(range(os.cpu_count() or 1))


def machine_cpus(proc_cgroup: Path = Path("/proc/self/cgroup"), sys_fs: Path = Path("/sys")) -> frozenset[int]:
    """The CPUs processes here may be placed on: their cgroup's cpuset (v2 or v1), else the
    CPUs online, else :func:`available_cpus`. Not the affinity of this process, which a
    placement itself narrows."""
    candidates: list[Path] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _hierarchy, controllers, path = line.split(":", 2)
            if controllers == "":
                candidates.append(sys_fs / f"fs/cgroup{path.rstrip('/')}/cpuset.cpus.effective")
            elif "cpuset" in controllers.split(","):
                candidates.append(sys_fs / f"fs/cgroup/cpuset{path.rstrip('/')}/cpuset.effective_cpus")
    except (OSError, ValueError):
        pass
    candidates.append(sys_fs / "devices/system/cpu/online")
    for candidate in candidates:
        try:
            return parse_cpu_list(candidate.read_text().strip())
        except (OSError, ValueError):
            continue
    return available_cpus()


@dataclass(frozen=True)
class CpuPlacement:
    """Which CPUs of a node run model forward passes, and which run everything else."""

    model: frozenset[int]
    rest: frozenset[int]

    @classmethod
    def reserve(cls, model_cpus: str, available: frozenset[int] | None = None) -> CpuPlacement:
        """Reserve ``model_cpus`` (a CPU list) of ``available`` (the machine's CPUs) for the
        model; ValueError when it names a CPU the machine does not offer or leaves none for
        the rest."""
        available = machine_cpus() if available is None else available
        model = parse_cpu_list(model_cpus)
        if not model <= available:
            raise ValueError(
                f"model CPUs {format_cpu_list(model)}: this machine has CPUs {format_cpu_list(available)}; "
                "give some of those"
            )
        rest = available - model
        if not rest:
            raise ValueError(
                f"model CPUs {format_cpu_list(model)} are all the CPUs there are: leave at least one "
                "for Kafka, Ray and the processor"
            )
        return cls(model, rest)


def model_cpus(environ: Mapping[str, str] = os.environ) -> frozenset[int] | None:
    """The CPUs :data:`MODEL_CPUS_ENV` reserves for model forward passes, or None where
    unset (ValueError where it is not a CPU list)."""
    text = environ.get(MODEL_CPUS_ENV, "").strip()
    return parse_cpu_list(text) if text else None


def pin_thread(cpus: frozenset[int]) -> frozenset[int]:
    """Run the calling thread on ``cpus`` alone (Linux keeps an affinity per thread);
    returns the CPUs it ran on before."""
    previous = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)
    return previous


def place_threads(pid: int, cpus: frozenset[int]) -> dict[int, frozenset[int]]:
    """Run every thread of process ``pid`` on ``cpus``; threads it starts later inherit it
    from the thread that starts them. Returns each changed thread's previous CPUs (for
    :func:`restore_threads`); threads gone meanwhile are skipped."""
    task_dir = Path(f"/proc/{pid}/task")
    thread_ids = [int(p.name) for p in task_dir.iterdir()] if task_dir.is_dir() else [pid]
    previous: dict[int, frozenset[int]] = {}
    for tid in thread_ids:
        with contextlib.suppress(ProcessLookupError):
            before = frozenset(os.sched_getaffinity(tid))
            os.sched_setaffinity(tid, cpus)
            previous[tid] = before
    return previous


def restore_threads(previous: Mapping[int, frozenset[int]]) -> None:
    """Give the threads :func:`place_threads` moved their CPUs back (those still alive)."""
    for tid, cpus in previous.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def lower_priority(niceness: int, keep: Collection[int] = ()) -> int:
    """Raise every thread of this process but those in ``keep`` (native thread ids) to at
    least ``niceness``; returns threads changed.

    Linux keeps a niceness per thread, so each existing thread is changed; threads started
    afterwards inherit the value of the thread that starts them. Raising niceness needs no
    privileges (lowering it back does, hence ``keep``). 0 leaves everything as it is.
    """
    _check_niceness(niceness)
    task_dir = Path("/proc/self/task")
    thread_ids = [int(p.name) for p in task_dir.iterdir()] if task_dir.is_dir() else [0]
    return sum(_raise_niceness(tid, niceness) for tid in thread_ids if tid not in keep)


def lower_thread_priority(niceness: int) -> bool:
    """Raise the calling thread alone to at least ``niceness``; returns whether it changed.
    A model replica's preprocessing thread runs so, beside the thread that runs the forward
    pass of the batch before (see ``DeploymentSettings.preprocess_niceness``)."""
    _check_niceness(niceness)
    return bool(_raise_niceness(threading.get_native_id(), niceness))


def _check_niceness(niceness: int) -> None:
    if not 0 <= niceness <= MAX_NICENESS:
        raise ValueError(f"niceness must be between 0 and {MAX_NICENESS}, got {niceness}")


def _raise_niceness(tid: int, niceness: int) -> int:
    """1 where thread ``tid`` ran below ``niceness`` and now runs at it, else 0 (and
    always 0 for a niceness of 0: that leaves the thread as it is)."""
    if niceness == 0:
        return 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
            return 1
    return 0


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a live process has used (``/proc/<pid>/stat``), or
    None when it is gone or unreadable."""
    try:
        return _name_and_seconds(Path(f"/proc/{pid}/stat").read_text())[1]
    except (OSError, IndexError, ValueError):
        return None


def _name_and_seconds(stat: str) -> tuple[str, float]:
    """A process's or thread's name and user plus system CPU seconds, from its ``stat``."""
    head, tail = stat.rsplit(")", 1)
    fields = tail.split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return head.split("(", 1)[1], ticks / _ticks_per_s()


@functools.cache
def _ticks_per_s() -> int:
    """The kernel's clock ticks a second, the unit of ``/proc``'s CPU times."""
    return os.sysconf("SC_CLK_TCK")


def _process_seconds(groups: dict[str, list[int]]) -> dict[int, float]:
    """CPU seconds so far of every live process of ``groups``."""
    return {pid: s for pids in groups.values() for pid in pids if (s := cpu_seconds(pid)) is not None}


def _seconds_used(
    groups: Mapping[str, Collection[_Key]], before: Mapping[_Key, float], after: Mapping[_Key, float]
) -> dict[str, float]:
    """CPU seconds each group used between two readings (by process, or by thread): one
    gone (or not yet there) at either counts for what it used while both exist."""
    return {
        name: sum(after[key] - before[key] for key in keys if key in before and key in after)
        for name, keys in groups.items()
    }


def _ms_per_frame(used: Mapping[str, float], frames: int) -> dict[str, float]:
    """CPU seconds as milliseconds a frame, over ``frames`` (at least 1)."""
    if frames <= 0:
        raise ValueError("frames must be positive")
    return {name: round(1000 * seconds / frames, 3) for name, seconds in used.items()}


class CpuMeter:
    """CPU milliseconds per frame of named groups of processes between ``start`` and
    ``stop``: each group's summed CPU time difference over the frames in between. A
    process gone at either end counts for what it used while both readings exist."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: sorted(set(pids)) for name, pids in groups.items()}
        self._start: dict[int, float] = {}

    def start(self) -> None:
        self._start = _process_seconds(self.groups)

    def stop(self, frames: int) -> dict[str, float]:
        return _ms_per_frame(_seconds_used(self.groups, self._start, _process_seconds(self.groups)), frames)


#: The ``prctl`` option (``linux/prctl.h``) that names the calling thread.
PR_SET_NAME = 15


def name_thread(name: str | None = None) -> bool:
    """Give the calling thread its Python name (or ``name``) in the kernel too, cut to the
    kernel's 15 bytes; returns False where it cannot (nothing changes). Python 3.11 leaves
    every new thread the name of the thread that started it (in a Ray worker,
    ``ray::IDLE``), so :class:`ThreadMeter` and ``top -H`` could not tell a replica's
    forward pass from its preprocessing or its event loop."""
    return _prctl(PR_SET_NAME, (name or threading.current_thread().name).encode()[:15])


def _prctl(option: int, argument: int | bytes) -> bool:
    """``prctl(option, argument, 0, 0, 0)`` for this process or thread; False where the
    kernel or C library cannot, or refuses."""
    if platform.system() != "Linux":
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    kind = ctypes.c_char_p if isinstance(argument, bytes) else ctypes.c_ulong
    prctl.argtypes = [ctypes.c_int, kind, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return bool(prctl(option, argument, 0, 0, 0) == 0)


def thread_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of a process by id: its name (the kernel's, 15 characters at most)
    and the user plus system CPU seconds it has used; empty when the process is gone."""
    threads: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            threads[int(tid)] = _name_and_seconds(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended while the task list was read
    return threads


class ThreadMeter:
    """:class:`CpuMeter`'s figure split by thread name inside each group, for the
    ``top`` busiest names of each (the rest as ``other threads``): CPU milliseconds per
    frame between ``start`` and ``stop``, as ``"group / thread"``. Threads of one name are
    summed (a pool's workers). A thread started in between counts all it used (it had used
    nothing at ``start``: the bench's paced camera starts after); one that ended in between
    counts for nothing, so the names need not add up to the group's :class:`CpuMeter`
    figure."""

    OTHERS = "other threads"

    def __init__(self, groups: dict[str, list[int]], top: int = 5) -> None:
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        self.groups = {name: sorted(set(pids)) for name, pids in groups.items()}
        self.top = top
        self._start: dict[tuple[int, int], float] = {}
        self._started_pids: set[int] = set()

    def _read(self) -> dict[tuple[int, int], tuple[str, float]]:
        return {
            (pid, tid): thread
            for pids in self.groups.values()
            for pid in pids
            for tid, thread in thread_seconds(pid).items()
        }

    def start(self) -> None:
        self._start = {key: seconds for key, (_name, seconds) in self._read().items()}
        self._started_pids = {pid for pid, _tid in self._start}

    def stop(self, frames: int) -> dict[str, float]:
        after = self._read()
        seconds_now = {key: seconds for key, (_name, seconds) in after.items()}
        born = {key: 0.0 for key in after if key not in self._start and key[0] in self._started_pids}
        before = {**born, **self._start}
        used: dict[str, float] = {}
        for group, pids in self.groups.items():
            named: dict[str, list[tuple[int, int]]] = {}
            for (pid, tid), (name, _seconds) in after.items():
                if pid in pids:
                    named.setdefault(name, []).append((pid, tid))
            ranked = sorted(_seconds_used(named, before, seconds_now).items(), key=lambda item: -item[1])
            used.update((f"{group} / {name}", seconds) for name, seconds in ranked[: self.top])
            if len(ranked) > self.top:
                used[f"{group} / {self.OTHERS}"] = sum(seconds for _name, seconds in ranked[self.top :])
        return _ms_per_frame(used, frames)


#: The host's own figures in a :class:`CpuTimeline`: cores the hypervisor gave to other
#: guests while this machine's were runnable (``steal``), and cores left idle.
HOST_STEAL = "host steal"
HOST_IDLE = "host idle"


def host_ticks(proc_stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """The machine's idle (idle and iowait) and stolen clock ticks so far, all CPUs
    together (``/proc/stat``'s first line)."""
    fields = proc_stat.read_text().split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        raise ValueError(f"{proc_stat} does not start with a cpu line: {fields[:3]}")
    idle, iowait, steal = int(fields[4]), int(fields[5]), int(fields[8])
    return idle + iowait, steal


@dataclass(frozen=True)
class CpuSample:
    """One interval of a :class:`CpuTimeline`: when it ended (``at_ms``, milliseconds
    since the epoch, the clock of frames' capture stamps), its length, and the cores each
    group of processes used over it, with the host's steal and idle cores."""

    at_ms: int
    seconds: float
    cores: dict[str, float]


class CpuTimeline:
    """The cores each named group of processes used, and the host's stolen and idle
    cores, every ``interval_s``, on a thread of its own: which process was busy, or
    whether the hypervisor took the CPUs, at the moment a frame was slow. Ticks are
    1/``SC_CLK_TCK`` s (10 ms here), so at 0.1 s a sample's resolution is 0.1 core. At most
    ``max_samples`` are kept (the latest)."""

    def __init__(
        self,
        groups: dict[str, list[int]],
        interval_s: float = 0.1,
        max_samples: int = 36_000,
        proc_stat: Path = Path("/proc/stat"),
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be above 0, got {interval_s}")
        self.groups = {name: sorted(set(pids)) for name, pids in groups.items()}
        self.interval_s = interval_s
        self.proc_stat = proc_stat
        self._samples: deque[CpuSample] = deque(maxlen=max_samples)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[float, dict[int, float], tuple[int, int]]:
        """When, the CPU seconds so far by live process, and the host's idle and stolen ticks."""
        return time.monotonic(), _process_seconds(self.groups), host_ticks(self.proc_stat)

    def _sample(self) -> None:
        name_thread()
        before_at, before, (idle_before, steal_before) = self._read()
        while not self._stop.wait(max(0.0, before_at + self.interval_s - time.monotonic())):
            at, now, (idle, steal) = self._read()
            elapsed = at - before_at
            cores = {name: round(s / elapsed, 3) for name, s in _seconds_used(self.groups, before, now).items()}
            cores[HOST_STEAL] = round((steal - steal_before) / _ticks_per_s() / elapsed, 3)
            cores[HOST_IDLE] = round((idle - idle_before) / _ticks_per_s() / elapsed, 3)
            self._samples.append(CpuSample(int(time.time() * 1000), round(elapsed, 4), cores))
            before_at, before, idle_before, steal_before = at, now, idle, steal

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this timeline has started already")
        self._thread = threading.Thread(target=self._sample, name="cpu-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> list[CpuSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return list(self._samples)


def cores_over(samples: list[CpuSample], windows: list[tuple[int, int]]) -> dict[str, float]:
    """Mean cores by group over the samples whose interval overlaps any of ``windows``
    (start and end, epoch milliseconds), each sample counted once; {} when none does."""
    chosen = [
        sample
        for sample in samples
        if any(start < sample.at_ms and sample.at_ms - 1000 * sample.seconds < end for start, end in windows)
    ]
    if not chosen:
        return {}
    total = sum(sample.seconds for sample in chosen)
    names = chosen[0].cores
    return {name: round(sum(s.cores.get(name, 0.0) * s.seconds for s in chosen) / total, 3) for name in names}


#: The largest block glibc's heap may serve on a 64-bit system (``M_MMAP_THRESHOLD``'s
#: maximum); larger ones are always mapped on their own.
HEAP_BLOCK_MAX = 32 * 2**20
#: How much freed memory a model process keeps at the top of its heap.
KEEP_FREED_BYTES = 2**30


def _allocator_settings(keep_bytes: int) -> tuple[tuple[str, int, int], ...]:
    """Each glibc setting that keeps freed memory: its tunable's name, its ``mallopt``
    parameter (``malloc.h``) and its value."""
    if keep_bytes < 0:
        raise ValueError(f"keep_bytes must be at least 0, got {keep_bytes}")
    return (
        ("glibc.malloc.arena_max", -8, 1),
        ("glibc.malloc.trim_threshold", -1, min(keep_bytes, 2**31 - 1)),
        ("glibc.malloc.mmap_threshold", -3, HEAP_BLOCK_MAX),
    )


def keep_freed_memory(keep_bytes: int = KEEP_FREED_BYTES) -> bool:
    """Have glibc keep the memory this process frees for its next batch; returns False
    where the C library is not glibc (nothing changes).

    A forward pass allocates and frees its activations every batch. By default glibc maps
    large blocks on their own, gives large free ranges back to the kernel, and gives each
    thread a heap of its own of at most 64 MB, so the next batch faults the same pages in
    again, zeroed. This keeps up to ``keep_bytes`` free at the top of the heap, serves
    blocks up to :data:`HEAP_BLOCK_MAX` from it, and has threads started afterwards share
    the one heap (threads that already allocated keep theirs: a process started with
    :func:`keep_freed_memory_environment` has all its threads share it). In a one-off
    microbench, ``mobilenet_v3_small`` at 224 px took 38-74 ms a batch of 16 on one thread
    by default, with 10,000-250,000 page faults in 30 batches (it went either way from run
    to run), and 36-43 ms with this, with 2,000-7,000. The memory kept is what the largest
    batch used: a model process's resident size stays at its peak.
    """
    settings = _allocator_settings(keep_bytes)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for _name, param, value in settings)


#: The ``prctl`` option (``linux/prctl.h``) that turns a process's transparent huge pages off.
PR_SET_THP_DISABLE = 41


def no_huge_pages() -> bool:
    """Turn transparent huge pages off for this process (and the children it starts);
    returns False where the kernel or C library cannot (nothing changes).

    NumPy asks for huge pages (``madvise(MADV_HUGEPAGE)``) for every array of 4 MB or
    more: a batch of decoded frames or of model inputs is one. The kernel may then compact
    memory at a page fault to find a huge page, and collapses such ranges in the
    background (``khugepaged``), holding the process's memory map while it does. A
    process that allocates such an array every batch is better off without either. In 12
    runs each way the pipeline's medians moved the right way with it off, within the
    runs' spread (docs/performance-notes.md, "Transparent huge pages, the garbage
    collector, and why batches are sent")."""
    return _prctl(PR_SET_THP_DISABLE, 1)


def model_process_memory() -> None:
    """This process's memory as a model replica's: freed memory kept (:func:`keep_freed_memory`)
    and no transparent huge pages (:func:`no_huge_pages`), for the rest of the process. For
    a process that times a model the way the replicas run it (the bench's raw loop, ``vlm
    optimize``); a replica itself gets the first from its environment at start."""
    keep_freed_memory()
    no_huge_pages()


def keep_freed_memory_environment(
    keep_bytes: int = KEEP_FREED_BYTES, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment variable that has a process started with it do what
    :func:`keep_freed_memory` does, from its first allocation and for all its threads
    (glibc reads ``GLIBC_TUNABLES`` at start; other C libraries ignore it). Tunables
    already in ``environ`` come after these, so a user's own settings win."""
    tunables = [f"{name}={value}" for name, _param, value in _allocator_settings(keep_bytes)]
    if environ.get("GLIBC_TUNABLES"):
        tunables.append(environ["GLIBC_TUNABLES"])
    return {"GLIBC_TUNABLES": ":".join(tunables)}


#: The instruction-set extensions (as ``/proc/cpuinfo`` names them) that decide how fast
#: int8 and bfloat16 kernels run: the same model's speed-up differs by these.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class Host:
    """The machine a figure was measured on, as a report records it beside the figure."""

    cpu: str
    #: Vendor family and model numbers ("25/17"): virtual machines often hide the model name.
    family_model: str
    cpus: int
    #: Which of :data:`KERNEL_FLAGS` the CPU has.
    flags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "family_model": self.family_model, "cpus": self.cpus, "flags": list(self.flags)}


def describe_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> Host:
    """This machine's CPU from ``cpuinfo`` (its first processor), and the CPUs this
    process may run on; off Linux, what :mod:`platform` knows."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        first = ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if v}
    present = set(fields.get("flags", "").split())
    cpus = len(available_cpus())
    family, model = fields.get("cpu family"), fields.get("model")
    return Host(
        cpu=fields.get("model name") or platform.processor() or platform.machine() or "unknown",
        family_model=f"{family}/{model}" if family and model else "",
        cpus=cpus,
        flags=tuple(flag for flag in KERNEL_FLAGS if flag in present),
    )
