"""What one reading of the hardware is: frozen snapshots, and the throttle verdicts read from them.

Units are in the field names. A value a source could not give is None, shown as "n/a".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Under this load, a clock far below its maximum is idling, not throttling.
LOADED_CPU_PERCENT = 80.0

# All-core boost is often 80-90 % of the single-core maximum cpuinfo_max_freq reports, so only a
# deeper drop under load counts as throttling.
FREQ_DROP_FRACTION = 0.75


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
