"""One reading of every source: psutil, NVML and sysfs, turned into a `Snapshot`.

Each source goes through its own reader (app.telemetry.sysfs, app.telemetry.nvml); a source that
fails is None in the snapshot and one line in the log, never an exception.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from app.telemetry.nvml import NVML_CLOCK_MEM, NVML_CLOCK_SM, NVML_TEMPERATURE_GPU, Nvml, shared_nvml, text
from app.telemetry.snapshot import GpuSnapshot, Snapshot, cpu_verdict, decode_clock_event_reasons, gpu_verdict
from app.telemetry.sysfs import (
    CpuFrequencyReader,
    LogOnce,
    RaplReader,
    SensorReader,
    ThrottleCounterReader,
    read_meminfo,
)

# A RAPL counter wraps within minutes at high power; after a longer gap (suspend) a single-wrap
# correction may be wrong, so that interval's energy is not counted.
MAX_ENERGY_GAP_S = 60.0

log = logging.getLogger(__name__)


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
