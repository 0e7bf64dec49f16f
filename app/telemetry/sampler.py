"""Live telemetry: a sampler thread that turns psutil, NVML and sysfs readings into frozen snapshots.

`SnapshotCollector.collect()` reads every source once and returns a `Snapshot`; each source goes
through its own reader (`app.telemetry.sysfs`, `app.telemetry.nvml`), and a source that fails is
None in the snapshot and one line in the log, never an exception. `Sampler` calls the collector on a
named thread on a drift-free schedule and hands each snapshot to its listeners (on the sampler
thread: a GUI bridges them into signals). `TelemetryRecorder` collects the snapshots of a window of
time and `summarize` reduces them to a `TelemetrySummary` (the Performance panel's joules per
token).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.telemetry.nvml import NVML_CLOCK_MEM, NVML_CLOCK_SM, NVML_TEMPERATURE_GPU, Nvml, shared_nvml, text
from app.telemetry.sysfs import (
    CpuFrequencyReader,
    LogOnce,
    RaplReader,
    SensorReader,
    ThrottleCounterReader,
    read_meminfo,
)

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 5.0
DEFAULT_INTERVAL_S = 0.5
THREAD_NAME = "llamascope-telemetry"

# Under this load, a clock far below its maximum is idling, not throttling.
LOADED_CPU_PERCENT = 80.0
# All-core boost is often 80-90 % of the single-core maximum cpuinfo_max_freq reports, so only a
# deeper drop under load counts as throttling.
FREQ_DROP_FRACTION = 0.75
# A RAPL counter wraps within minutes at high power; after a longer gap (suspend) a single-wrap
# correction may be wrong, so that interval's energy is not counted.
MAX_ENERGY_GAP_S = 60.0


# ---- snapshot types ---------------------------------------------------------------------------


class ThrottleVerdict(enum.Enum):
    """Whether a device is throttling now, and why."""

    NOT_THROTTLING = "not throttling"
    THERMAL = "thermal"
    POWER = "power"
    UNKNOWN = "unknown cause"  # throttling, but the cause is not reported
    NOT_AVAILABLE = "n/a"  # no counters or reasons to judge by

    @property
    def is_throttling(self) -> bool:
        return self in (ThrottleVerdict.THERMAL, ThrottleVerdict.POWER, ThrottleVerdict.UNKNOWN)


@dataclass(frozen=True)
class DeviceVerdict:
    device: str  # "CPU", "GPU 0"
    verdict: ThrottleVerdict
    detail: str  # the evidence, e.g. "3 thermal throttle events" or "power cap, thermal (hardware)"


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one tick; None where NVML did not answer."""

    index: int
    name: str | None
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_watts: float | None
    power_limit_watts: float | None
    sm_clock_mhz: float | None
    memory_clock_mhz: float | None
    fan_percent: float | None
    throttle_reasons_mask: int | None  # NVML clock-event reasons bitmask
    throttle_reasons: tuple[str, ...]  # the mask in words
    energy_joules_total: float | None  # NVML's counter since the driver loaded
    # This process's memory on the GPU (NVML's compute processes); None when the driver does not
    # list it (no per-process accounting, or a container whose PIDs differ from the host's).
    process_memory_bytes: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything the sampler read at one tick. Rates cover the interval since the previous tick."""

    t_monotonic_s: float
    t_unix_s: float
    interval_s: float | None  # since the previous tick; None on the first tick or after a clock jump
    cpu_percent: float | None  # all cores, 0-100
    cpu_per_core_percent: tuple[float, ...]  # empty when not known
    cpu_freq_mhz: float | None  # mean current clock
    cpu_freq_max_mhz: float | None
    load_avg: tuple[float, float, float] | None
    mem_total_bytes: int | None
    mem_used_bytes: int | None  # total - available
    mem_available_bytes: int | None
    swap_used_bytes: int | None
    process_rss_bytes: int | None  # this process (LlamaScope, with the model it has loaded)
    process_cpu_percent: float | None  # this process, % of one core (like top: may exceed 100)
    gpus: tuple[GpuSnapshot, ...]
    temperatures_c: tuple[tuple[str, float], ...]  # (sensor label, °C)
    fans_rpm: tuple[tuple[str, float], ...]
    cpu_package_power_watts: float | None  # RAPL, all packages, mean over the interval
    cpu_energy_joules_total: float | None  # RAPL, accumulated since the sampler started
    cpu_throttle_events_total: int | None  # thermal + power-limit counter increases since start
    verdicts: tuple[DeviceVerdict, ...]

    @property
    def throttling(self) -> bool:
        return any(v.verdict.is_throttling for v in self.verdicts)

    @property
    def total_power_watts(self) -> float | None:
        """CPU package + GPUs, over the sources that report power; None when none does."""
        parts = [self.cpu_package_power_watts, *(g.power_watts for g in self.gpus)]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None

    @property
    def max_temperature_c(self) -> float | None:
        values = [v for _, v in self.temperatures_c]
        values += [g.temperature_c for g in self.gpus if g.temperature_c is not None]
        return max(values) if values else None

    def verdict_for(self, device: str) -> DeviceVerdict | None:
        return next((v for v in self.verdicts if v.device == device), None)


# ---- throttle decoding ----------------------------------------------------------------------

# nvmlClocksEventReason* bits (nvml.h) and what they mean in words.
GPU_CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x0001, "idle"),
    (0x0002, "application clocks setting"),
    (0x0004, "power cap"),
    (0x0008, "hardware slowdown"),
    (0x0010, "sync boost"),
    (0x0020, "thermal (software)"),
    (0x0040, "thermal (hardware)"),
    (0x0080, "power brake"),
    (0x0100, "display clock setting"),
    (0x0200, "board limit"),
    (0x0400, "reliability"),
)
_GPU_THERMAL = 0x0020 | 0x0040
_GPU_POWER = 0x0004 | 0x0080
_GPU_OTHER = 0x0008 | 0x0200 | 0x0400  # hardware slowdown: heat or power, NVML does not say which


def decode_clock_event_reasons(mask: int | None) -> tuple[str, ...]:
    """NVML's clock-event (throttle) reasons bitmask in words; unknown bits as hex."""
    if mask is None:
        return ()
    words = [word for bit, word in GPU_CLOCK_EVENT_REASONS if mask & bit]
    known = 0
    for bit, _ in GPU_CLOCK_EVENT_REASONS:
        known |= bit
    if mask & ~known:
        words.append(f"0x{mask & ~known:x}")
    return tuple(words)


def gpu_verdict(index: int, mask: int | None) -> DeviceVerdict:
    device = f"GPU {index}"
    if mask is None:
        return DeviceVerdict(device, ThrottleVerdict.NOT_AVAILABLE, "clock-event reasons not reported")
    words = ", ".join(decode_clock_event_reasons(mask)) or "none"
    if mask & _GPU_THERMAL:
        return DeviceVerdict(device, ThrottleVerdict.THERMAL, words)
    if mask & _GPU_POWER:
        return DeviceVerdict(device, ThrottleVerdict.POWER, words)
    if mask & _GPU_OTHER:
        return DeviceVerdict(device, ThrottleVerdict.UNKNOWN, words)
    # Idle, application clocks, sync boost and display clocks lower the clock by choice.
    return DeviceVerdict(device, ThrottleVerdict.NOT_THROTTLING, words)


def cpu_verdict(
    *,
    thermal_events: int | None,
    power_events: int | None,
    cpu_percent: float | None,
    freq_mhz: float | None,
    freq_max_mhz: float | None,
) -> DeviceVerdict:
    """Throttle counters first; without them, a clock far below its maximum under load."""
    if thermal_events:
        return DeviceVerdict("CPU", ThrottleVerdict.THERMAL, f"{thermal_events} new thermal throttle events")
    if power_events:
        return DeviceVerdict("CPU", ThrottleVerdict.POWER, f"{power_events} new power-limit events")
    freq_known = freq_mhz is not None and freq_max_mhz is not None and freq_max_mhz > 0
    if freq_known and cpu_percent is not None and cpu_percent >= LOADED_CPU_PERCENT:
        assert freq_mhz is not None and freq_max_mhz is not None
        share = freq_mhz / freq_max_mhz
        if share < FREQ_DROP_FRACTION:
            return DeviceVerdict(
                "CPU",
                ThrottleVerdict.UNKNOWN,
                f"clock {freq_mhz:.0f} MHz is {share:.0%} of its {freq_max_mhz:.0f} MHz maximum "
                f"under {cpu_percent:.0f} % load",
            )
    if thermal_events is not None or freq_known:
        return DeviceVerdict("CPU", ThrottleVerdict.NOT_THROTTLING, "no throttle events, clock normal")
    return DeviceVerdict("CPU", ThrottleVerdict.NOT_AVAILABLE, "no throttle counters or clock limit readable")


# ---- collector --------------------------------------------------------------------------------


class Collector(Protocol):
    def collect(self) -> Snapshot: ...


def _psutil() -> Any:
    import psutil

    return psutil


def _cpu_total(times: Any) -> float:
    # As psutil computes it: on Linux guest time is already inside user and nice.
    total = float(sum(times))
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return total


def _cpu_busy(times: Any) -> float:
    return _cpu_total(times) - times.idle - getattr(times, "iowait", 0.0)


class SnapshotCollector:
    """Reads every source once per `collect()`; keeps the previous readings to compute rates.

    `root` is the filesystem root for /proc and /sys, `nvml` the NVML choke point, `ps` psutil (or
    a fake with its functions), `clock` the monotonic clock (tests make it jump).
    """

    def __init__(
        self,
        root: str = "/",
        nvml: Nvml | None = None,
        *,
        ps: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        self._ps = ps or _psutil()
        self._nvml = nvml or shared_nvml()
        self._clock = clock
        self._wall_clock = wall_clock
        self._pid = pid if pid is not None else os.getpid()
        self._process: Any = None
        self._root = root
        self._freq = CpuFrequencyReader(root, clock=clock)
        self._sensors = SensorReader(root)
        self._rapl = RaplReader(root)
        self._throttle = ThrottleCounterReader(root)
        self._log_once = LogOnce(log)
        self._prev_t: float | None = None
        self._prev_cpu: list[Any] | None = None
        self._prev_proc_cpu_s: float | None = None
        self._cpu_energy_total: float | None = None
        self._throttle_total: int | None = None

    def _safe(self, source: str, fn: Callable[[], Any], default: Any = None) -> Any:
        """One source's reading, or `default` when it raises (logged once per kind of failure)."""
        try:
            return fn()
        except Exception as exc:  # a failing source must never stop the others
            self._log_once(
                (source, type(exc).__name__),
                logging.WARNING,
                "telemetry source %s failed: %s: %s",
                source,
                type(exc).__name__,
                exc,
            )
            return default

    def collect(self) -> Snapshot:
        now = self._clock()
        interval: float | None = None
        if self._prev_t is not None:
            dt = now - self._prev_t
            # A clock that stands still or runs backwards gives no usable interval.
            interval = dt if dt > 0 and math.isfinite(dt) else None
        self._prev_t = now

        per_core, total = self._safe("cpu_times", self._cpu_percent, ((), None))
        freq = self._safe("cpu_freq", self._freq.read)
        freq_mhz = getattr(freq, "current_mhz", None)
        freq_max = getattr(freq, "max_mhz", None)
        load = self._safe("load_avg", lambda: tuple(float(x) for x in self._ps.getloadavg()))
        total_mem, available, swap_used = self._safe("memory", self._memory, (None, None, None))
        rss, proc_cpu = self._safe("process", lambda: self._process_usage(interval), (None, None))
        temps, fans = self._safe("sensors", self._sensors.read, ((), ()))
        power = self._safe("rapl", lambda: self._cpu_power(interval))
        counts = self._safe("throttle_counters", self._throttle.read)
        if counts is not None:
            new_events = counts.thermal_events + counts.power_limit_events
            self._throttle_total = (self._throttle_total or 0) + new_events
        gpus = self._safe("nvml", self._gpus, ())

        verdicts = [
            cpu_verdict(
                thermal_events=counts.thermal_events if counts else None,
                power_events=counts.power_limit_events if counts else None,
                cpu_percent=total,
                freq_mhz=freq_mhz,
                freq_max_mhz=freq_max,
            )
        ]
        verdicts += [gpu_verdict(g.index, g.throttle_reasons_mask) for g in gpus]
        return Snapshot(
            t_monotonic_s=now,
            t_unix_s=self._wall_clock(),
            interval_s=interval,
            cpu_percent=total,
            cpu_per_core_percent=per_core,
            cpu_freq_mhz=freq_mhz,
            cpu_freq_max_mhz=freq_max,
            load_avg=load if load is not None and len(load) == 3 else None,
            mem_total_bytes=total_mem,
            mem_used_bytes=total_mem - available if total_mem is not None and available is not None else None,
            mem_available_bytes=available,
            swap_used_bytes=swap_used,
            process_rss_bytes=rss,
            process_cpu_percent=proc_cpu,
            gpus=tuple(gpus),
            temperatures_c=tuple(temps),
            fans_rpm=tuple(fans),
            cpu_package_power_watts=power,
            cpu_energy_joules_total=self._cpu_energy_total,
            cpu_throttle_events_total=self._throttle_total,
            verdicts=tuple(verdicts),
        )

    # ---- sources -----------------------------------------------------------------------------
    def _cpu_percent(self) -> tuple[tuple[float, ...], float | None]:
        times = list(self._ps.cpu_times(percpu=True))
        prev, self._prev_cpu = self._prev_cpu, times
        if prev is None or len(prev) != len(times):  # first tick, or a CPU went on/offline
            return (), None
        per_core: list[float | None] = []
        busy_sum = total_sum = 0.0
        for before, after in zip(prev, times, strict=False):
            d_total = _cpu_total(after) - _cpu_total(before)
            d_busy = _cpu_busy(after) - _cpu_busy(before)
            per_core.append(_percent(d_busy, d_total))
            busy_sum += max(0.0, d_busy)
            total_sum += max(0.0, d_total)
        # A core whose counters did not move (a very short interval) has no figure; rather than
        # invent one, the per-core view is left out for this tick.
        cores = () if any(p is None for p in per_core) else tuple(p for p in per_core if p is not None)
        return cores, _percent(busy_sum, total_sum)

    def _memory(self) -> tuple[int | None, int | None, int | None]:
        """(total, available, swap used): /proc/meminfo where there is one, psutil elsewhere."""
        info = read_meminfo(self._root)
        if info is not None:
            swap_used = None
            if info.swap_total_bytes is not None and info.swap_free_bytes is not None:
                swap_used = info.swap_total_bytes - info.swap_free_bytes
            return info.total_bytes, info.available_bytes, swap_used
        vm = self._safe("virtual_memory", self._ps.virtual_memory)
        swap = self._safe("swap_memory", self._ps.swap_memory)
        return _int_attr(vm, "total"), _int_attr(vm, "available"), _int_attr(swap, "used")

    def _process_usage(self, interval: float | None) -> tuple[int | None, float | None]:
        if self._process is None:
            self._process = self._ps.Process(self._pid)
        rss = int(self._process.memory_info().rss)
        t = self._process.cpu_times()
        cpu_s = float(t.user + t.system)
        prev, self._prev_proc_cpu_s = self._prev_proc_cpu_s, cpu_s
        if prev is None or interval is None or cpu_s < prev:
            return rss, None
        return rss, (cpu_s - prev) / interval * 100.0

    def _cpu_power(self, interval: float | None) -> float | None:
        joules = self._rapl.read_delta_joules()
        if self._cpu_energy_total is None and self._rapl.readable:
            self._cpu_energy_total = 0.0  # counting starts at the first successful read
        if joules is None or interval is None or interval > MAX_ENERGY_GAP_S:
            return None
        self._cpu_energy_total = (self._cpu_energy_total or 0.0) + joules
        return joules / interval

    def _gpus(self) -> tuple[GpuSnapshot, ...]:
        nvml = self._nvml
        if not nvml.available():
            return ()
        return tuple(self._gpu(i) for i in nvml.device_indices())

    def _gpu(self, i: int) -> GpuSnapshot:
        q = self._nvml.device_query
        util = q(i, "nvmlDeviceGetUtilizationRates")
        memory = q(i, "nvmlDeviceGetMemoryInfo")
        mask = q(i, "nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None:
            mask = q(i, "nvmlDeviceGetCurrentClocksThrottleReasons")  # before driver 535
        mask_int = _to_int(mask)
        limit_mw = q(i, "nvmlDeviceGetEnforcedPowerLimit")
        energy_mj = q(i, "nvmlDeviceGetTotalEnergyConsumption")
        return GpuSnapshot(
            index=i,
            name=text(q(i, "nvmlDeviceGetName")),
            utilization_percent=_to_float(getattr(util, "gpu", None)),
            memory_used_bytes=_int_attr(memory, "used"),
            memory_total_bytes=_int_attr(memory, "total"),
            temperature_c=_to_float(q(i, "nvmlDeviceGetTemperature", NVML_TEMPERATURE_GPU)),
            power_watts=_to_float(q(i, "nvmlDeviceGetPowerUsage"), 1000.0),
            power_limit_watts=_to_float(limit_mw, 1000.0),
            sm_clock_mhz=_to_float(q(i, "nvmlDeviceGetClockInfo", NVML_CLOCK_SM)),
            memory_clock_mhz=_to_float(q(i, "nvmlDeviceGetClockInfo", NVML_CLOCK_MEM)),
            fan_percent=_to_float(q(i, "nvmlDeviceGetFanSpeed")),
            throttle_reasons_mask=mask_int,
            throttle_reasons=decode_clock_event_reasons(mask_int),
            energy_joules_total=_to_float(energy_mj, 1000.0),
            process_memory_bytes=_process_memory(q(i, "nvmlDeviceGetComputeRunningProcesses")),
        )


def _process_memory(processes: Any) -> int | None:
    """This process's GPU memory from NVML's process list; None when it is not listed or unknown."""
    if not processes:
        return None
    mine = [p for p in processes if getattr(p, "pid", None) == os.getpid()]
    used = [_int_attr(p, "usedGpuMemory") for p in mine]
    if not used or any(u is None for u in used):
        return None
    return sum(u for u in used if u is not None)


def _percent(part: float, whole: float) -> float | None:
    if whole <= 0 or not math.isfinite(whole):
        return None
    return min(100.0, max(0.0, part / whole * 100.0))


def _to_float(value: Any, scale: float = 1.0) -> float | None:
    try:
        result = None if value is None else float(value) / scale
    except (TypeError, ValueError):
        return None
    return result if result is not None and math.isfinite(result) else None


def _to_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _int_attr(obj: Any, name: str) -> int | None:
    return _to_int(getattr(obj, name, None)) if obj is not None else None


# ---- sampler ----------------------------------------------------------------------------------


def clamp_interval(seconds: float) -> float:
    if not math.isfinite(seconds):
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, float(seconds)))


def next_deadline(anchor: float, ticks: int, interval: float, now: float) -> tuple[float, int, float]:
    """The next tick on the schedule anchor + k x interval after tick number `ticks`.

    Returns (anchor, k, deadline). The deadline never drifts with the time each tick takes; a
    tick that fell behind (a slow source, a suspended machine) skips the missed slots instead of
    firing a burst, and a clock that went backwards re-anchors the schedule at `now`.
    """
    if now < anchor:
        return now, 1, now + interval
    k = ticks + 1
    deadline = anchor + k * interval
    if deadline <= now:
        k = math.floor((now - anchor) / interval) + 1
        deadline = anchor + k * interval
    return anchor, k, deadline


Listener = Callable[[Snapshot], None]


class Sampler:
    """Collects a snapshot every `interval_s` on its own thread and passes it to the listeners.

    Listeners are called on the sampler thread, in the order they were added; one that raises is
    logged once and keeps its place. `stop()` joins the thread.
    """

    def __init__(
        self,
        collector: Collector | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        name: str = THREAD_NAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collector = collector
        self._interval = clamp_interval(interval_s)
        self._name = name
        self._clock = clock
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Snapshot | None = None
        self._log_once = LogOnce(log)
        self.ticks = 0

    # ---- control (any thread) ----------------------------------------------------------------
    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def latest(self) -> Snapshot | None:
        """The most recent snapshot, or None before the first tick."""
        return self._latest

    def set_interval(self, seconds: float) -> None:
        """Change the rate (clamped to 0.1-5 s); a running sampler takes it from the next tick."""
        with self._lock:
            self._interval = clamp_interval(seconds)
        self._wake.set()

    def add_listener(self, callback: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, callback)

    def remove_listener(self, callback: Listener) -> None:
        with self._lock:
            listeners = list(self._listeners)
            if callback in listeners:
                listeners.remove(callback)
            self._listeners = tuple(listeners)

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the thread (a tick in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("telemetry sampler did not stop within %.0f s", timeout_s)
        self._thread = None

    # ---- the loop (sampler thread) -----------------------------------------------------------
    def _run(self) -> None:
        if self._collector is None:
            self._collector = self._safe_build_collector()
        interval = self._interval
        anchor = self._clock()
        ticks = 0
        while not self._stop.is_set():
            tick_t = self._clock()
            self._tick()
            anchor, ticks, deadline = next_deadline(anchor, ticks, interval, self._clock())
            while not self._stop.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                if self._wake.is_set():
                    self._wake.clear()
                    with self._lock:
                        new_interval = self._interval
                    if new_interval != interval:
                        # Restart the schedule from the last tick at the new rate.
                        interval, anchor, ticks = new_interval, tick_t, 0
                        anchor, ticks, deadline = next_deadline(anchor, ticks, interval, self._clock())

    def _safe_build_collector(self) -> Collector | None:
        try:
            return SnapshotCollector()
        except Exception as exc:
            log.warning("telemetry collector could not start: %s", exc)
            return None

    def _tick(self) -> None:
        collector = self._collector
        if collector is None:
            return
        try:
            snapshot = collector.collect()
        except Exception as exc:  # reported once per kind; the loop goes on
            self._log_once(
                ("collect", type(exc).__name__, str(exc)),
                logging.WARNING,
                "telemetry tick failed: %s: %s",
                type(exc).__name__,
                exc,
            )
            return
        self._latest = snapshot
        self.ticks += 1
        with self._lock:
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(snapshot)
            except Exception as exc:
                self._log_once(
                    ("listener", id(listener), type(exc).__name__),
                    logging.WARNING,
                    "telemetry listener %r failed: %s: %s",
                    listener,
                    type(exc).__name__,
                    exc,
                )


# ---- energy and summaries ---------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyReport:
    """Joules spent in a window, by source; None where no source measured it."""

    cpu_package_joules: float | None
    gpu_joules: float | None
    covered_s: float  # how much of the window measured intervals covered

    @property
    def total_joules(self) -> float | None:
        parts = [p for p in (self.cpu_package_joules, self.gpu_joules) if p is not None]
        return sum(parts) if parts else None


def _interval_energy(previous: Snapshot | None, s: Snapshot) -> tuple[float | None, float | None]:
    """(CPU package, GPUs) joules of the interval that ends at snapshot `s`."""
    if s.interval_s is None or s.interval_s <= 0:
        return None, None
    cpu = s.cpu_package_power_watts * s.interval_s if s.cpu_package_power_watts is not None else None
    gpu: float | None = None
    prev_gpus = {g.index: g for g in previous.gpus} if previous is not None else {}
    for g in s.gpus:
        before = prev_gpus.get(g.index)
        joules: float | None = None
        counter_before = before.energy_joules_total if before is not None else None
        if counter_before is not None and g.energy_joules_total is not None:
            delta = g.energy_joules_total - counter_before
            if delta >= 0:  # the counter resets when the driver reloads
                joules = delta
        if joules is None and g.power_watts is not None:
            joules = g.power_watts * s.interval_s
        if joules is not None:
            gpu = (gpu or 0.0) + joules
    return cpu, gpu


def energy_between(snapshots: Sequence[Snapshot], t_start_s: float, t_end_s: float) -> EnergyReport:
    """Joules spent between two monotonic times, by CPU package (RAPL) and GPUs (NVML).

    Each snapshot covers the interval (t - interval_s, t]; an interval that straddles the window
    edge counts in proportion to its overlap (power taken as constant within an interval).
    """
    cpu: float | None = None
    gpu: float | None = None
    covered = 0.0
    previous: Snapshot | None = None
    for s in snapshots:
        if s.interval_s is not None and s.interval_s > 0:
            start = s.t_monotonic_s - s.interval_s
            overlap = min(s.t_monotonic_s, t_end_s) - max(start, t_start_s)
            if overlap > 0:
                share = overlap / s.interval_s
                covered += overlap
                c, g = _interval_energy(previous, s)
                if c is not None:
                    cpu = (cpu or 0.0) + c * share
                if g is not None:
                    gpu = (gpu or 0.0) + g * share
        previous = s
    return EnergyReport(cpu, gpu, covered)


@dataclass(frozen=True)
class TelemetrySummary:
    n_samples: int
    mean_cpu_percent: float | None
    peak_rss_bytes: int | None
    mean_power_watts: float | None  # CPU package + GPUs, None when no power source
    energy_joules: float | None  # None when no power source
    max_temp_c: float | None
    throttle_events: int  # new throttle events (counter increases / GPU throttle ticks) in the window
    throttled: bool


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(snapshots: Sequence[Snapshot]) -> TelemetrySummary:
    """Reduce snapshots to one summary.

    Energy is the sum over the snapshots' intervals, so it covers from the tick before the first
    snapshot to the last one. Throttle events are the CPU counters' increase from the first to the
    last snapshot plus one per GPU per snapshot in which that GPU throttled.
    """
    snaps = list(snapshots)
    cpu = [s.cpu_percent for s in snaps if s.cpu_percent is not None]
    rss = [s.process_rss_bytes for s in snaps if s.process_rss_bytes is not None]
    power = [p for s in snaps if (p := s.total_power_watts) is not None]
    temps = [t for s in snaps if (t := s.max_temperature_c) is not None]

    energy: float | None = None
    previous: Snapshot | None = None
    for s in snaps:
        c, g = _interval_energy(previous, s)
        for part in (c, g):
            if part is not None:
                energy = (energy or 0.0) + part
        previous = s

    events = 0
    counters = [s.cpu_throttle_events_total for s in snaps if s.cpu_throttle_events_total is not None]
    if len(counters) >= 2:
        events += max(0, counters[-1] - counters[0])
    for s in snaps:
        events += sum(1 for v in s.verdicts if v.device.startswith("GPU") and v.verdict.is_throttling)
    return TelemetrySummary(
        n_samples=len(snaps),
        mean_cpu_percent=_mean(cpu),
        peak_rss_bytes=max(rss) if rss else None,
        mean_power_watts=_mean(power),
        energy_joules=energy,
        max_temp_c=max(temps) if temps else None,
        throttle_events=events,
        throttled=events > 0 or any(s.throttling for s in snaps),
    )


class TelemetryRecorder:
    """Collects the snapshots a running Sampler produces between `start()` and `stop()`. Thread-safe."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._lock = threading.Lock()
        self._snapshots: list[Snapshot] = []
        self._recording = False

    def start(self) -> None:
        """Begin collecting (again, from an empty list)."""
        with self._lock:
            self._snapshots = []
            self._recording = True
        self._sampler.remove_listener(self._on_snapshot)
        self._sampler.add_listener(self._on_snapshot)

    def stop(self) -> TelemetrySummary:
        """Stop collecting and summarise what was collected."""
        self._sampler.remove_listener(self._on_snapshot)
        with self._lock:
            self._recording = False
            snapshots = list(self._snapshots)
        return summarize(snapshots)

    @property
    def snapshots(self) -> tuple[Snapshot, ...]:
        with self._lock:
            return tuple(self._snapshots)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            if self._recording:
                self._snapshots.append(snapshot)
