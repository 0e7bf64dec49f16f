"""Readers of Linux's /proc and /sys for the telemetry sampler and the hardware detection.

Every reader takes a filesystem root (``"/"`` in the application, a fake tree in the tests) and
returns None for what it cannot read: a missing file is a normal state (no RAPL on this CPU, no
sensors in a VM, root-only counters), never a crash. `LogOnce` keeps the log quiet: each distinct
failure is written once, not every 500 ms.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class LogOnce:
    """Logs a message the first time its key is seen and never again (thread-safe)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def __call__(self, key: Hashable, level: int, message: str, *args: object) -> bool:
        """Log `message % args` at `level` if `key` is new; True when it was logged."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        self._logger.log(level, message, *args)
        return True

    def seen(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._seen


_failures = LogOnce(log)


def _report(path: Path, exc: Exception) -> None:
    # A file that does not exist is how a machine says "no such sensor": debug only. Anything else
    # (permission denied, an I/O error, garbage in the file) is worth one line at info.
    level = logging.DEBUG if isinstance(exc, FileNotFoundError) else logging.INFO
    _failures((str(path), type(exc).__name__), level, "not readable: %s (%s)", path, exc)


def read_text(path: Path) -> str | None:
    """The stripped content of a small text file, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError as exc:
        _report(path, exc)
        return None


def read_int(path: Path) -> int | None:
    """A file holding one integer, or None when it is missing, unreadable or malformed."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError as exc:
        _report(path, exc)
        return None


def under(root: str | os.PathLike[str], absolute: str) -> Path:
    """`absolute` ("/sys/class/hwmon") inside `root`."""
    return Path(root) / absolute.lstrip("/")


def _natural_key(path: Path) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def glob_sorted(directory: Path, pattern: str) -> list[Path]:
    """`directory.glob(pattern)` in natural order (cpu2 before cpu10); empty when it is unreadable."""
    try:
        return sorted(directory.glob(pattern), key=_natural_key)
    except OSError as exc:
        _report(directory, exc)
        return []


def cpu_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """/sys/devices/system/cpu/cpuN directories, in CPU order."""
    base = under(root, "/sys/devices/system/cpu")
    return [p for p in glob_sorted(base, "cpu[0-9]*") if re.fullmatch(r"cpu\d+", p.name)]


# ---- /proc/cpuinfo ---------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor block (keys as the kernel writes them)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def read_cpuinfo(root: str | os.PathLike[str]) -> list[dict[str, str]]:
    text = read_text(under(root, "/proc/cpuinfo"))
    return parse_cpuinfo(text) if text else []


# ---- CPU frequency ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuFrequency:
    current_mhz: float | None  # mean over the CPUs, as psutil reports it
    min_mhz: float | None
    max_mhz: float | None  # highest cpuinfo_max_freq (the single-core boost clock)


class CpuFrequencyReader:
    """cpufreq's scaling_cur_freq per CPU, else "cpu MHz" from /proc/cpuinfo (VMs have no cpufreq).

    /proc/cpuinfo is the expensive fallback (the kernel formats every CPU's block and samples its
    clock), and where it is needed the clock does not scale visibly anyway, so it is read at most
    once per `cpuinfo_every_s` (on `clock`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        cpuinfo_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._cur_files: list[Path] | None = None
        self._limits: tuple[float | None, float | None] | None = None
        self._cpuinfo_every_s = cpuinfo_every_s
        self._clock = clock
        self._cpuinfo_cache: tuple[float, list[float]] | None = None  # (read at, MHz per CPU)

    def _discover(self) -> None:
        dirs = [d / "cpufreq" for d in cpu_dirs(self._root)]
        self._cur_files = [d / "scaling_cur_freq" for d in dirs if (d / "scaling_cur_freq").exists()]
        mins = [v for d in dirs if (v := read_int(d / "cpuinfo_min_freq")) is not None and v > 0]
        maxs = [v for d in dirs if (v := read_int(d / "cpuinfo_max_freq")) is not None and v > 0]
        self._limits = (min(mins) / 1000 if mins else None, max(maxs) / 1000 if maxs else None)

    def read(self) -> CpuFrequency:
        if self._cur_files is None or self._limits is None:
            self._discover()
        assert self._cur_files is not None and self._limits is not None
        values = [v / 1000 for f in self._cur_files if (v := read_int(f)) is not None and v > 0]
        if not values:
            now = self._clock()
            cached = self._cpuinfo_cache
            if cached is None or not 0 <= now - cached[0] < self._cpuinfo_every_s:
                cached = self._cpuinfo_cache = (now, _cpuinfo_mhz(self._root))
            values = cached[1]
        current = sum(values) / len(values) if values else None
        return CpuFrequency(current, *self._limits)


def _cpuinfo_mhz(root: str | os.PathLike[str]) -> list[float]:
    out = []
    for block in read_cpuinfo(root):
        try:
            mhz = float(block.get("cpu MHz", ""))
        except ValueError:
            continue
        if mhz > 0:
            out.append(mhz)
    return out


# ---- memory -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None


def read_meminfo(root: str | os.PathLike[str] = "/") -> MemInfo | None:
    """RAM and swap from /proc/meminfo in one read (psutil needs two calls and /proc/vmstat too)."""
    text = read_text(under(root, "/proc/meminfo"))
    if not text:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[key] = int(fields[0]) * 1024
    if "MemTotal" not in kib or "MemAvailable" not in kib:
        return None  # kernels before 3.14 have no MemAvailable: let psutil estimate it
    return MemInfo(kib["MemTotal"], kib["MemAvailable"], kib.get("SwapTotal"), kib.get("SwapFree"))


# ---- temperatures and fans (hwmon, thermal zones) ----------------------------------------------

_MIN_PLAUSIBLE_C, _MAX_PLAUSIBLE_C = -40.0, 200.0  # outside this a sensor is broken, not hot


@dataclass(frozen=True)
class _Sensor:
    label: str
    path: Path
    scale: float  # hwmon temperatures are millidegrees, fans RPM


class SensorReader:
    """Temperatures and fan speeds from /sys/class/hwmon (thermal zones when hwmon has none).

    Reads the same files as psutil's sensors_temperatures()/sensors_fans(), but under a root the
    tests can fake. The list of sensor files is cached and rediscovered every `rescan_every` reads
    or after a read fails, so a sensor that appears or vanishes is noticed without listing
    directories on every tick.
    """

    def __init__(self, root: str | os.PathLike[str] = "/", rescan_every: int = 120) -> None:
        self._root = root
        self._rescan_every = rescan_every
        self._reads = 0
        self._temps: list[_Sensor] | None = None
        self._fans: list[_Sensor] = []

    def _discover(self) -> None:
        temps: list[_Sensor] = []
        fans: list[_Sensor] = []
        for hwmon in glob_sorted(under(self._root, "/sys/class/hwmon"), "hwmon*"):
            chip = read_text(hwmon / "name") or hwmon.name
            for base in (hwmon, hwmon / "device"):
                temps += self._inputs(base, chip, "temp", 1000.0)
                fans += self._inputs(base, chip, "fan", 1.0)
        if not temps:
            for zone in glob_sorted(under(self._root, "/sys/class/thermal"), "thermal_zone*"):
                kind = read_text(zone / "type") or zone.name
                temps.append(_Sensor(kind, zone / "temp", 1000.0))
        self._temps, self._fans = _unique_labels(temps), _unique_labels(fans)

    @staticmethod
    def _inputs(base: Path, chip: str, kind: str, scale: float) -> list[_Sensor]:
        out = []
        for path in glob_sorted(base, f"{kind}*_input"):
            number = path.name[len(kind) : -len("_input")]
            label_file = base / f"{kind}{number}_label"
            label = read_text(label_file) if label_file.exists() else None
            out.append(_Sensor(f"{chip} {label or kind + number}", path, scale))
        return out

    def read(self) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
        """((label, °C), ...), ((label, RPM), ...); a sensor that cannot be read is left out."""
        if self._temps is None or self._reads % self._rescan_every == 0:
            self._discover()
        self._reads += 1
        assert self._temps is not None
        failed = False
        temps: list[tuple[str, float]] = []
        for sensor in self._temps:
            raw = read_int(sensor.path)
            if raw is None:
                failed = True
                continue
            celsius = raw / sensor.scale
            if _MIN_PLAUSIBLE_C <= celsius <= _MAX_PLAUSIBLE_C:
                temps.append((sensor.label, celsius))
        fans: list[tuple[str, float]] = []
        for sensor in self._fans:
            raw = read_int(sensor.path)
            if raw is None:
                failed = True
            elif raw >= 0:
                fans.append((sensor.label, float(raw)))
        if failed:
            self._reads = 0  # rediscover on the next read
        return tuple(temps), tuple(fans)


def _unique_labels(sensors: Iterable[_Sensor]) -> list[_Sensor]:
    seen: dict[str, int] = {}
    out = []
    for s in sensors:
        n = seen.get(s.label, 0)
        seen[s.label] = n + 1
        out.append(s if n == 0 else _Sensor(f"{s.label} #{n + 1}", s.path, s.scale))
    return out


# ---- RAPL package energy -----------------------------------------------------------------------

_RAPL_PACKAGE = re.compile(r"intel-rapl:\d+")  # top-level zones; intel-rapl:0:0 etc. are sub-zones


class RaplReader:
    """CPU package energy from the powercap RAPL counters (Intel, and AMD on recent kernels).

    `energy_uj` wraps around at `max_energy_range_uj`; a counter that went down wrapped once.
    Recent kernels make `energy_uj` readable by root only, so on most desktops this reads None.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self._root = root
        self._zones: list[tuple[Path, int | None]] | None = None
        self._previous_uj: dict[Path, int] = {}
        self.readable = False  # every package counter answered at the last read

    def _discover(self) -> None:
        zones = []
        for zone in glob_sorted(under(self._root, "/sys/class/powercap"), "intel-rapl:*"):
            if not _RAPL_PACKAGE.fullmatch(zone.name):
                continue
            name = read_text(zone / "name")
            if name is not None and not name.startswith("package"):
                continue  # "psys" (whole platform) or "dram" would count twice
            zones.append((zone / "energy_uj", read_int(zone / "max_energy_range_uj")))
        self._zones = zones

    @property
    def present(self) -> bool:
        if self._zones is None:
            self._discover()
        return bool(self._zones)

    def read_delta_joules(self) -> float | None:
        """Joules all packages used since the previous call; None on the first call, when any
        counter is unreadable, or when a wrap cannot be corrected."""
        if not self.present:
            return None
        assert self._zones is not None
        total_uj = 0
        complete = True
        self.readable = True
        for path, max_range in self._zones:
            value = read_int(path)
            if value is None:
                self._previous_uj.pop(path, None)
                complete = self.readable = False
                continue
            previous = self._previous_uj.get(path)
            self._previous_uj[path] = value
            if previous is None:
                complete = False
                continue
            delta = value - previous
            if delta < 0:
                if not max_range:
                    complete = False
                    continue
                delta += max_range
            total_uj += delta
        return total_uj / 1e6 if complete else None


# ---- thermal throttle counters -----------------------------------------------------------------

_COUNTER_FILES = {
    "core_throttle_count": ("thermal", "core"),
    "package_throttle_count": ("thermal", "package"),
    "core_power_limit_count": ("power", "core"),  # older kernels only
    "package_power_limit_count": ("power", "package"),
}


@dataclass(frozen=True)
class ThrottleCounts:
    """New throttle events since the previous read."""

    thermal_events: int
    power_limit_events: int


class ThrottleCounterReader:
    """Intel's thermal_throttle counters under /sys/devices/system/cpu/cpuN/thermal_throttle.

    A core counter is the same in every hyper-thread of the core and a package counter the same in
    every CPU of the package, so each is counted once per (package, core) or per package, read
    from topology/. A counter that goes down (CPU offlined and back) is re-baselined, not negative.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self._root = root
        self._counters: dict[tuple[object, ...], tuple[Path, str]] | None = None
        self._previous: dict[tuple[object, ...], int] = {}

    def _discover(self) -> None:
        counters: dict[tuple[object, ...], tuple[Path, str]] = {}
        for cpu in cpu_dirs(self._root):
            directory = cpu / "thermal_throttle"
            if not directory.is_dir():
                continue
            package = read_int(cpu / "topology" / "physical_package_id")
            core = read_int(cpu / "topology" / "core_id")
            for file_name, (kind, scope) in _COUNTER_FILES.items():
                path = directory / file_name
                if not path.exists():
                    continue
                if package is None or (scope == "core" and core is None):
                    key: tuple[object, ...] = (file_name, cpu.name)  # topology unknown: per CPU
                elif scope == "core":
                    key = (file_name, package, core)
                else:
                    key = (file_name, package)
                counters.setdefault(key, (path, kind))
        self._counters = counters

    @property
    def present(self) -> bool:
        if self._counters is None:
            self._discover()
        return bool(self._counters)

    def read(self) -> ThrottleCounts | None:
        """New events since the last read (zero on the first); None when there are no counters."""
        if not self.present:
            return None
        assert self._counters is not None
        new = {"thermal": 0, "power": 0}
        for key, (path, kind) in self._counters.items():
            value = read_int(path)
            if value is None:
                self._previous.pop(key, None)
                continue
            previous = self._previous.get(key)
            self._previous[key] = value
            if previous is not None and value > previous:
                new[kind] += value - previous
        return ThrottleCounts(new["thermal"], new["power"])


# ---- detection helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheLevel:
    level: int
    kind: str  # "Data", "Instruction", "Unified"
    size_bytes: int
    shared_by_cpus: int | None


def _parse_size(text: str | None) -> int | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip(), re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


def _count_cpu_list(text: str | None) -> int | None:
    """ "0-3,8" -> 5."""
    if not text:
        return None
    count = 0
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
    except ValueError:
        return None
    return count


def read_cpu_caches(root: str | os.PathLike[str] = "/") -> tuple[CacheLevel, ...]:
    """Cache sizes of cpu0 from sysfs (size per instance, and how many CPUs share one)."""
    out = []
    base = under(root, "/sys/devices/system/cpu/cpu0/cache")
    for index in glob_sorted(base, "index*"):
        level = read_int(index / "level")
        size = _parse_size(read_text(index / "size"))
        if level is None or size is None:
            continue
        kind = read_text(index / "type") or "Unified"
        out.append(CacheLevel(level, kind, size, _count_cpu_list(read_text(index / "shared_cpu_list"))))
    return tuple(out)


def count_physical_cores_sysfs(root: str | os.PathLike[str] = "/") -> int | None:
    """Distinct (package, core) pairs from topology/, or None when topology is not readable."""
    cores = set()
    for cpu in cpu_dirs(root):
        package = read_int(cpu / "topology" / "physical_package_id")
        core = read_int(cpu / "topology" / "core_id")
        if package is None or core is None:
            return None
        cores.add((package, core))
    return len(cores) or None
