"""What the machine is: CPU, memory, GPUs, OS and the llama.cpp build.

Detection reads /proc and /sys under a filesystem root, asks llama.cpp through
`app.llama.runtime.build_info()` and `app.llama.facts.current_devices()` (a child process), and
NVML through `app.telemetry.nvml.Nvml`, so it must run off the GUI thread. Anything not readable
is None ("n/a"); nothing here raises for a machine that lacks a source.

The GPUs are llama.cpp's own device list (ggml's registry): a Metal, Vulkan, ROCm or CUDA GPU is
listed when this build can offload to it, and only then. NVML adds the details only NVIDIA's
driver knows (power limit, clocks, PCIe link) to the NVIDIA ones, matched by PCI bus id; an NVIDIA
GPU that the build does not list (a CPU-only build) is reported apart, as not usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from app.llama.build_check import BuildVerdict
from app.llama.devices import LlamaDevice, gpu_devices, pci_key
from app.llama.runtime import BuildInfo
from app.telemetry.nvml import NVML_CLOCK_MEM, NVML_CLOCK_SM, Nvml, shared_nvml, text
from app.telemetry.sysfs import (
    CacheLevel,
    CpuFrequencyReader,
    count_physical_cores_sysfs,
    read_cpu_caches,
    read_cpuinfo,
)

log = logging.getLogger(__name__)

# CPU features llama.cpp's CPU backend reports in llama_print_system_info(), in its own names and
# order; only these matter to which kernels it runs.
LLAMA_CPU_FEATURES: tuple[str, ...] = (
    "SSE3",
    "SSSE3",
    "AVX",
    "AVX_VNNI",
    "AVX2",
    "F16C",
    "FMA",
    "BMI2",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_INT8",
    "NEON",
    "ARM_FMA",
    "FP16_VA",
    "MATMUL_INT8",
    "SVE",
    "DOTPROD",
    "SME",
    "VSX",
    "RISCV_V",
    "WASM_SIMD",
)

# /proc/cpuinfo flag (x86 "flags", ARM "Features") -> llama.cpp feature name.
_OS_FLAG_TO_LLAMA: dict[str, tuple[str, ...]] = {
    "pni": ("SSE3",),  # the kernel calls SSE3 "pni" (Prescott New Instructions)
    "sse3": ("SSE3",),
    "ssse3": ("SSSE3",),
    "avx": ("AVX",),
    "avx2": ("AVX2",),
    "avx_vnni": ("AVX_VNNI",),
    "fma": ("FMA",),
    "f16c": ("F16C",),
    "bmi2": ("BMI2",),
    "avx512f": ("AVX512",),
    "avx512vbmi": ("AVX512_VBMI",),
    "avx512_vbmi": ("AVX512_VBMI",),
    "avx512_vnni": ("AVX512_VNNI",),
    "avx512_bf16": ("AVX512_BF16",),
    "amx_int8": ("AMX_INT8",),
    "asimd": ("NEON", "ARM_FMA"),  # AArch64 Advanced SIMD includes fused multiply-add
    "neon": ("NEON",),
    "asimdhp": ("FP16_VA",),
    "i8mm": ("MATMUL_INT8",),
    "asimddp": ("DOTPROD",),
    "sve": ("SVE",),
    "sme": ("SME",),
    "vsx": ("VSX",),
}

# Best first: the widest SIMD a feature set reaches, with its display name.
_SIMD_LADDER: tuple[tuple[str, str], ...] = (
    ("AVX512", "AVX-512"),
    ("AVX2", "AVX2"),
    ("AVX", "AVX"),
    ("SSSE3", "SSSE3"),
    ("SSE3", "SSE3"),
    ("SME", "SME"),
    ("SVE", "SVE"),
    ("NEON", "NEON"),
    ("VSX", "VSX"),
    ("RISCV_V", "RISC-V V"),
    ("WASM_SIMD", "WASM SIMD"),
)
_SIMD_EXTRAS = (
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AVX_VNNI",
    "AMX_INT8",
    "FMA",
    "F16C",
    "DOTPROD",
    "MATMUL_INT8",
    "FP16_VA",
)

_GPU_BACKENDS = (
    "CUDA",
    "Metal",
    "MTL",
    "Vulkan",
    "HIP",
    "ROCm",
    "SYCL",
    "OpenCL",
    "CANN",
    "MUSA",
    "Kompute",
    "RPC",
)


# ---- llama_print_system_info() -----------------------------------------------------------------

_PIECE = re.compile(
    r"^\s*(?:(?P<backend>[A-Za-z][\w .-]*?)\s+:\s+)?(?P<key>[A-Za-z_][\w.+-]*)\s*=\s*(?P<value>.*?)\s*$"
)


def parse_system_info(system_info: str) -> dict[str, dict[str, str]]:
    """llama_print_system_info() as {backend: {feature: value}}.

    Reads both formats: the older flat "AVX = 1 | AVX2 = 1 | ..." (listed as backend "CPU") and
    the newer per-backend "CPU : SSE3 = 1 | AVX2 = 1 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 |",
    where a "NAME : " prefix starts the features of backend NAME.
    """
    out: dict[str, dict[str, str]] = {}
    backend = "CPU"
    for piece in system_info.split("|"):
        m = _PIECE.match(piece)
        if not m:
            head = re.match(r"^\s*([A-Za-z][\w .-]*?)\s+:\s*$", piece)  # "Metal : " with no features
            if head:
                backend = head.group(1)
                out.setdefault(backend, {})
            continue
        if m.group("backend"):
            backend = m.group("backend").strip()
        out.setdefault(backend, {})[m.group("key")] = m.group("value")
    return out


def build_cpu_features(parsed: Mapping[str, Mapping[str, str]]) -> tuple[str, ...]:
    """CPU features the llama.cpp build uses (value not "0"), in llama.cpp's order."""
    cpu = parsed.get("CPU", {})
    on = {k for k, v in cpu.items() if v.strip() not in ("0", "")}
    return tuple(f for f in LLAMA_CPU_FEATURES if f in on)


def os_cpu_features(flags: Iterable[str], machine: str = "") -> tuple[str, ...]:
    """The llama.cpp features a CPU with these /proc/cpuinfo flags supports, in llama.cpp's order."""
    found: set[str] = set()
    for flag in flags:
        found.update(_OS_FLAG_TO_LLAMA.get(flag.lower(), ()))
    if not found and machine.lower() in ("arm64", "aarch64"):
        found.update(("NEON", "ARM_FMA"))  # mandatory in ARMv8-A; macOS has no /proc/cpuinfo
    return tuple(f for f in LLAMA_CPU_FEATURES if f in found)


def simd_level(features: Iterable[str]) -> str | None:
    """The widest SIMD in `features` ("AVX-512", "AVX2", "NEON"...), None when there is none."""
    present = set(features)
    return next((label for name, label in _SIMD_LADDER if name in present), None)


def simd_text(features: Iterable[str]) -> str:
    """e.g. "AVX-512 + AVX512_VNNI, AVX512_BF16, FMA, F16C"; "none" without SIMD."""
    present = tuple(features)
    level = simd_level(present)
    extras = [f for f in _SIMD_EXTRAS if f in present]
    if level is None:
        return "none" if not extras else ", ".join(extras)
    return level + (" + " + ", ".join(extras) if extras else "")


# ---- report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuInfo:
    model_name: str | None
    vendor: str | None
    architecture: str
    physical_cores: int
    logical_cores: int
    min_freq_mhz: float | None
    max_freq_mhz: float | None
    caches: tuple[CacheLevel, ...]
    os_flags: frozenset[str]  # raw /proc/cpuinfo flags
    features_cpu: tuple[str, ...]  # llama.cpp features the CPU supports
    features_build: tuple[str, ...]  # llama.cpp features the installed build uses
    is_virtual_machine: bool

    @property
    def simd_level_cpu(self) -> str | None:
        return simd_level(self.features_cpu)

    @property
    def simd_level_build(self) -> str | None:
        return simd_level(self.features_build)

    @property
    def features_unused_by_build(self) -> tuple[str, ...]:
        """What the CPU could do that this llama.cpp build does not use (a rebuild would)."""
        if not self.features_build:
            return ()
        return tuple(f for f in self.features_cpu if f not in self.features_build)


@dataclass(frozen=True)
class RamInfo:
    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_used_bytes: int | None


@dataclass(frozen=True)
class GpuInfo:
    """A GPU: one of llama.cpp's GPU devices, with NVML's details when it is an NVIDIA GPU NVML
    knows; or (in `HardwareReport.unused_gpus`) an NVIDIA GPU that this build does not list."""

    index: int  # llama.cpp's GPU number (what --main-gpu counts); NVML's index for an unused GPU
    name: str | None
    uuid: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    power_limit_watts: float | None
    max_sm_clock_mhz: float | None
    max_memory_clock_mhz: float | None
    pcie_generation: int | None  # current link
    pcie_generation_max: int | None
    pcie_width: int | None  # lanes, current link
    pcie_width_max: int | None
    device_name: str | None = None  # llama.cpp's device: "CUDA0", "Vulkan0", "MTL0"; None if unused
    backend: str | None = None  # the ggml backend that owns the device: "CUDA", "Vulkan", "Metal"
    kind: str | None = None  # "GPU" (own memory) or "IGPU" (integrated: shares the host's memory)
    pci_bus_id: str | None = None
    nvml_index: int | None = None  # the NVML device that gives this GPU's telemetry

    @property
    def label(self) -> str:
        """ "NVIDIA GeForce RTX 4090 (CUDA0)", "Apple M2 Max (MTL0)"."""
        name = self.name or f"GPU {self.index}"
        return f"{name} ({self.device_name})" if self.device_name else name


@dataclass(frozen=True)
class OsInfo:
    system: str  # "Linux", "macOS", "Windows"
    release: str  # kernel release on Linux
    machine: str
    python_version: str


@dataclass(frozen=True)
class HardwareReport:
    """Everything detection found; a field that could not be read is None."""

    cpu: CpuInfo
    memory: RamInfo
    gpus: tuple[GpuInfo, ...]  # the GPUs llama.cpp can offload to (its device list), in its order
    gpu_status: str  # NVML's: "ok", "no NVIDIA driver", "pynvml not installed", ...
    driver_version: str | None
    cuda_driver_version: str | None
    build: BuildInfo | None
    build_error: str | None
    build_features: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    os_info: OsInfo = field(default_factory=lambda: current_os())
    build_check: BuildVerdict | None = None  # app.llama.build_check: does this build run on this CPU?
    notes: tuple[str, ...] = ()
    # NVIDIA GPUs NVML sees that llama.cpp does not list (all of them when llama.cpp cannot be asked)
    unused_gpus: tuple[GpuInfo, ...] = ()
    devices: tuple[LlamaDevice, ...] | None = ()  # llama.cpp's whole device list; None: not readable
    devices_error: str | None = None  # why `devices` is None

    @property
    def gpu_backends(self) -> tuple[str, ...]:
        backends = self.build.backends if self.build else ()
        return tuple(b for b in backends if b.upper() in {g.upper() for g in _GPU_BACKENDS})

    @property
    def gpu_summary(self) -> str:
        if self.gpus:
            return ", ".join(g.label for g in self.gpus)
        if self.devices is None:
            return f"n/a — {self.devices_error or 'llama.cpp could not be asked'}"
        if self.unused_gpus:
            return "None usable by this llama.cpp build — CPU only"
        return "None — CPU only"


def current_os() -> OsInfo:
    system = {"Darwin": "macOS"}.get(platform.system(), platform.system())
    return OsInfo(system, platform.release(), platform.machine(), sys.version.split()[0])


_VENDORS = {
    "GenuineIntel": "Intel",
    "AuthenticAMD": "AMD",
    "HygonGenuine": "Hygon",
    "CentaurHauls": "Centaur",
}
_ARM_IMPLEMENTERS = {
    "0x41": "Arm",
    "0x42": "Broadcom",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x53": "Samsung",
    "0x61": "Apple",
    "0xc0": "Ampere",
}


def cpu_info() -> str:
    """The CPU model string, as llama-bench reports it (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "n/a"


def hardware_fingerprint() -> str:
    """A short id of this machine's compute: CPU model, logical cores, RAM, OS and architecture."""
    import psutil

    parts = [
        cpu_info(),
        str(os.cpu_count()),
        str(psutil.virtual_memory().total),
        platform.system(),
        platform.machine(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _psutil() -> ModuleType:
    import psutil

    return psutil


def _detect_cpu(root: str, ps: Any, build_features: tuple[str, ...], machine: str) -> CpuInfo:
    blocks = read_cpuinfo(root)
    first = blocks[0] if blocks else {}
    model_keys = ("model name", "Processor", "Hardware", "cpu model")  # x86, older ARM, MIPS
    model = next((first[k] for k in model_keys if first.get(k)), None)
    if not model and root == "/" and not blocks:
        model = platform.processor() or None
    vendor = _VENDORS.get(first.get("vendor_id", ""), first.get("vendor_id") or None)
    if vendor is None and "CPU implementer" in first:
        vendor = _ARM_IMPLEMENTERS.get(first["CPU implementer"].lower(), first["CPU implementer"])
    flags = frozenset((first.get("flags") or first.get("Features") or "").split())
    logical = _call(ps.cpu_count) or len(blocks) or os.cpu_count() or 1
    physical = _call(lambda: ps.cpu_count(logical=False)) or count_physical_cores_sysfs(root) or logical
    freq = CpuFrequencyReader(root).read()
    return CpuInfo(
        model_name=model,
        vendor=vendor,
        architecture=machine,
        physical_cores=int(physical),
        logical_cores=int(logical),
        min_freq_mhz=freq.min_mhz,
        max_freq_mhz=freq.max_mhz,
        caches=read_cpu_caches(root),
        os_flags=flags,
        features_cpu=os_cpu_features(flags, machine),
        features_build=build_features,
        is_virtual_machine="hypervisor" in flags,
    )


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # psutil raises platform-specific errors for what it cannot read
        log.debug("psutil call failed: %s", exc)
        return None


def _detect_memory(ps: Any) -> RamInfo:
    vm = _call(ps.virtual_memory)
    swap = _call(ps.swap_memory)
    return RamInfo(
        total_bytes=getattr(vm, "total", None),
        available_bytes=getattr(vm, "available", None),
        swap_total_bytes=getattr(swap, "total", None),
        swap_used_bytes=getattr(swap, "used", None),
    )


def _as_float(value: Any, scale: float = 1.0) -> float | None:
    try:
        return None if value is None else float(value) / scale
    except (TypeError, ValueError):
        return None


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def detect_gpus(nvml: Nvml) -> tuple[tuple[GpuInfo, ...], str | None, str | None]:
    """(GPUs, driver version, CUDA driver version) through NVML; ((), None, None) without a driver."""
    if not nvml.available():
        return (), None, None
    driver = text(nvml.query("nvmlSystemGetDriverVersion"))
    cuda_raw = _as_int(nvml.query("nvmlSystemGetCudaDriverVersion"))
    cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if cuda_raw else None
    gpus = []
    for i in nvml.device_indices():
        memory = nvml.device_query(i, "nvmlDeviceGetMemoryInfo")

        def max_clock(clock: int, i: int = i) -> Any:
            return nvml.device_query(i, "nvmlDeviceGetMaxClockInfo", clock)

        limit_mw = nvml.device_query(i, "nvmlDeviceGetEnforcedPowerLimit")
        if limit_mw is None:
            limit_mw = nvml.device_query(i, "nvmlDeviceGetPowerManagementLimit")
        pci = nvml.device_query(i, "nvmlDeviceGetPciInfo")
        gpus.append(
            GpuInfo(
                index=i,
                name=text(nvml.device_query(i, "nvmlDeviceGetName")),
                uuid=text(nvml.device_query(i, "nvmlDeviceGetUUID")),
                memory_total_bytes=_as_int(getattr(memory, "total", None)),
                memory_used_bytes=_as_int(getattr(memory, "used", None)),
                memory_free_bytes=_as_int(getattr(memory, "free", None)),
                power_limit_watts=_as_float(limit_mw, 1000.0),
                max_sm_clock_mhz=_as_float(max_clock(NVML_CLOCK_SM)),
                max_memory_clock_mhz=_as_float(max_clock(NVML_CLOCK_MEM)),
                pcie_generation=_as_int(nvml.device_query(i, "nvmlDeviceGetCurrPcieLinkGeneration")),
                pcie_generation_max=_as_int(nvml.device_query(i, "nvmlDeviceGetMaxPcieLinkGeneration")),
                pcie_width=_as_int(nvml.device_query(i, "nvmlDeviceGetCurrPcieLinkWidth")),
                pcie_width_max=_as_int(nvml.device_query(i, "nvmlDeviceGetMaxPcieLinkWidth")),
                pci_bus_id=text(getattr(pci, "busId", None)),
                nvml_index=i,
            )
        )
    return tuple(gpus), driver, cuda


def llama_gpus(
    devices: Sequence[LlamaDevice], nvidia: Sequence[GpuInfo]
) -> tuple[tuple[GpuInfo, ...], tuple[GpuInfo, ...]]:
    """(llama.cpp's GPUs with NVML's details where they match, the NVIDIA GPUs llama.cpp does not list).

    A device matches an NVIDIA GPU by PCI bus id. Without one (an older backend), CUDA devices take
    the NVIDIA GPUs of the same name in order: CUDA and NVML may count in different orders, but
    GPUs of one name are interchangeable for what is shown here.
    """
    matched: set[int] = set()  # positions in `nvidia`
    out = []
    for number, device in enumerate(gpu_devices(devices)):
        key = pci_key(device.pci_bus_id)
        found = next((i for i, g in enumerate(nvidia) if key and pci_key(g.pci_bus_id) == key), None)
        if found is None and key is None and (device.backend or "").upper() == "CUDA":
            found = next(
                (i for i, g in enumerate(nvidia) if i not in matched and g.name == device.description), None
            )
        match = None if found is None else nvidia[found]
        if found is not None:
            matched.add(found)
        total, free = device.memory_total_bytes, device.memory_free_bytes
        out.append(
            GpuInfo(
                index=number,
                name=device.description or (match.name if match else None),
                uuid=match.uuid if match else None,
                # llama.cpp's own reading: what it will allocate from (NVML's would be the same
                # figure on CUDA, and does not exist elsewhere).
                memory_total_bytes=total,
                memory_used_bytes=total - free if total is not None and free is not None else None,
                memory_free_bytes=free,
                power_limit_watts=match.power_limit_watts if match else None,
                max_sm_clock_mhz=match.max_sm_clock_mhz if match else None,
                max_memory_clock_mhz=match.max_memory_clock_mhz if match else None,
                pcie_generation=match.pcie_generation if match else None,
                pcie_generation_max=match.pcie_generation_max if match else None,
                pcie_width=match.pcie_width if match else None,
                pcie_width_max=match.pcie_width_max if match else None,
                device_name=device.name,
                backend=device.backend,
                kind=device.kind,
                pci_bus_id=device.pci_bus_id or (match.pci_bus_id if match else None),
                nvml_index=match.nvml_index if match else None,
            )
        )
    unused = tuple(g for i, g in enumerate(nvidia) if i not in matched)
    return tuple(out), unused


def _default_build() -> BuildInfo:
    from app.llama.runtime import build_info

    return build_info()


def detect_hardware(
    root: str = "/",
    nvml: Nvml | None = None,
    *,
    build: Callable[[], BuildInfo] | None = None,
    ps: Any | None = None,
    machine: str | None = None,
    build_check: Callable[[], BuildVerdict] | None = None,
    devices: Callable[[], tuple[LlamaDevice, ...] | None] | None = None,
) -> HardwareReport:
    """Detect the machine. Calls llama.cpp (through `build` and `devices`) and NVML: never on the
    GUI thread.

    `build_check` gives the verdict of app.llama.build_check; by default it runs (once per installed
    build, in a child process) when the installed build is read, and not with a fake `build`.
    `devices` gives llama.cpp's device list (None: not readable); by default the installed build is
    asked (app.llama.facts.current_devices), and a fake `build` has no devices unless given.
    """
    nvml = nvml or shared_nvml()
    ps = ps or _psutil()
    machine = machine or platform.machine()
    build_info: BuildInfo | None = None
    build_error: str | None = None
    try:
        build_info = (build or _default_build)()
    except Exception as exc:  # a broken llama-cpp-python install must not hide the rest
        build_error = f"{type(exc).__name__}: {exc}"
        log.warning("llama.cpp build facts not readable: %s", build_error)
    parsed = parse_system_info(build_info.system_info) if build_info else {}
    cpu = _detect_cpu(root, ps, build_cpu_features(parsed), machine)
    nvidia, driver, cuda = detect_gpus(nvml)
    device_list, devices_error = _devices(devices, default=build is None and build_info is not None)
    if build_info is None and devices is None:
        device_list, devices_error = None, f"llama.cpp not readable ({build_error})"
    gpus, unused = llama_gpus(device_list or (), nvidia)
    report = HardwareReport(
        cpu=cpu,
        memory=_detect_memory(ps),
        gpus=gpus,
        unused_gpus=unused,
        devices=device_list,
        devices_error=devices_error,
        gpu_status=nvml.status,
        driver_version=driver,
        cuda_driver_version=cuda,
        build=build_info,
        build_error=build_error,
        build_features=parsed,
        build_check=_verdict(build_check, default=build is None and build_info is not None),
    )
    return _with_notes(report)


def _devices(
    devices: Callable[[], tuple[LlamaDevice, ...] | None] | None, default: bool
) -> tuple[tuple[LlamaDevice, ...] | None, str | None]:
    if devices is None and not default:
        return (), None  # a fake build without devices: a CPU-only build
    if devices is None:
        from app.llama.facts import current_devices

        devices = current_devices
    try:
        found = devices()
    except Exception as exc:  # noqa: BLE001 (a failed read must not hide the rest of the report)
        log.warning("llama.cpp's device list not readable: %s", exc)
        return None, f"llama.cpp's device list not readable: {exc}"
    return found, None if found is not None else "llama.cpp's device list not readable"


def _verdict(build_check: Callable[[], BuildVerdict] | None, default: bool) -> BuildVerdict | None:
    if build_check is None and default:
        from app.llama.build_check import session_verdict

        build_check = session_verdict
    if build_check is None:
        return None
    try:
        return build_check()
    except Exception as exc:  # noqa: BLE001 (the check's own failure must not hide the rest)
        log.warning("llama.cpp build check failed: %s", exc)
        return None


def _with_notes(report: HardwareReport) -> HardwareReport:
    notes: list[str] = []
    build, cpu = report.build, report.cpu
    if build is not None:
        gpu_backends = report.gpu_backends
        if gpu_backends:
            notes.append(f"llama.cpp GPU backends: {', '.join(gpu_backends)}")
        elif not build.gpu_offload:
            notes.append("this llama.cpp build is CPU-only: GPU layers have no effect")
        if report.unused_gpus and not any(b.upper() == "CUDA" for b in build.backends):
            notes.append(
                "an NVIDIA GPU is present but this llama.cpp build has no CUDA backend "
                '(reinstall llama-cpp-python with CMAKE_ARGS="-DGGML_CUDA=on")'
            )
        elif report.unused_gpus and report.devices is not None:
            names = ", ".join(g.name or f"GPU {g.index}" for g in report.unused_gpus)
            notes.append(
                f"NVIDIA GPU present but not in llama.cpp's device list, so it gets no layers: {names} "
                "(hidden by CUDA_VISIBLE_DEVICES, or not usable by this build's CUDA runtime)"
            )
        if any((g.backend or "").upper() in ("MTL", "METAL") for g in report.gpus):
            notes.append("Apple GPU through Metal (unified memory shared with the CPU)")
    verdict = report.build_check
    if verdict is not None and verdict.crashed:
        notes.append(
            f"this llama.cpp build crashed LlamaScope's build check on this CPU "
            f"({verdict.signal_text}); models are not loaded with it. Rebuild it: "
            f"{verdict.rebuild_command}"
        )
    # AMX is left out on purpose (app/llama/build_flags.py): never recommend the build that has it.
    unused = tuple(f for f in cpu.features_unused_by_build if f != "AMX_INT8")
    if unused:
        notes.append(
            f"the CPU supports {', '.join(unused)} but this llama.cpp build does not use "
            f"{'it' if len(unused) == 1 else 'them'} (a native build would)"
        )
    if "AMX_INT8" in cpu.features_cpu and "AMX_INT8" not in cpu.features_build and cpu.features_build:
        notes.append(
            "the CPU has Intel AMX; this llama.cpp build leaves llama.cpp's AMX path out on "
            "purpose: it dies with an illegal instruction on llama.cpp's worker threads "
            "(llama.cpp PR #26954)"
        )
    if "AMX_INT8" in cpu.features_build and not (verdict is not None and verdict.crashed):
        notes.append("Intel AMX in use for int8 matrix multiplication")
    if cpu.is_virtual_machine:
        notes.append("virtual machine: temperatures, power counters and clock limits are usually hidden")
    return dataclasses.replace(report, notes=tuple(notes))
