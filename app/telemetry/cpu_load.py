"""Where the machine's CPU time went during a window: stolen by a VM's host, used by this process
tree, or used by other processes.

Linux's /proc/stat counts, since boot and in USER_HZ ticks (100 a second nearly everywhere), the
time all CPUs together spent in each state. Its first line is the sum over CPUs:

    cpu  user nice system idle iowait irq softirq steal guest guest_nice

*steal* is time a virtual CPU was ready to run but the hypervisor ran something else: on a cloud
VM, another tenant took the core. guest and guest_nice are already inside user and nice. So over a
window, with Δ the difference of two readings:

    total  = Δ(user + nice + system + idle + iowait + irq + softirq + steal)
    steal %  = Δsteal / total
    busy     = Δ(user + nice + system + irq + softirq)       (work done on the CPUs, not stolen)
    other %  = (busy − Δ CPU time of this process tree) / total

"This process tree" is LlamaScope: the process that started the benchmark and all its descendants
(the engine host that runs llama.cpp included), read with psutil. The rest of the busy time is
other processes: what competed with the benchmark for the cores.

The counters move in whole ticks, so a window needs some length before the percentages mean
anything: below MIN_WINDOW_CPU_S of CPU time (all CPUs together, 1 s on a 2-CPU machine) the
figures are n/a with the reason. Other limits, in the figures' favour: a process of the tree that
ends during the window and is reaped adds its whole life's CPU time to its parent's children
time (the window over-counts the tree, so other load reads low), and one that ends without being
reaped loses its window time to "other". Outside Linux, psutil's cpu_times() gives the busy time
and steal is n/a.

`ProcStatReader` takes a filesystem root, so tests read a fake /proc tree.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.telemetry.sysfs import read_text, under

# Below this much CPU time in a window (all CPUs together), tick rounding (10 ms a tick per CPU and
# per counter) is several per cent of it: the percentages are left n/a.
MIN_WINDOW_CPU_S = 2.0


@dataclass(frozen=True)
class MachineCpuTimes:
    """The machine's CPU time since boot by state, in seconds, summed over CPUs."""

    user_s: float
    nice_s: float
    system_s: float
    idle_s: float
    iowait_s: float
    irq_s: float
    softirq_s: float
    steal_s: float | None  # None: not reported (not Linux, or a kernel older than 2.6.11)

    @property
    def total_s(self) -> float:
        return (
            self.user_s
            + self.nice_s
            + self.system_s
            + self.idle_s
            + self.iowait_s
            + self.irq_s
            + self.softirq_s
            + (self.steal_s or 0.0)
        )

    @property
    def busy_s(self) -> float:
        """Time the CPUs ran something here (idle, waiting for I/O and stolen time excluded)."""
        return self.user_s + self.nice_s + self.system_s + self.irq_s + self.softirq_s


def ticks_per_second() -> float:
    """USER_HZ, the unit of /proc/stat."""
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0  # USER_HZ is 100 on every Linux architecture but a few old ones


def parse_proc_stat(text: str, hz: float) -> MachineCpuTimes | None:
    """The aggregate "cpu" line of /proc/stat's text, or None when there is none or it is malformed."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "cpu":
            continue
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            return None
        if len(values) < 4 or hz <= 0:
            return None
        values += [0] * (7 - len(values)) if len(values) < 7 else []
        steal = values[7] / hz if len(values) > 7 else None
        user, nice, system, idle, iowait, irq, softirq = (v / hz for v in values[:7])
        return MachineCpuTimes(user, nice, system, idle, iowait, irq, softirq, steal)
    return None


class ProcStatReader:
    """Reads `<root>/proc/stat`; None when it is missing or malformed (not Linux, a fake tree without it)."""

    def __init__(self, root: str | os.PathLike[str] = "/", hz: float | None = None) -> None:
        self._path = under(root, "/proc/stat")
        self._hz = hz if hz is not None else ticks_per_second()

    def read(self) -> MachineCpuTimes | None:
        text = read_text(self._path)
        return parse_proc_stat(text, self._hz) if text is not None else None


def psutil_machine_times() -> MachineCpuTimes | None:
    """psutil's machine CPU times, for systems without /proc/stat; steal only where psutil has it."""
    try:
        import psutil

        t = psutil.cpu_times()
    except Exception:  # psutil missing or failing: the figures are n/a, never a crash
        return None
    return MachineCpuTimes(
        user_s=float(t.user),
        nice_s=float(getattr(t, "nice", 0.0)),
        system_s=float(t.system),
        idle_s=float(t.idle),
        iowait_s=float(getattr(t, "iowait", 0.0)),
        irq_s=float(getattr(t, "irq", 0.0) or getattr(t, "interrupt", 0.0)),
        softirq_s=float(getattr(t, "softirq", 0.0) or getattr(t, "dpc", 0.0)),
        steal_s=float(t.steal) if hasattr(t, "steal") else None,
    )


def process_tree_cpu_s(root_pid: int) -> float | None:
    """CPU time (user + system) of a process and all its descendants, with the time of children they
    already reaped; None when the root process cannot be read."""
    try:
        import psutil

        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except Exception:
        return None
    total = 0.0
    for i, process in enumerate(processes):
        try:
            t = process.cpu_times()
        except Exception:  # a descendant that ended meanwhile; the root's failure is fatal
            if i == 0:
                return None
            continue
        total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    return total


@dataclass(frozen=True)
class CpuLoadSample:
    """One reading: when, the machine's CPU times, and this process tree's CPU time."""

    t_monotonic_s: float
    machine: MachineCpuTimes | None
    tree_cpu_s: float | None


@dataclass(frozen=True)
class CpuLoad:
    """Where the CPU time of a window went. Percentages are of all CPUs' time in the window."""

    wall_s: float
    n_cpus: int
    steal_percent: float | None
    other_percent: float | None  # other processes' busy time
    other_cpus: float | None  # the same in CPUs: 0.95 = nearly one core's worth
    tree_cpus: float | None  # LlamaScope's own, in CPUs
    note: str = ""  # why a figure is n/a, in words ("" when all are known)


class CpuLoadProbe:
    """Takes `CpuLoadSample`s of the machine and of the process tree rooted at `root_pid`.

    `machine` and `tree` are the two sources (a fake /proc tree and a function in tests).
    """

    def __init__(
        self,
        root_pid: int | None = None,
        *,
        root: str | os.PathLike[str] = "/",
        machine: Callable[[], MachineCpuTimes | None] | None = None,
        tree: Callable[[int], float | None] = process_tree_cpu_s,
        clock: Callable[[], float] = time.monotonic,
        n_cpus: int | None = None,
    ) -> None:
        self.root_pid = root_pid if root_pid is not None else os.getpid()
        if machine is None:
            reader = ProcStatReader(root)
            linux = sys.platform.startswith("linux")

            def machine() -> MachineCpuTimes | None:
                times = reader.read()
                return times if times is not None or linux else psutil_machine_times()

        self._machine = machine
        self._tree = tree
        self._clock = clock
        self.n_cpus = n_cpus or os.cpu_count() or 1

    def sample(self) -> CpuLoadSample:
        return CpuLoadSample(self._clock(), self._machine(), self._tree(self.root_pid))

    def between(self, start: CpuLoadSample, end: CpuLoadSample) -> CpuLoad:
        return cpu_load_between(start, end, self.n_cpus)


def cpu_load_between(start: CpuLoadSample, end: CpuLoadSample, n_cpus: int) -> CpuLoad:
    """The window from `start` to `end` (see the module's formulas); n/a figures say why in `note`."""
    wall = max(0.0, end.t_monotonic_s - start.t_monotonic_s)
    a, b = start.machine, end.machine
    if a is None or b is None:
        return CpuLoad(wall, n_cpus, None, None, None, None, "the machine's CPU times are not readable")
    total = b.total_s - a.total_s
    if total <= 0:
        return CpuLoad(wall, n_cpus, None, None, None, None, "the CPU time counters did not advance")
    # CPUs' worth of time per second of the window: from the counters themselves, so a window whose
    # wall time and counters disagree slightly (ticks) stays consistent.
    cpus = total / wall if wall > 0 else float(n_cpus)
    tree = (
        end.tree_cpu_s - start.tree_cpu_s
        if end.tree_cpu_s is not None and start.tree_cpu_s is not None
        else None
    )
    tree_cpus = max(0.0, tree) / wall if tree is not None and wall > 0 else None
    if total < MIN_WINDOW_CPU_S:
        return CpuLoad(
            wall,
            n_cpus,
            None,
            None,
            None,
            tree_cpus,
            f"the run was too short ({wall:.2f} s) to split the CPU time from /proc/stat's 10 ms ticks",
        )
    steal: float | None = None
    notes = []
    if a.steal_s is not None and b.steal_s is not None:
        steal = max(0.0, b.steal_s - a.steal_s) / total * 100.0
    else:
        notes.append("steal time is not reported on this system")
    other_percent: float | None = None
    other_cpus: float | None = None
    if tree is not None:
        other = max(0.0, (b.busy_s - a.busy_s) - tree)  # tick rounding can make it a hair negative
        other_percent = min(100.0, other / total * 100.0)
        other_cpus = other_percent / 100.0 * cpus
    else:
        notes.append("LlamaScope's own CPU time is not readable")
    return CpuLoad(wall, n_cpus, steal, other_percent, other_cpus, tree_cpus, "; ".join(notes))


def cpu_load_fields(load: CpuLoad | None) -> dict[str, Any]:
    """A window's figures as the benchmark record's field names."""
    if load is None:
        return {}
    return {
        "steal_percent": load.steal_percent,
        "other_cpu_percent": load.other_percent,
        "other_cpus": load.other_cpus,
        "cpu_load_note": load.note,
    }
