"""Fakes for the hardware and telemetry tests: sysfs trees, an NVML module, psutil, a clock.

Imported by tests/core and tests/gui (pytest puts tests/ on sys.path for its conftest.py).
"""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app.llama.devices import LlamaDevice
from app.llama.facts import LibraryFacts
from app.llama.runtime import BuildInfo

# ---- sysfs trees ------------------------------------------------------------------------------


def write(root: Path, path: str, content: object) -> Path:
    """Write `content` to `root/path` (absolute-looking paths are taken inside root)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{content}\n")
    return target


def remove(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()


CPUINFO_X86 = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz
cpu MHz\t\t: {mhz}
physical id\t: 0
flags\t\t: fpu sse sse2 pni ssse3 fma avx avx2 f16c bmi2 avx512f avx512_vnni avx512vbmi hypervisor

"""


def build_x86_tree(root: Path, *, cpus: int = 2, mhz: float = 2900.0) -> Path:
    """A small Intel-like machine: cpuinfo, topology, caches, cpufreq."""
    write(root, "/proc/cpuinfo", "".join(CPUINFO_X86.format(n=i, mhz=mhz) for i in range(cpus)))
    for i in range(cpus):
        base = f"/sys/devices/system/cpu/cpu{i}"
        write(root, f"{base}/topology/physical_package_id", 0)
        write(root, f"{base}/topology/core_id", i)
        write(root, f"{base}/cpufreq/scaling_cur_freq", int(mhz * 1000))
        write(root, f"{base}/cpufreq/cpuinfo_max_freq", 4_800_000)
        write(root, f"{base}/cpufreq/cpuinfo_min_freq", 400_000)
    for index, (level, kind, size, shared) in enumerate(
        [
            (1, "Data", "48K", "0"),
            (1, "Instruction", "32K", "0"),
            (2, "Unified", "1280K", "0"),
            (3, "Unified", "12288K", f"0-{cpus - 1}"),
        ]
    ):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
        write(root, f"{base}/level", level)
        write(root, f"{base}/type", kind)
        write(root, f"{base}/size", size)
        write(root, f"{base}/shared_cpu_list", shared)
    return root


# ---- psutil ---------------------------------------------------------------------------------

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
ProcTimes = namedtuple("ProcTimes", "user system children_user children_system")


def cpu_times(user: float, idle: float) -> CpuTimes:
    return CpuTimes(user, 0.0, 0.0, idle, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class FakePsutil:
    """The psutil functions the collector and detection call, with scriptable answers."""

    def __init__(self, cores: int = 2) -> None:
        self.cores = cores
        self.per_cpu = [cpu_times(0.0, 0.0) for _ in range(cores)]
        self.process_cpu_s = 0.0
        self.rss = 100 * 1024 * 1024
        self.total = 16 * 1024**3
        self.available = 10 * 1024**3
        self.swap_used = 0
        self.fail: set[str] = set()  # names of functions that raise

    def advance(self, busy_s: float, idle_s: float, process_s: float = 0.0) -> None:
        self.per_cpu = [cpu_times(t.user + busy_s, t.idle + idle_s) for t in self.per_cpu]
        self.process_cpu_s += process_s

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise OSError(f"{name} failed")

    def cpu_times(self, percpu: bool = False) -> list[CpuTimes]:
        self._check("cpu_times")
        return list(self.per_cpu)

    def cpu_count(self, logical: bool = True) -> int:
        return self.cores if logical else max(1, self.cores // 2)

    def virtual_memory(self) -> Any:
        self._check("virtual_memory")
        return SimpleNamespace(total=self.total, available=self.available)

    def swap_memory(self) -> Any:
        self._check("swap_memory")
        return SimpleNamespace(total=2 * 1024**3, used=self.swap_used)

    def getloadavg(self) -> tuple[float, float, float]:
        self._check("getloadavg")
        return (1.5, 1.0, 0.5)

    def Process(self, pid: int) -> Any:  # noqa: N802 (psutil's name)
        fake = self

        class _Process:
            def memory_info(self) -> Any:
                fake._check("process")
                return SimpleNamespace(rss=fake.rss)

            def cpu_times(self) -> ProcTimes:
                fake._check("process")
                return ProcTimes(fake.process_cpu_s, 0.0, 0.0, 0.0)

        return _Process()


# ---- NVML -------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    """Shaped like pynvml.NVMLError: the NVML return code is in `.value`."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


NOT_SUPPORTED = 3
GPU_IS_LOST = 15
LIBRARY_NOT_FOUND = 12


class FakeGpu:
    def __init__(self, name: str, *, total_gib: float = 24, used_gib: float = 2, **answers: Any) -> None:
        gib = 1024**3
        self.answers: dict[str, Any] = {
            "nvmlDeviceGetName": name.encode(),  # older bindings return bytes
            "nvmlDeviceGetUUID": f"GPU-{name}",
            "nvmlDeviceGetMemoryInfo": SimpleNamespace(
                total=int(total_gib * gib), used=int(used_gib * gib), free=int((total_gib - used_gib) * gib)
            ),
            "nvmlDeviceGetUtilizationRates": SimpleNamespace(gpu=55, memory=20),
            "nvmlDeviceGetTemperature": 61,
            "nvmlDeviceGetPowerUsage": 250_000,  # mW
            "nvmlDeviceGetEnforcedPowerLimit": 450_000,
            "nvmlDeviceGetClockInfo": {1: 2520, 2: 10501},
            "nvmlDeviceGetMaxClockInfo": {1: 2790, 2: 10501},
            "nvmlDeviceGetFanSpeed": 40,
            "nvmlDeviceGetCurrentClocksEventReasons": 0,
            "nvmlDeviceGetTotalEnergyConsumption": 1_000_000,  # mJ
            "nvmlDeviceGetCurrPcieLinkGeneration": 4,
            "nvmlDeviceGetMaxPcieLinkGeneration": 4,
            "nvmlDeviceGetCurrPcieLinkWidth": 16,
            "nvmlDeviceGetMaxPcieLinkWidth": 16,
        }
        self.answers.update(answers)
        self.lost = False


class FakeNvmlModule:
    """A pynvml stand-in: functions answer from FakeGpu.answers; a missing answer raises NOT_SUPPORTED."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.raise_on: dict[str, int] = {}  # function name -> NVML error code raised for every device

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self) -> None:  # noqa: N802
        self._count("nvmlInit")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._count("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return b"550.54.14"

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 12040

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if not name.startswith("nvmlDevice"):
            raise AttributeError(name)

        def call(handle: FakeGpu, *args: Any) -> Any:
            self._count(name)
            if handle.lost:
                raise FakeNVMLError(GPU_IS_LOST)
            if name in self.raise_on:
                raise FakeNVMLError(self.raise_on[name])
            if name not in handle.answers:
                raise FakeNVMLError(NOT_SUPPORTED)
            answer = handle.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer[args[0]] if isinstance(answer, dict) else answer

        return call


def gpu_processes(*used: tuple[int, int | None]) -> list[SimpleNamespace]:
    """NVML's compute-process list: (pid, bytes used or None when the driver does not say)."""
    return [SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in used]


def two_gpu_nvml() -> FakeNvmlModule:
    """Two GPUs: the first throttled by power cap and heat, with this process and another on it;
    the second lacks fan, energy and process readings."""
    first = FakeGpu(
        "RTX 4090",
        nvmlDeviceGetCurrentClocksEventReasons=0x4 | 0x40,
        nvmlDeviceGetComputeRunningProcesses=gpu_processes((os.getpid(), 3 * 1024**3 // 2), (1, 1024**3)),
    )
    second = FakeGpu("RTX 3060", total_gib=12, used_gib=1)
    del second.answers["nvmlDeviceGetFanSpeed"]
    del second.answers["nvmlDeviceGetTotalEnergyConsumption"]
    return FakeNvmlModule([first, second])


# ---- clock, build -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def fake_build(
    system_info: str = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 |",
    *,
    backends: tuple[str, ...] = ("CPU",),
    gpu_offload: bool = False,
) -> Callable[[], BuildInfo]:
    info = BuildInfo("0.3.99", system_info, backends, gpu_offload, True, True)
    return lambda: info


# ---- llama.cpp's device list ------------------------------------------------------------------

CPU_DEVICE = LlamaDevice(0, "CPU", "Intel(R) Core(TM) i7-1185G7", "CPU", "CPU", 10 * 1024**3, 16 * 1024**3)


def gpu_device(
    index: int,
    name: str,
    description: str,
    *,
    backend: str,
    kind: str = "GPU",
    total_gib: float = 24,
    free_gib: float = 22,
    pci_bus_id: str | None = None,
) -> LlamaDevice:
    """One GPU as ggml's device registry describes it."""
    gib = 1024**3
    return LlamaDevice(
        index, name, description, kind, backend, int(free_gib * gib), int(total_gib * gib), pci_bus_id
    )


def fake_facts(
    devices: tuple[LlamaDevice, ...] | None,
    *,
    backends: tuple[str, ...] = ("CPU",),
    system_info: str = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 |",
) -> LibraryFacts:
    """A build facts record as app.llama.facts caches it, with `devices` as its device list."""
    gpu = devices is not None and any(d.is_gpu for d in devices)
    return LibraryFacts(
        llama_cpp_python_version="0.3.99",
        system_info=system_info,
        backends=backends,
        gpu_offload=gpu,
        mmap=True,
        mlock=True,
        cpu_variant=None,
        ftypes={"LLAMA_FTYPE_MOSTLY_Q8_0": 7},
        devices=devices,
        devices_error=None if devices is not None else "llama.cpp's device list not readable: test",
    )


def from_facts(facts: LibraryFacts) -> dict[str, Any]:
    """detect_hardware's `build` and `devices` arguments, both read from one facts record."""
    info = BuildInfo(
        facts.llama_cpp_python_version,
        facts.system_info,
        facts.backends,
        facts.gpu_offload,
        facts.mmap,
        facts.mlock,
    )
    return {"build": lambda: info, "devices": lambda: facts.devices}


def metal_facts() -> LibraryFacts:
    """An Apple silicon Mac: llama.cpp's Metal backend with the integrated GPU (unified memory)."""
    mac = gpu_device(1, "MTL0", "Apple M2 Max", backend="MTL", kind="IGPU", total_gib=48, free_gib=40)
    cpu = LlamaDevice(0, "CPU", "Apple M2 Max", "CPU", "CPU", 40 * 1024**3, 64 * 1024**3)
    return fake_facts(
        (cpu, mac), backends=("MTL", "BLAS", "CPU"), system_info="MTL : EMBED_LIBRARY = 1 | CPU : NEON = 1 |"
    )


def vulkan_facts() -> LibraryFacts:
    """A Vulkan build on a machine with an AMD GPU (no NVIDIA driver)."""
    amd = gpu_device(
        1,
        "Vulkan0",
        "AMD Radeon RX 7900 XTX (RADV NAVI31)",
        backend="Vulkan",
        total_gib=24,
        free_gib=23,
        pci_bus_id="0000:03:00.0",
    )
    return fake_facts((CPU_DEVICE, amd), backends=("Vulkan", "CPU"))
