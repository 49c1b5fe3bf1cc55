"""torch's CPU threads on a machine that other processes share.

Why. torch runs each operator on a team of OpenMP threads, one per core, that meet at a barrier
at its end. When another process keeps one of those cores busy, the thread that shares its core
gets a slice of it now and then, and every operator waits for that thread: on 2 cores with one
taken, a LeNet step ran about 20x slower with 2 threads than with 1 (docs/training.md has the
measurement). Losing a core should cost at most its share of the work.

What. Every batch loop in cnnlab calls :func:`tick`. Inside :meth:`ThreadGovernor.adaptive` (``train()``
and the other entry points that loop), at most every :data:`WINDOW` seconds a tick reads how much CPU
the other processes used on this process's cores since the last look (from /proc/stat, minus this
process's own CPU time) and sets torch's thread count to the cores they left free, never above the
*ceiling*: torch's thread count as the user (or torch's default) set it. Processes that cooperate see
each other the same way: two DDP ranks or search workers started together on 2 cores each settle on
one thread. A core counts as free when at least :data:`FREE_SHARE` of it was idle.

Where it does nothing. Off Linux (no /proc/stat) the ceiling stays. Outside an adaptive block (a loop
of :func:`cnnlab.train.engine.train_step` or :func:`cnnlab.train.engine.evaluate` that the caller runs
from Python) the count stays the caller's: no block would give a lowered one back. Inside
:func:`pinned_threads` (``train.threads`` set; ``train.deterministic``, as a thread count changes the
order of sums, so a bit-identical repeat needs a fixed one; or a compiled run, as torch.compile
compiles again at every new thread count) the count is fixed for the whole block.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

WINDOW = 0.3  # seconds between looks at the CPU counters: 30 kernel ticks per core at 100 Hz
FREE_SHARE = 0.7  # a core is free when at least this share of it was idle (others used < 0.3 of it)
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuSample:
    """CPU counters at one moment: what :func:`other_cores` compares."""

    time: float  # time.monotonic() seconds
    busy: float  # seconds all processes spent running on this process's cores (since boot)
    own: float  # seconds this process spent running, all its threads (time.process_time())


def process_cores() -> list[int]:
    """The CPU numbers this process may run on (its affinity), e.g. [0, 1]."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


# /proc/cpuinfo flags that decide how fast torch's CPU kernels can be, in the words the benches print:
# the vector width (oneDNN's convolutions and matmuls) and native bf16 units (bf16 autocast runs
# through emulation at a tenth of fp32's speed without them, bench/train_throughput.py --compare).
CPU_FEATURES = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux) with its vector units, e.g. "AMD EPYC (AVX-512,
    AVX512-BF16)"; else what platform reports. Clouds give one model name to hosts of different
    generations, so the units are what tell two machines' speed figures apart."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return f"{name or platform.processor() or 'unknown CPU'}{cpu_features_text(flags)}"


def cpu_features_text(flags: set[str]) -> str:
    """The CPU_FEATURES among ``flags`` in brackets after a space, e.g. ' (AVX2)'; '' when none is there.
    AVX2 is left out beside AVX-512, which implies it."""
    named = [text for flag, text in CPU_FEATURES if flag in flags]
    if "AVX-512" in named and "AVX2" in named:
        named.remove("AVX2")
    return f" ({', '.join(named)})" if named else ""


def cpu_quota() -> Optional[float]:
    """The cgroup's CPU limit in cores (a container's ``--cpus``), None when there is none or no cgroup."""
    try:  # cgroup v2: "max 100000" (no limit) or "200000 100000" (2 cores)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 is no limit
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def busy_seconds(stat_text: str, cores: list[int], ticks_per_second: float) -> float:
    """Seconds the ``cores`` spent running anything, from the text of /proc/stat.

    Each ``cpuN`` line counts kernel ticks (1/``ticks_per_second`` s) per state: user nice system
    idle iowait irq softirq steal guest guest_nice. Busy = user + nice + system + irq + softirq
    (guest time is already inside user; steal is time the hypervisor gave to other machines).
    """
    wanted = {f"cpu{core}" for core in cores}
    ticks = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in rest.split()[:7])
            ticks += user + nice + system + irq + softirq
    return ticks / ticks_per_second


def read_sample() -> Optional[CpuSample]:
    """The counters now; None where /proc/stat cannot be read (not Linux)."""
    try:
        text = PROC_STAT.read_text()
    except OSError:
        return None
    return CpuSample(time=time.monotonic(), busy=busy_seconds(text, process_cores(), os.sysconf("SC_CLK_TCK")),
                     own=time.process_time())


def other_cores(before: CpuSample, after: CpuSample) -> float:
    """Cores' worth of CPU the other processes used between two samples (0.0 .. number of cores).

    Our own threads, spinning ones included, count as ours; child processes (data-loading workers)
    count as others, which is right: they take cores from torch's threads all the same.
    """
    elapsed = after.time - before.time
    if elapsed <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / elapsed


def choose_threads(ceiling: int, cores: int, others: float, quota: Optional[float] = None) -> int:
    """Threads for torch: the free cores (``cores`` minus those ``others`` use, a core counting as
    taken from 1 - FREE_SHARE of it), at most ``ceiling`` and the cgroup ``quota``, at least 1.

    >>> choose_threads(2, 2, others=0.0), choose_threads(2, 2, others=0.67), choose_threads(8, 8, others=2.2)
    (2, 1, 6)
    """
    taken = max(0, math.ceil(others - (1 - FREE_SHARE) - 1e-9))  # 0.3 -> 0, 0.31 -> 1, 1.31 -> 2
    free = cores - taken
    if quota is not None:
        free = min(free, max(1, math.floor(quota)))
    return max(1, min(ceiling, free))


@dataclass(frozen=True)
class ThreadMeter:
    """Where a span of work started, for :meth:`ThreadGovernor.threads_used`."""

    start: float  # time.monotonic() seconds
    threads: int  # torch's thread count then
    changes_seen: int  # changes the governor had made before


def time_at_counts(start: float, threads: int, changes: list[tuple[float, int]], end: float) -> dict[int, float]:
    """Seconds spent at each thread count between ``start`` (at ``threads``) and ``end``, given the
    ``changes`` (time, new count) in between; most threads first, counts never used left out.

    >>> time_at_counts(0.0, 2, [(3.0, 1), (4.5, 2)], 10.0)
    {2: 8.5, 1: 1.5}
    """
    used: dict[int, float] = {}
    for when, count in [*changes, (end, threads)]:
        used[threads] = used.get(threads, 0.0) + max(0.0, when - start)
        start, threads = max(start, when), count
    return {count: seconds for count, seconds in sorted(used.items(), reverse=True) if seconds > 0}


@dataclass
class ThreadGovernor:
    """Keeps torch's CPU thread count at the cores other processes leave free (one per process: :data:`GOVERNOR`)."""

    sample: Callable[[], Optional[CpuSample]] = read_sample
    clock: Callable[[], float] = time.monotonic  # the samples' clock: a tick reads it, and the counters once a window
    cores: int = field(default_factory=lambda: len(process_cores()))
    quota: Optional[float] = field(default_factory=cpu_quota)
    window: float = WINDOW
    ceiling: Optional[int] = None  # torch's thread count before the governor lowered it
    pinned: int = 0  # depth of pinned_threads blocks: no changes while > 0
    adapting: int = 0  # depth of adaptive blocks: changes only while > 0
    changes: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), new count) per change
    _last: Optional[CpuSample] = None
    _set: Optional[int] = None  # the count the governor last set

    def tick(self) -> None:
        """Look at the counters if a window has passed, and change torch's thread count if it should."""
        if self.pinned:
            return
        last = self._last
        if last is not None and self.clock() - last.time < self.window:
            return  # every batch passes here: one clock read, the counters only once a window
        now = self.sample()
        if now is None:
            return
        if last is None or not self.adapting:
            # The first look starts the window. Outside an adaptive block (a loop of train_step or evaluate that
            # the caller runs from Python) the count stays the caller's: no block would give it back after.
            self._last = now
            return
        import torch  # here, not at the top: importing this module starts a window without loading torch

        current = torch.get_num_threads()
        self._last = now
        if self._set != current:
            self.ceiling = current  # set by the user (or torch's default) since the governor last changed it
        wanted = choose_threads(self.ceiling, self.cores, other_cores(last, now), self.quota)
        if wanted != current:
            torch.set_num_threads(wanted)
            self.changes.append((time.monotonic(), wanted))
        self._set = wanted

    def meter(self) -> ThreadMeter:
        """A start mark for :meth:`threads_used`: now, and the thread count now."""
        import torch

        return ThreadMeter(start=time.monotonic(), threads=torch.get_num_threads(), changes_seen=len(self.changes))

    def threads_used(self, meter: ThreadMeter) -> dict[int, float]:
        """Seconds at each thread count since ``meter`` was taken, most threads first."""
        used = time_at_counts(meter.start, meter.threads, self.changes[meter.changes_seen:], time.monotonic())
        return used or {meter.threads: 0.0}

    @contextmanager
    def pin(self, threads: Optional[int] = None) -> Iterator[int]:
        """A block with a fixed thread count: ``threads``, or the ceiling (torch's own setting, restored if
        the governor had lowered it). The count before the block is restored after it."""
        import torch

        before = torch.get_num_threads()
        fixed = threads or (self.ceiling if self._set == before and self.ceiling else before)
        torch.set_num_threads(fixed)
        self.changes.append((time.monotonic(), fixed))
        self.pinned += 1
        try:
            yield fixed
        finally:
            self.pinned -= 1
            torch.set_num_threads(before)
            self.changes.append((time.monotonic(), before))
            self._last = None  # the next window starts after the block


    @contextmanager
    def adaptive(self) -> Iterator[None]:
        """A block in which the count follows the free cores (:meth:`tick`), and after which torch's setting
        from before it is back: a caller's own code after ``train()`` does not inherit a count lowered while
        another process was busy. A count the caller set inside the block is left as it is."""
        import torch

        before = torch.get_num_threads()
        # A count the governor had lowered before the block (in the block around it: train() inside
        # run_experiment) is not the setting
        setting = self.ceiling if self._set == before and self.ceiling else before
        self.adapting += 1
        try:
            yield
        finally:
            self.adapting -= 1
            now = torch.get_num_threads()
            if now != setting and now == self._set:  # the governor's change, not the caller's
                torch.set_num_threads(setting)
                self.changes.append((time.monotonic(), setting))
                self._set = setting


GOVERNOR = ThreadGovernor()
GOVERNOR.tick()  # the first window starts when cnnlab's loops are imported: set-up time counts towards it


def tick() -> None:
    """Call once per batch in any loop that computes: see the module docstring."""
    GOVERNOR.tick()


def keeps_thread_setting(function):
    """``function`` (a public entry point whose loops :func:`tick`) run inside :meth:`ThreadGovernor.adaptive`:
    a count lowered while other processes were busy is put back when it returns, as ``train()`` puts it back."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with GOVERNOR.adaptive():
            return function(*args, **kwargs)

    return wrapper


@contextmanager
def pinned_threads(threads: Optional[int] = None) -> Iterator[int]:
    """No adaptation inside the block: ``threads`` threads, or torch's own setting (:meth:`ThreadGovernor.pin`)."""
    with GOVERNOR.pin(threads) as fixed:
        yield fixed


def threads_text(used: dict[int, float], why: str = "other processes were using cores") -> str:
    """'2', or '2 for 8.1 s, 1 for 3.2 s (other processes were using cores)' when the count changed (``why``)."""
    if len(used) <= 1:
        return str(next(iter(used), ""))
    parts = ", ".join(f"{count} for {seconds:.1f} s" for count, seconds in used.items())
    return f"{parts} ({why})"


def usable_cores() -> tuple[int, str]:
    """How many cores this process may run on, and where that number comes from: its affinity
    (os.sched_getaffinity), lowered to the container's CPU quota (whole cores, at least 1) when that is less."""
    cores = len(process_cores())
    quota = cpu_quota()
    if quota is not None and max(1, math.floor(quota)) < cores:
        return max(1, math.floor(quota)), f"its container's CPU quota of {quota:g} cores"
    return cores, "os.sched_getaffinity"


# Kernel settings that cap the threads a process can start: every thread takes a process id (pid_max) and
# counts against the system's threads (threads-max). The user's process limit (ulimit -u) counts threads too.
_THREAD_CAPS = (Path("/proc/sys/kernel/pid_max"), Path("/proc/sys/kernel/threads-max"))


def os_thread_limit() -> Optional[int]:
    """The most threads the operating system could start for this process, a bound no thread count may pass:
    the lowest of the kernel's pid_max and threads-max and the user's process limit (RLIMIT_NPROC, which
    counts threads); None where none of them can be read (not Linux)."""
    limits = []
    for path in _THREAD_CAPS:
        try:
            limits.append(int(path.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, AttributeError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def run_threads(threads: Optional[int], fixed: bool = False):
    """The thread setting a run trains in: pinned to ``threads`` (train.threads) when set, pinned to
    torch's own setting when ``fixed``, adaptive otherwise. A run is fixed when it is deterministic (sums
    in a fixed order) or compiled: torch.compile guards on the thread count, so every new count would
    compile the model again (and after torch's recompile_limit, 8, its forward would run eager). Each
    way, torch's setting from before the run is back after it. Callers check ``threads`` against this
    machine first (:func:`cnnlab.config.check_thread_setting`)."""
    return pinned_threads(threads) if threads or fixed else GOVERNOR.adaptive()
