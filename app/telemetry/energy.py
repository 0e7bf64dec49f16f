"""Energy and summaries over a window of snapshots: joules per token, mean power, throttling.

`TelemetryRecorder` keeps the snapshots of a run; `summarize` and `energy_between` reduce them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from app.telemetry.sampler import Sampler
from app.telemetry.snapshot import Snapshot


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
    # The CPU clock over the window (mean over cores per snapshot), and its maximum as cpufreq reports
    # it: how far the clock moved while the work ran. None where no clock is readable.
    cpu_freq_min_mhz: float | None = None
    cpu_freq_max_mhz: float | None = None
    cpu_freq_limit_mhz: float | None = None
    throttle_detail: str = ""  # the throttling verdicts' evidence in words, "" when none throttled


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
    freqs = [f for s in snaps if (f := s.cpu_freq_mhz) is not None]
    limits = [f for s in snaps if (f := s.cpu_freq_max_mhz) is not None]
    details = list(
        dict.fromkeys(
            f"{v.device}: {v.verdict.value} ({v.detail})"
            for s in snaps
            for v in s.verdicts
            if v.verdict.is_throttling
        )
    )
    return TelemetrySummary(
        n_samples=len(snaps),
        mean_cpu_percent=_mean(cpu),
        peak_rss_bytes=max(rss) if rss else None,
        mean_power_watts=_mean(power),
        energy_joules=energy,
        max_temp_c=max(temps) if temps else None,
        throttle_events=events,
        throttled=events > 0 or any(s.throttling for s in snaps),
        cpu_freq_min_mhz=min(freqs) if freqs else None,
        cpu_freq_max_mhz=max(freqs) if freqs else None,
        cpu_freq_limit_mhz=max(limits) if limits else None,
        throttle_detail="; ".join(details[:3]) + (f" (+{len(details) - 3} more)" if len(details) > 3 else ""),
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
