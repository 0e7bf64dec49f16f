"""The telemetry sampler and its sources, against fake sysfs trees, a fake NVML, psutil and clock."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hardware_fakes import (
    LIBRARY_NOT_FOUND,
    FakeClock,
    FakeGpu,
    FakeNvmlModule,
    FakePsutil,
    build_x86_tree,
    gpu_processes,
    remove,
    two_gpu_nvml,
    write,
)

from app.telemetry.collector import SnapshotCollector
from app.telemetry.energy import TelemetryRecorder, energy_between, summarize
from app.telemetry.nvml import Nvml
from app.telemetry.sampler import Sampler, clamp_interval, next_deadline
from app.telemetry.snapshot import (
    DeviceVerdict,
    GpuSnapshot,
    Snapshot,
    ThrottleVerdict,
    cpu_verdict,
    decode_clock_event_reasons,
    gpu_verdict,
)
from app.telemetry.sysfs import (
    CpuFrequencyReader,
    MemInfo,
    RaplReader,
    SensorReader,
    ThrottleCounterReader,
    parse_cpuinfo,
    read_meminfo,
)

WAIT_S = 30  # generous for a shared machine; a hang still fails

# ---- sysfs readers -----------------------------------------------------------------------------


def _hwmon(root: Path) -> None:
    write(root, "/sys/class/hwmon/hwmon0/name", "coretemp")
    write(root, "/sys/class/hwmon/hwmon0/temp1_input", 55000)
    write(root, "/sys/class/hwmon/hwmon0/temp1_label", "Package id 0")
    write(root, "/sys/class/hwmon/hwmon0/temp2_input", 52500)
    write(root, "/sys/class/hwmon/hwmon0/temp2_label", "Core 0")
    write(root, "/sys/class/hwmon/hwmon1/name", "nvme")
    write(root, "/sys/class/hwmon/hwmon1/temp1_input", 38850)
    write(root, "/sys/class/hwmon/hwmon2/name", "thinkpad")
    write(root, "/sys/class/hwmon/hwmon2/fan1_input", 2400)


def test_hwmon_temperatures_and_fans_are_labelled_by_sensor(tmp_path: Path) -> None:
    _hwmon(tmp_path)
    temps, fans = SensorReader(str(tmp_path)).read()
    assert temps == (("coretemp Package id 0", 55.0), ("coretemp Core 0", 52.5), ("nvme temp1", 38.85))
    assert fans == (("thinkpad fan1", 2400.0),)


def test_a_sensor_that_vanishes_or_breaks_only_loses_itself(tmp_path: Path) -> None:
    _hwmon(tmp_path)
    reader = SensorReader(str(tmp_path))
    assert len(reader.read()[0]) == 3
    remove(tmp_path, "/sys/class/hwmon/hwmon1")  # the NVMe drive was unplugged
    write(tmp_path, "/sys/class/hwmon/hwmon0/temp2_input", "garbage")
    temps, fans = reader.read()
    assert temps == (("coretemp Package id 0", 55.0),)
    assert fans == (("thinkpad fan1", 2400.0),)
    write(tmp_path, "/sys/class/hwmon/hwmon3/name", "amdgpu")  # plugged in meanwhile
    write(tmp_path, "/sys/class/hwmon/hwmon3/temp1_input", 45000)
    write(tmp_path, "/sys/class/hwmon/hwmon0/temp2_input", -273150)  # a broken sensor, not a cold one
    # The failed read made the reader look for sensors again: the new one is found at once.
    assert dict(reader.read()[0]) == {"coretemp Package id 0": 55.0, "amdgpu temp1": 45.0}
    write(tmp_path, "/sys/class/hwmon/hwmon0/temp2_input", 60000)
    assert dict(reader.read()[0])["coretemp Core 0"] == 60.0


def test_thermal_zones_when_hwmon_has_no_temperatures(tmp_path: Path) -> None:
    write(tmp_path, "/sys/class/thermal/thermal_zone0/type", "x86_pkg_temp")
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", 47000)
    assert SensorReader(str(tmp_path)).read() == ((("x86_pkg_temp", 47.0),), ())
    assert SensorReader(str(tmp_path / "nothing")).read() == ((), ())


def test_rapl_package_energy_handles_the_wrap_around(tmp_path: Path) -> None:
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/name", "package-0")
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/max_energy_range_uj", 10_000_000)
    energy = write(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj", 1_000_000)
    # Neither the platform zone nor a sub-zone may be added to the package.
    write(tmp_path, "/sys/class/powercap/intel-rapl:1/name", "psys")
    write(tmp_path, "/sys/class/powercap/intel-rapl:1/energy_uj", 5)
    write(tmp_path, "/sys/class/powercap/intel-rapl:0:0/name", "core")
    write(tmp_path, "/sys/class/powercap/intel-rapl:0:0/energy_uj", 5)
    reader = RaplReader(str(tmp_path))
    assert reader.read_delta_joules() is None  # first read: a baseline
    energy.write_text("5000000\n")
    assert reader.read_delta_joules() == pytest.approx(4.0)
    energy.write_text("2000000\n")  # wrapped: 5 -> 10 -> 0 -> 2 J
    assert reader.read_delta_joules() == pytest.approx(7.0)


def test_rapl_unreadable_or_malformed_reads_none(tmp_path: Path) -> None:
    assert RaplReader(str(tmp_path)).read_delta_joules() is None  # no powercap at all
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/name", "package-0")
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").mkdir()  # open() fails, as for EACCES
    reader = RaplReader(str(tmp_path))
    assert reader.read_delta_joules() is None and not reader.readable
    remove(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj")
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj", "n/a")
    assert reader.read_delta_joules() is None
    # A counter that went down with no known range cannot be corrected.
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj", 500)
    reader.read_delta_joules()
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj", 100)
    assert reader.read_delta_joules() is None


def _throttle_tree(root: Path) -> None:
    # cpu0 and cpu1 are hyper-threads of core 0, cpu2 is core 1 (package 0); cpu3 is package 1.
    for cpu, package, core in ((0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 0)):
        base = f"/sys/devices/system/cpu/cpu{cpu}"
        write(root, f"{base}/topology/physical_package_id", package)
        write(root, f"{base}/topology/core_id", core)
        write(root, f"{base}/thermal_throttle/core_throttle_count", 10)
        write(root, f"{base}/thermal_throttle/package_throttle_count", 100 + package)


def _set_counter(root: Path, cpus: list[int], name: str, value: int) -> None:
    for cpu in cpus:
        write(root, f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle/{name}", value)


def test_throttle_counters_count_each_core_and_package_once(tmp_path: Path) -> None:
    _throttle_tree(tmp_path)
    reader = ThrottleCounterReader(str(tmp_path))
    first = reader.read()
    assert first is not None and first.thermal_events == 0  # a baseline
    _set_counter(tmp_path, [0, 1, 2], "package_throttle_count", 102)  # package 0: +2, seen by 3 CPUs
    _set_counter(tmp_path, [0, 1], "core_throttle_count", 11)  # core 0 of package 0: +1, seen by 2 CPUs
    counts = reader.read()
    assert counts is not None and counts.thermal_events == 3
    _set_counter(tmp_path, [3], "package_throttle_count", 0)  # reset (CPU offlined and back)
    counts = reader.read()
    assert counts is not None and counts.thermal_events == 0
    _set_counter(tmp_path, [3], "package_throttle_count", 4)
    assert reader.read().thermal_events == 4  # type: ignore[union-attr]


def test_no_throttle_counters_reads_none(tmp_path: Path) -> None:
    build_x86_tree(tmp_path)  # cpufreq and topology, but no thermal_throttle (AMD, VMs)
    assert ThrottleCounterReader(str(tmp_path)).read() is None


def test_cpu_frequency_from_cpufreq_else_cpuinfo(tmp_path: Path) -> None:
    build_x86_tree(tmp_path, cpus=2, mhz=3100.0)
    freq = CpuFrequencyReader(str(tmp_path)).read()
    assert (freq.current_mhz, freq.min_mhz, freq.max_mhz) == (3100.0, 400.0, 4800.0)
    vm = tmp_path / "vm"
    write(vm, "/proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 2596.1\n\nprocessor\t: 1\ncpu MHz\t\t: 2600.1\n")
    clock = FakeClock()
    reader = CpuFrequencyReader(str(vm), cpuinfo_every_s=5.0, clock=clock)
    freq = reader.read()
    assert freq.current_mhz == pytest.approx(2598.1) and freq.max_mhz is None
    # /proc/cpuinfo is costly to read: it is read again only after cpuinfo_every_s.
    write(vm, "/proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 1000.0\n")
    clock.advance(1.0)
    assert reader.read().current_mhz == pytest.approx(2598.1)
    clock.advance(5.0)
    assert reader.read().current_mhz == pytest.approx(1000.0)
    clock.advance(-100.0)  # a clock that went backwards does not freeze the cache
    write(vm, "/proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 1200.0\n")
    assert reader.read().current_mhz == pytest.approx(1200.0)


def test_memory_from_proc_meminfo(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/proc/meminfo",
        "MemTotal:       16384000 kB\nMemFree:   1000 kB\n"
        "MemAvailable:   8192000 kB\nSwapTotal:       2048000 kB\nSwapFree:        1024000 kB\n",
    )
    info = read_meminfo(str(tmp_path))
    assert info == MemInfo(16384000 * 1024, 8192000 * 1024, 2048000 * 1024, 1024000 * 1024)
    write(tmp_path, "/proc/meminfo", "MemTotal: lots\n")
    assert read_meminfo(str(tmp_path)) is None  # malformed: the caller falls back to psutil
    assert read_meminfo(str(tmp_path / "none")) is None


def test_parse_cpuinfo_blocks() -> None:
    blocks = parse_cpuinfo("processor\t: 0\nflags\t: a b\n\nprocessor\t: 1\nbroken line\n")
    assert blocks == [{"processor": "0", "flags": "a b"}, {"processor": "1"}]


# ---- NVML choke point ----------------------------------------------------------------------------


def test_unsupported_nvml_calls_are_asked_once_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    module = two_gpu_nvml()
    nvml = Nvml(module)
    with caplog.at_level(logging.DEBUG, logger="app.telemetry.nvml"):
        for _ in range(5):
            assert nvml.device_query(1, "nvmlDeviceGetFanSpeed") is None
    assert module.calls["nvmlDeviceGetFanSpeed"] == 1
    assert sum("nvmlDeviceGetFanSpeed" in r.message for r in caplog.records) == 1
    assert nvml.device_query(0, "nvmlDeviceGetFanSpeed") == 40  # the other GPU still answers
    assert nvml.device_query(7, "nvmlDeviceGetFanSpeed") is None  # no such GPU
    assert module.calls["nvmlInit"] == 1  # initialised once, lazily


def test_a_lost_gpu_answers_none_without_more_driver_calls() -> None:
    module = two_gpu_nvml()
    nvml = Nvml(module)
    assert nvml.device_query(0, "nvmlDeviceGetTemperature", 0) == 61
    module.gpus[0].lost = True
    assert nvml.device_query(0, "nvmlDeviceGetTemperature", 0) is None
    calls = dict(module.calls)
    assert nvml.device_query(0, "nvmlDeviceGetPowerUsage") is None
    assert module.calls == calls
    assert nvml.is_lost(0) and not nvml.is_lost(1)


def test_nvml_errors_of_any_kind_become_none(caplog: pytest.LogCaptureFixture) -> None:
    module = FakeNvmlModule([FakeGpu("A", nvmlDeviceGetTemperature=RuntimeError("driver hiccup"))])
    nvml = Nvml(module)
    with caplog.at_level(logging.WARNING, logger="app.telemetry.nvml"):
        for _ in range(3):
            assert nvml.device_query(0, "nvmlDeviceGetTemperature", 0) is None
    assert len(caplog.records) == 1  # a transient error is retried, but logged once
    assert module.calls["nvmlDeviceGetTemperature"] == 3


# ---- verdicts ---------------------------------------------------------------------------------


def test_clock_event_reasons_in_words_and_gpu_verdicts() -> None:
    assert decode_clock_event_reasons(0x4 | 0x40) == ("power cap", "thermal (hardware)")
    assert decode_clock_event_reasons(0x1 | 0x8000) == ("idle", "0x8000")
    assert decode_clock_event_reasons(None) == ()
    assert gpu_verdict(0, 0x4 | 0x40).verdict is ThrottleVerdict.THERMAL
    assert gpu_verdict(0, 0x4).verdict is ThrottleVerdict.POWER
    assert gpu_verdict(0, 0x8).verdict is ThrottleVerdict.UNKNOWN
    assert gpu_verdict(0, 0x1).verdict is ThrottleVerdict.NOT_THROTTLING  # idle is a choice, not a throttle
    assert gpu_verdict(1, None).verdict is ThrottleVerdict.NOT_AVAILABLE
    assert gpu_verdict(1, None).device == "GPU 1"


def test_cpu_verdicts() -> None:
    def v(**kw: object) -> ThrottleVerdict:
        args = {
            "thermal_events": 0,
            "power_events": 0,
            "cpu_percent": 50.0,
            "freq_mhz": 4000.0,
            "freq_max_mhz": 4800.0,
            **kw,
        }
        return cpu_verdict(**args).verdict  # type: ignore[arg-type]

    assert v() is ThrottleVerdict.NOT_THROTTLING
    assert v(thermal_events=2) is ThrottleVerdict.THERMAL
    assert v(power_events=1) is ThrottleVerdict.POWER
    assert v(cpu_percent=95.0, freq_mhz=1200.0) is ThrottleVerdict.UNKNOWN  # clock far below max under load
    assert v(cpu_percent=10.0, freq_mhz=1200.0) is ThrottleVerdict.NOT_THROTTLING  # idle clocks down
    assert v(thermal_events=None, power_events=None, freq_max_mhz=None) is ThrottleVerdict.NOT_AVAILABLE
    assert v(thermal_events=None, power_events=None, freq_max_mhz=0.0) is ThrottleVerdict.NOT_AVAILABLE


# ---- collector --------------------------------------------------------------------------------


class Rig:
    """A fake machine: sysfs tree, psutil, NVML and clock, wired into one collector."""

    def __init__(self, root: Path, nvml_module: FakeNvmlModule | None = None) -> None:
        self.root = root
        build_x86_tree(root, cpus=2)
        _hwmon(root)
        write(root, "/sys/class/powercap/intel-rapl:0/name", "package-0")
        write(root, "/sys/class/powercap/intel-rapl:0/max_energy_range_uj", 262_143_328_850)
        self.energy = write(root, "/sys/class/powercap/intel-rapl:0/energy_uj", 0)
        for cpu in (0, 1):
            write(root, f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle/core_throttle_count", 0)
            write(root, f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle/package_throttle_count", 0)
        self.ps = FakePsutil(cores=2)
        self.clock = FakeClock()
        self.module = nvml_module if nvml_module is not None else two_gpu_nvml()
        self.collector = SnapshotCollector(
            str(root), Nvml(self.module), ps=self.ps, clock=self.clock, wall_clock=lambda: 1.7e9
        )

    def tick(self, seconds: float = 0.5, *, joules: float = 10.0, busy: float = 0.25) -> Snapshot:
        self.clock.advance(seconds)
        self.ps.advance(busy_s=busy, idle_s=seconds - busy, process_s=busy)
        self.energy.write_text(f"{int(self.energy.read_text()) + int(joules * 1e6)}\n")
        return self.collector.collect()


def test_memory_comes_from_meminfo_when_there_is_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write(
        tmp_path,
        "/proc/meminfo",
        "MemTotal: 1000 kB\nMemAvailable: 400 kB\nSwapTotal: 100 kB\nSwapFree: 30 kB\n",
    )
    s = rig.collector.collect()
    assert (s.mem_total_bytes, s.mem_used_bytes, s.mem_available_bytes) == (
        1000 * 1024,
        600 * 1024,
        400 * 1024,
    )
    assert s.swap_used_bytes == 70 * 1024
    write(tmp_path, "/proc/meminfo", "MemTotal: 1000 kB\n")  # no MemAvailable (old kernel): psutil
    assert rig.collector.collect().mem_available_bytes == 10 * 1024**3


def test_first_snapshot_has_levels_and_no_rates(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    s = rig.collector.collect()
    assert s.interval_s is None and s.cpu_percent is None and s.cpu_per_core_percent == ()
    assert s.process_cpu_percent is None and s.cpu_package_power_watts is None
    assert s.cpu_energy_joules_total == 0.0  # readable: counting starts here
    assert s.mem_used_bytes == 6 * 1024**3 and s.mem_available_bytes == 10 * 1024**3
    assert s.load_avg == (1.5, 1.0, 0.5)
    assert s.cpu_freq_mhz == 2900.0 and s.cpu_freq_max_mhz == 4800.0
    assert dict(s.temperatures_c)["coretemp Package id 0"] == 55.0
    assert s.t_unix_s == 1.7e9


def test_rates_energy_gpus_and_verdicts(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.collector.collect()
    s = rig.tick(0.5, joules=10.0, busy=0.25)
    assert s.interval_s == pytest.approx(0.5)
    assert s.cpu_percent == pytest.approx(50.0)
    assert s.cpu_per_core_percent == pytest.approx((50.0, 50.0))
    assert s.process_cpu_percent == pytest.approx(50.0)  # 0.25 s of CPU in 0.5 s: half a core
    assert s.cpu_package_power_watts == pytest.approx(20.0)
    assert s.cpu_energy_joules_total == pytest.approx(10.0)
    assert s.cpu_throttle_events_total == 0
    first, second = s.gpus
    assert first.name == "RTX 4090" and first.utilization_percent == 55.0
    assert first.power_watts == 250.0 and first.power_limit_watts == 450.0
    assert (first.sm_clock_mhz, first.memory_clock_mhz) == (2520.0, 10501.0)
    assert first.throttle_reasons == ("power cap", "thermal (hardware)")
    assert first.energy_joules_total == 1000.0
    assert second.fan_percent is None and second.energy_joules_total is None  # "not supported": n/a
    assert second.temperature_c == 61.0
    assert s.verdict_for("CPU").verdict is ThrottleVerdict.NOT_THROTTLING  # type: ignore[union-attr]
    assert s.verdict_for("GPU 0").verdict is ThrottleVerdict.THERMAL  # type: ignore[union-attr]
    assert s.verdict_for("GPU 1").verdict is ThrottleVerdict.NOT_THROTTLING  # type: ignore[union-attr]
    assert s.throttling
    assert s.max_temperature_c == 61.0  # the GPUs are hotter than the CPU here
    assert s.total_power_watts == pytest.approx(20.0 + 250.0 + 250.0)


def test_rising_throttle_counters_give_a_thermal_verdict(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FakeNvmlModule([]))
    rig.collector.collect()
    _set_counter(tmp_path, [0, 1], "package_throttle_count", 3)
    s = rig.tick()
    assert s.cpu_throttle_events_total == 3
    assert s.verdict_for("CPU").verdict is ThrottleVerdict.THERMAL  # type: ignore[union-attr]
    s = rig.tick()
    assert s.cpu_throttle_events_total == 3
    assert s.verdict_for("CPU").verdict is ThrottleVerdict.NOT_THROTTLING  # type: ignore[union-attr]


def test_a_clock_that_jumps_backwards_or_stands_still_gives_no_rates(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.collector.collect()
    s = rig.tick(-3.0, busy=0.0)
    assert s.interval_s is None and s.cpu_package_power_watts is None and s.process_cpu_percent is None
    s = rig.tick(0.0, busy=0.0)
    assert s.interval_s is None and s.cpu_package_power_watts is None
    s = rig.tick(0.5)
    assert s.cpu_package_power_watts == pytest.approx(20.0)  # and it recovers
    s = rig.tick(3600.0)  # a suspended machine: the RAPL counter may have wrapped more than once
    assert s.cpu_package_power_watts is None
    assert all(math.isfinite(p) for p in s.cpu_per_core_percent)


def test_failing_sources_are_n_a_only_where_they_matter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.collector.collect()
    rig.ps.fail |= {"virtual_memory", "process", "getloadavg"}
    rig.module.raise_on["nvmlDeviceGetPowerUsage"] = 999  # "unknown error" on every GPU
    (tmp_path / "proc/cpuinfo").unlink()
    remove(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq")
    remove(tmp_path, "/sys/devices/system/cpu/cpu1/cpufreq")
    write(tmp_path, "/sys/class/powercap/intel-rapl:0/energy_uj", "garbage")
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            rig.clock.advance(0.5)
            rig.ps.advance(busy_s=0.1, idle_s=0.4)
            s = rig.collector.collect()
    assert s.mem_used_bytes is None and s.mem_available_bytes is None and s.load_avg is None
    assert s.process_rss_bytes is None and s.process_cpu_percent is None
    assert s.cpu_package_power_watts is None
    assert all(g.power_watts is None for g in s.gpus)
    assert all(g.temperature_c == 61.0 for g in s.gpus)  # the rest of NVML still answers
    # ... and the rest of the machine still reads
    assert s.swap_used_bytes == 0 and s.cpu_percent is not None and s.temperatures_c
    # Each distinct failure is logged once, not once per tick.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages))
    assert sum("virtual_memory" in m for m in messages) == 1


def test_this_process_gpu_memory_comes_from_nvml_process_list(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    s = rig.tick()
    assert s.gpus[0].process_memory_bytes == 3 * 1024**3 // 2  # ours, not the other process's
    assert s.gpus[1].process_memory_bytes is None  # no process list: not known, not zero
    first = rig.module.gpus[0]
    first.answers["nvmlDeviceGetComputeRunningProcesses"] = gpu_processes((1, 1024**3))
    assert rig.tick().gpus[0].process_memory_bytes is None  # not listed (another PID namespace?)
    first.answers["nvmlDeviceGetComputeRunningProcesses"] = gpu_processes((os.getpid(), None))
    assert rig.tick().gpus[0].process_memory_bytes is None  # listed, amount not reported


def test_a_gpu_that_vanishes_is_n_a_and_nothing_else(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.collector.collect()
    rig.module.gpus[1].lost = True
    s = rig.tick()
    assert s.gpus[0].temperature_c == 61.0
    gone = s.gpus[1]
    assert gone.utilization_percent is None and gone.memory_used_bytes is None and gone.temperature_c is None
    assert s.verdict_for("GPU 1").verdict is ThrottleVerdict.NOT_AVAILABLE  # type: ignore[union-attr]
    assert s.cpu_package_power_watts == pytest.approx(20.0)


def test_no_nvidia_driver_means_no_gpus(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FakeNvmlModule([], init_error=LIBRARY_NOT_FOUND))
    assert rig.tick().gpus == ()


def test_cpus_going_offline_reset_the_per_core_rates(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.collector.collect()
    rig.ps.per_cpu = rig.ps.per_cpu[:1]
    assert rig.tick().cpu_per_core_percent == ()
    assert len(rig.tick().cpu_per_core_percent) == 1


# ---- sampler ----------------------------------------------------------------------------------


def test_schedule_does_not_drift_skips_missed_slots_and_survives_a_backwards_clock() -> None:
    assert next_deadline(100.0, 0, 0.5, 100.2) == (100.0, 1, 100.5)
    # A slow tick does not push the schedule: tick 3 is still at anchor + 1.5.
    assert next_deadline(100.0, 2, 0.5, 101.45) == (100.0, 3, 101.5)
    # Far behind (suspend): skip to the next slot instead of a burst of ticks.
    assert next_deadline(100.0, 3, 0.5, 110.2) == (100.0, 21, 110.5)
    # The clock went backwards: start the schedule again from now.
    assert next_deadline(100.0, 3, 0.5, 50.0) == (50.0, 1, 50.5)


def test_interval_is_clamped() -> None:
    assert clamp_interval(0.001) == 0.1
    assert clamp_interval(60) == 5.0
    assert clamp_interval(float("nan")) == 0.5
    sampler = Sampler(interval_s=0.01)
    assert sampler.interval_s == 0.1
    sampler.set_interval(2.0)
    assert sampler.interval_s == 2.0


class CountingCollector:
    """Returns synthetic snapshots, or raises on every tick when `fail`."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.called = threading.Event()

    def collect(self) -> Snapshot:
        self.calls += 1
        self.called.set()
        if self.fail:
            raise RuntimeError("sensor exploded")
        return make_snapshot(float(self.calls), interval=0.1)


def _wait_for(condition, timeout: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    event = threading.Event()
    while not condition():
        if event.wait(0.01) or timeout <= 0:
            break
        timeout -= 0.01
    assert condition(), "condition not met in time"


def test_sampler_feeds_several_listeners_on_a_named_thread_and_stop_joins() -> None:
    collector = CountingCollector()
    sampler = Sampler(collector, interval_s=0.1)
    got_a: list[Snapshot] = []
    got_b: list[Snapshot] = []
    threads: set[str] = set()

    def listener_a(s: Snapshot) -> None:
        threads.add(threading.current_thread().name)
        got_a.append(s)

    sampler.add_listener(listener_a)
    sampler.add_listener(got_b.append)
    sampler.start()
    try:
        _wait_for(lambda: len(got_a) >= 3 and len(got_b) >= 3)
        sampler.remove_listener(got_b.append)
        n_b = len(got_b)
        n_a = len(got_a)
        _wait_for(lambda: len(got_a) >= n_a + 2)
        assert len(got_b) <= n_b + 1  # at most a tick that was already under way
        assert sampler.latest is not None
    finally:
        sampler.stop()
    assert not sampler.running
    assert threads == {"llamascope-telemetry"}


def test_exceptions_in_the_loop_are_logged_once_and_sampling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = CountingCollector(fail=True)
    sampler = Sampler(collector, interval_s=0.1)
    with caplog.at_level(logging.WARNING, logger="app.telemetry.sampler"):
        sampler.start()
        try:
            _wait_for(lambda: collector.calls >= 4)
        finally:
            sampler.stop()
    assert sum("sensor exploded" in r.getMessage() for r in caplog.records) == 1


def test_a_failing_listener_does_not_starve_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sampler = Sampler(CountingCollector(), interval_s=0.1)
    got: list[Snapshot] = []

    def bad(_s: Snapshot) -> None:
        raise ValueError("listener bug")

    sampler.add_listener(bad)
    sampler.add_listener(got.append)
    with caplog.at_level(logging.WARNING, logger="app.telemetry.sampler"):
        sampler.start()
        try:
            _wait_for(lambda: len(got) >= 3)
        finally:
            sampler.stop()
    assert sum("listener bug" in r.getMessage() for r in caplog.records) == 1


def test_set_interval_takes_effect_without_waiting_out_the_old_one() -> None:
    collector = CountingCollector()
    sampler = Sampler(collector, interval_s=5.0)
    sampler.start()
    try:
        _wait_for(lambda: collector.calls >= 1)
        sampler.set_interval(0.1)
        # At 5 s per tick a second tick would need 5 s; after the change it comes at once.
        _wait_for(lambda: collector.calls >= 3, timeout=4.0)
    finally:
        sampler.stop()


def test_stop_is_prompt_even_with_a_long_interval_and_restart_works() -> None:
    collector = CountingCollector()
    sampler = Sampler(collector, interval_s=5.0)
    sampler.start()
    _wait_for(lambda: collector.calls >= 1)
    sampler.stop()
    assert not sampler.running
    sampler.start()
    _wait_for(lambda: collector.calls >= 2)
    sampler.stop()
    assert not sampler.running


def test_sampler_with_the_real_collector_on_this_machine() -> None:
    sampler = Sampler(interval_s=0.1)
    got: list[Snapshot] = []
    sampler.add_listener(got.append)
    sampler.start()
    try:
        _wait_for(lambda: len(got) >= 2)
    finally:
        sampler.stop()
    s = got[-1]
    assert s.cpu_percent is not None and 0 <= s.cpu_percent <= 100
    assert s.mem_used_bytes and s.process_rss_bytes
    assert s.verdict_for("CPU") is not None


# ---- summaries and energy ---------------------------------------------------------------------


def make_snapshot(
    t: float,
    *,
    interval: float | None = 0.5,
    cpu: float | None = 50.0,
    rss: int | None = 100,
    cpu_power: float | None = None,
    gpus: tuple[GpuSnapshot, ...] = (),
    temps: tuple[tuple[str, float], ...] = (),
    throttle_total: int | None = None,
    cpu_verdict_value: ThrottleVerdict = ThrottleVerdict.NOT_AVAILABLE,
) -> Snapshot:
    verdicts = (DeviceVerdict("CPU", cpu_verdict_value, ""),) + tuple(
        gpu_verdict(g.index, g.throttle_reasons_mask) for g in gpus
    )
    return Snapshot(
        t_monotonic_s=t,
        t_unix_s=t,
        interval_s=interval,
        cpu_percent=cpu,
        cpu_per_core_percent=(),
        cpu_freq_mhz=None,
        cpu_freq_max_mhz=None,
        load_avg=None,
        mem_total_bytes=None,
        mem_used_bytes=None,
        mem_available_bytes=None,
        swap_used_bytes=None,
        process_rss_bytes=rss,
        process_cpu_percent=None,
        gpus=gpus,
        temperatures_c=temps,
        fans_rpm=(),
        cpu_package_power_watts=cpu_power,
        cpu_energy_joules_total=None,
        cpu_throttle_events_total=throttle_total,
        verdicts=verdicts,
    )


def make_gpu(
    index: int = 0,
    *,
    power: float | None = 100.0,
    energy: float | None = None,
    mask: int | None = 0,
    temp: float | None = 70.0,
) -> GpuSnapshot:
    return GpuSnapshot(
        index=index,
        name="G",
        utilization_percent=90.0,
        memory_used_bytes=1,
        memory_total_bytes=2,
        temperature_c=temp,
        power_watts=power,
        power_limit_watts=300.0,
        sm_clock_mhz=None,
        memory_clock_mhz=None,
        fan_percent=None,
        throttle_reasons_mask=mask,
        throttle_reasons=decode_clock_event_reasons(mask),
        energy_joules_total=energy,
    )


def test_summary_of_cpu_only_snapshots_without_power() -> None:
    snaps = [
        make_snapshot(t, cpu=c, rss=r, temps=(("cpu", tc),))
        for t, c, r, tc in ((1, 20.0, 100, 50.0), (1.5, 40.0, 300, 65.0), (2, None, 200, 60.0))
    ]
    summary = summarize(snaps)
    assert summary.n_samples == 3
    assert summary.mean_cpu_percent == pytest.approx(30.0)
    assert summary.peak_rss_bytes == 300
    assert summary.max_temp_c == 65.0
    assert summary.mean_power_watts is None and summary.energy_joules is None
    assert summary.throttle_events == 0 and not summary.throttled


def test_summary_energy_uses_rapl_and_gpu_counters() -> None:
    snaps = [
        make_snapshot(1.0, interval=0.5, cpu_power=20.0, gpus=(make_gpu(power=100.0, energy=1000.0),)),
        make_snapshot(1.5, interval=0.5, cpu_power=30.0, gpus=(make_gpu(power=100.0, energy=1080.0),)),
        make_snapshot(2.0, interval=0.5, cpu_power=10.0, gpus=(make_gpu(power=200.0, energy=None),)),
    ]
    summary = summarize(snaps)
    # CPU: (20 + 30 + 10) W x 0.5 s = 30 J. GPU: 100 W x 0.5 s (no previous counter), then the
    # counter's 80 J, then 200 W x 0.5 s (counter gone) = 50 + 80 + 100 J.
    assert summary.energy_joules == pytest.approx(30.0 + 230.0)
    assert summary.mean_power_watts == pytest.approx((120 + 130 + 210) / 3)


def test_energy_between_clips_intervals_at_the_window_edges() -> None:
    snaps = [
        make_snapshot(t, interval=1.0, cpu_power=10.0, gpus=(make_gpu(power=50.0),)) for t in (1, 2, 3, 4)
    ]
    report = energy_between(snaps, 1.5, 3.25)  # covers (0,1] no, (1,2] half, (2,3] all, (3,4] a quarter
    assert report.covered_s == pytest.approx(1.75)
    assert report.cpu_package_joules == pytest.approx(17.5)
    assert report.gpu_joules == pytest.approx(87.5)
    assert report.total_joules == pytest.approx(105.0)
    empty = energy_between(snaps, 10.0, 20.0)
    assert empty.total_joules is None and empty.covered_s == 0.0
    no_power = energy_between([make_snapshot(1.0)], 0.0, 2.0)
    assert no_power.total_joules is None and no_power.covered_s == pytest.approx(0.5)


def test_a_gpu_energy_counter_reset_falls_back_to_power() -> None:
    snaps = [
        make_snapshot(1.0, gpus=(make_gpu(power=100.0, energy=5000.0),)),
        make_snapshot(1.5, gpus=(make_gpu(power=100.0, energy=10.0),)),
    ]  # driver reloaded
    assert summarize(snaps).energy_joules == pytest.approx(100.0)


def test_throttle_events_count_counter_increases_and_gpu_ticks() -> None:
    hot = 0x40
    snaps = [
        make_snapshot(1.0, throttle_total=5, gpus=(make_gpu(mask=0),)),
        make_snapshot(1.5, throttle_total=7, gpus=(make_gpu(mask=hot),)),
        make_snapshot(2.0, throttle_total=9, gpus=(make_gpu(mask=hot),)),
    ]
    summary = summarize(snaps)
    assert summary.throttle_events == 4 + 2
    assert summary.throttled
    one = summarize([make_snapshot(1.0, throttle_total=3, cpu_verdict_value=ThrottleVerdict.THERMAL)])
    assert one.throttle_events == 0 and one.throttled  # the verdict saw it, the window is too short to count


def test_summary_of_nothing() -> None:
    summary = summarize([])
    assert summary.n_samples == 0 and summary.mean_cpu_percent is None and summary.energy_joules is None
    assert summary.peak_rss_bytes is None and summary.max_temp_c is None and not summary.throttled


def test_recorder_collects_only_between_start_and_stop() -> None:
    collector = CountingCollector()
    sampler = Sampler(collector, interval_s=0.1)
    recorder = TelemetryRecorder(sampler)
    sampler.start()
    try:
        _wait_for(lambda: collector.calls >= 2)
        recorder.start()
        _wait_for(lambda: len(recorder.snapshots) >= 3)
        summary = recorder.stop()
        n = len(recorder.snapshots)
        assert summary.n_samples == n >= 3
        calls = collector.calls
        _wait_for(lambda: collector.calls >= calls + 2)
        assert len(recorder.snapshots) == n  # nothing after stop
        recorder.start()  # again, from an empty list
        assert recorder.snapshots == ()
        _wait_for(lambda: len(recorder.snapshots) >= 1)
        assert recorder.stop().n_samples >= 1
    finally:
        sampler.stop()


# ---- CLI --------------------------------------------------------------------------------------


def test_monitor_csv_for_a_few_seconds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "monitor", "--interval", "0.1", "--seconds", "1", "--csv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    header, data = rows[0], rows[1:]
    assert header[:3] == ["t_unix_s", "cpu_percent", "cpu_freq_mhz"]
    assert "throttle[CPU]" in header
    assert data and all(len(r) == len(header) for r in data)
    assert all(0 <= float(r[1]) <= 100 for r in data)


def test_monitor_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "monitor", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "CPU" in first and "RAM" in first
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_monitor_rejects_bad_arguments() -> None:
    for args in (["--interval", "0"], ["--interval", "60"], ["--seconds", "-1"]):
        result = subprocess.run(
            [sys.executable, "-m", "cli", "monitor", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, args
        assert "llamascope:" in result.stderr
