"""Hardware detection and recommendations against fake /proc and /sys trees and a fake NVML."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hardware_fakes import (
    CPU_DEVICE,
    LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvmlModule,
    FakePsutil,
    build_x86_tree,
    fake_build,
    remove,
    two_gpu_nvml,
    write,
)

from app.llama.devices import LlamaDevice
from app.model.memory import estimate_memory
from app.model.model_info import ModelInfo, SizeClass
from app.model.settings import LoadSettings
from app.telemetry.advice import ALL_LAYERS, gpu_layers_that_fit, recommend, vram_margin_bytes
from app.telemetry.hardware import (
    build_cpu_features,
    detect_hardware,
    os_cpu_features,
    parse_system_info,
    simd_level,
    simd_text,
)
from app.telemetry.nvml import Nvml

OLD_FORMAT = (
    "AVX = 1 | AVX_VNNI = 0 | AVX2 = 1 | AVX512 = 0 | AVX512_VBMI = 0 | AVX512_VNNI = 0 | AVX512_BF16 = 0 | "
    "FMA = 1 | NEON = 0 | SVE = 0 | ARM_FMA = 0 | F16C = 1 | FP16_VA = 0 | WASM_SIMD = 0 | BLAS = 0 | "
    "SSE3 = 1 | SSSE3 = 1 | VSX = 0 | MATMUL_INT8 = 0 | LLAMAFILE = 1 | "
)
NEW_FORMAT = (
    "CUDA : ARCHS = 500,610,700,890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
GIB = 1024**3


def _model(n_layer: int | None = 32, *, weights_gib: float = 4.0) -> ModelInfo:
    return ModelInfo(
        path="/models/m.gguf",
        file_size_bytes=int(weights_gib * GIB),
        gguf_version=3,
        name="M",
        architecture="llama",
        n_params=7_000_000_000,
        size_class=SizeClass.LARGE,
        size_label="7B",
        file_type="Q4_K_M",
        tensor_types=(),
        tensor_data_bytes=int(weights_gib * GIB),
        bits_per_weight=4.8,
        context_length=4096,
        n_layer=n_layer,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_embd_head_k=128,
        n_embd_head_v=128,
        vocab_size=32000,
        chat_template=None,
    )


# ---- llama_print_system_info -------------------------------------------------------------------


def test_old_flat_format_lists_only_the_enabled_cpu_features() -> None:
    parsed = parse_system_info(OLD_FORMAT)
    assert set(parsed) == {"CPU"}
    assert parsed["CPU"]["AVX512"] == "0"
    assert build_cpu_features(parsed) == ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA")


def test_new_per_backend_format_splits_backends() -> None:
    parsed = parse_system_info(NEW_FORMAT)
    assert set(parsed) == {"CUDA", "CPU"}
    assert parsed["CUDA"]["ARCHS"] == "500,610,700,890"
    assert parsed["CUDA"]["USE_GRAPHS"] == "1"
    assert "USE_GRAPHS" not in parsed["CPU"]
    assert build_cpu_features(parsed) == ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512")


@pytest.mark.parametrize(
    "garbage", ["", "|||", "no equals here | = 1 |", "CPU :", "Metal : | CPU : AVX = 1 |"]
)
def test_malformed_system_info_never_raises(garbage: str) -> None:
    parsed = parse_system_info(garbage)
    assert isinstance(parsed, dict)
    assert set(build_cpu_features(parsed)) <= {"AVX"}


def test_os_flags_map_to_llama_cpp_names_and_simd_level() -> None:
    x86 = os_cpu_features("fpu pni ssse3 avx avx2 fma f16c avx512f avx512_vnni amx_int8".split())
    assert x86 == ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512", "AVX512_VNNI", "AMX_INT8")
    assert simd_level(x86) == "AVX-512"
    assert simd_text(x86).startswith("AVX-512 + AVX512_VNNI, AMX_INT8")
    arm = os_cpu_features("fp asimd asimddp sve i8mm".split())
    assert arm == ("NEON", "ARM_FMA", "MATMUL_INT8", "SVE", "DOTPROD")
    assert simd_level(arm) == "SVE"
    assert os_cpu_features([], "arm64") == ("NEON", "ARM_FMA")  # macOS: no /proc, NEON is mandatory
    assert simd_level(()) is None and simd_text(()) == "none"


# ---- detection ---------------------------------------------------------------------------------


def test_detects_cpu_memory_and_two_gpus_from_fakes(tmp_path: Path) -> None:
    build_x86_tree(tmp_path, cpus=4)
    report = detect_hardware(
        str(tmp_path), Nvml(two_gpu_nvml()), build=fake_build(), ps=FakePsutil(cores=4), machine="x86_64"
    )
    cpu = report.cpu
    assert cpu.model_name == "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz"
    assert cpu.vendor == "Intel"
    assert (cpu.physical_cores, cpu.logical_cores) == (2, 4)
    assert (cpu.min_freq_mhz, cpu.max_freq_mhz) == (400.0, 4800.0)
    assert [(c.level, c.kind, c.size_bytes) for c in cpu.caches] == [
        (1, "Data", 48 * 1024),
        (1, "Instruction", 32 * 1024),
        (2, "Unified", 1280 * 1024),
        (3, "Unified", 12 * 1024 * 1024),
    ]
    assert cpu.caches[-1].shared_by_cpus == 4
    assert cpu.is_virtual_machine
    assert "AVX512" in cpu.features_cpu and "AVX512" not in cpu.features_build
    assert cpu.features_unused_by_build == ("AVX512", "AVX512_VBMI", "AVX512_VNNI")
    assert report.memory.total_bytes == 16 * GIB and report.memory.available_bytes == 10 * GIB

    # A CPU-only build: llama.cpp lists no GPU, so the NVIDIA GPUs NVML sees are not usable.
    assert report.gpus == () and report.gpu_summary == "None usable by this llama.cpp build — CPU only"
    assert [g.name for g in report.unused_gpus] == ["RTX 4090", "RTX 3060"]
    assert [g.nvml_index for g in report.unused_gpus] == [0, 1]
    first = report.unused_gpus[0]
    assert first.memory_total_bytes == 24 * GIB and first.memory_free_bytes == 22 * GIB
    assert first.power_limit_watts == 450.0
    assert (first.max_sm_clock_mhz, first.max_memory_clock_mhz) == (2790.0, 10501.0)
    assert (first.pcie_generation, first.pcie_width, first.pcie_width_max) == (4, 16, 16)
    assert report.driver_version == "550.54.14" and report.cuda_driver_version == "12.4"
    assert report.gpu_status == "ok"
    notes = " ".join(report.notes)
    assert "no CUDA backend" in notes  # NVIDIA GPUs, CPU-only build
    assert "AVX512" in notes and "does not use" in notes
    assert "virtual machine" in notes


def test_no_nvidia_driver_is_cpu_only_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_x86_tree(tmp_path)
    nvml = Nvml(FakeNvmlModule([], init_error=LIBRARY_NOT_FOUND))
    with caplog.at_level(logging.INFO):
        report = detect_hardware(str(tmp_path), nvml, build=fake_build(), ps=FakePsutil(), machine="x86_64")
        detect_hardware(str(tmp_path), nvml, build=fake_build(), ps=FakePsutil(), machine="x86_64")
    assert report.gpus == ()
    assert report.gpu_summary == "None — CPU only"
    assert report.gpu_status == "no NVIDIA driver"
    assert report.driver_version is None and report.cuda_driver_version is None
    assert sum("NVML not available" in r.message for r in caplog.records) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_pynvml_is_cpu_only() -> None:
    def no_pynvml() -> object:
        raise ImportError("No module named 'pynvml'")

    nvml = Nvml(importer=no_pynvml)
    assert not nvml.available()
    assert nvml.status == "pynvml not installed"
    assert nvml.device_query(0, "nvmlDeviceGetName") is None


def test_a_broken_llama_cpp_leaves_the_rest_of_the_report(tmp_path: Path) -> None:
    build_x86_tree(tmp_path)

    def broken() -> object:
        raise OSError("libllama.so: cannot open shared object file")

    report = detect_hardware(
        str(tmp_path),
        Nvml(FakeNvmlModule([])),
        build=broken,  # type: ignore[arg-type]
        ps=FakePsutil(),
        machine="x86_64",
    )
    assert report.build is None
    assert "libllama.so" in (report.build_error or "")
    assert report.cpu.features_build == ()
    assert report.cpu.features_unused_by_build == ()  # unknown build: no false "rebuild" advice
    assert report.cpu.model_name is not None


def test_empty_or_malformed_tree_gives_n_a_not_an_exception(tmp_path: Path) -> None:
    write(tmp_path, "/proc/cpuinfo", "garbage without colons\n\n:::\n")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cache/index0/size", "lots")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cache/index0/level", "one")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "fast")
    report = detect_hardware(
        str(tmp_path),
        Nvml(FakeNvmlModule([])),
        build=fake_build(OLD_FORMAT),
        ps=FakePsutil(),
        machine="x86_64",
    )
    assert report.cpu.model_name is None
    assert report.cpu.caches == ()
    assert report.cpu.max_freq_mhz is None
    assert report.cpu.features_cpu == ()
    assert report.cpu.features_build == ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA")


def test_nvml_failing_on_every_device_call_leaves_gpus_with_n_a(tmp_path: Path) -> None:
    build_x86_tree(tmp_path)
    module = two_gpu_nvml()
    for gpu in module.gpus:
        gpu.answers = {}  # every device call raises "not supported"
    report = detect_hardware(
        str(tmp_path), Nvml(module), build=fake_build(), ps=FakePsutil(), machine="x86_64"
    )
    assert len(report.unused_gpus) == 2
    assert all(
        g.name is None and g.memory_total_bytes is None and g.pcie_generation is None
        for g in report.unused_gpus
    )


def test_this_machine_is_detected_with_its_real_llama_cpp_build() -> None:
    report = detect_hardware()
    assert report.build is not None and "CPU" in report.build.backends
    assert report.cpu.logical_cores >= 1
    assert report.cpu.features_build  # llama.cpp's CPU backend always reports some features
    assert report.memory.total_bytes and report.memory.total_bytes > 0


# ---- recommendations ---------------------------------------------------------------------------


def _cuda_devices(module: FakeNvmlModule) -> tuple[LlamaDevice, ...]:
    """What a CUDA build of llama.cpp lists for the fake NVML's GPUs (same names and memory)."""
    devices = [CPU_DEVICE]
    for i, gpu in enumerate(module.gpus):
        memory = gpu.answers["nvmlDeviceGetMemoryInfo"]
        name = gpu.answers["nvmlDeviceGetName"].decode()
        devices.append(LlamaDevice(i + 1, f"CUDA{i}", name, "GPU", "CUDA", memory.free, memory.total))
    return tuple(devices)


def _report(tmp_path: Path, module: FakeNvmlModule, *, cuda: bool = True, cores: int = 8):
    build_x86_tree(tmp_path)
    if cuda:
        build = fake_build(NEW_FORMAT, backends=("CUDA", "CPU"), gpu_offload=bool(module.gpus))
        devices = _cuda_devices(module)
    else:
        build, devices = fake_build(), (CPU_DEVICE,)
    return detect_hardware(
        str(tmp_path),
        Nvml(module),
        build=build,
        devices=lambda: devices,
        ps=FakePsutil(cores=cores),
        machine="x86_64",
    )


def test_threads_and_batches_without_a_gpu(tmp_path: Path) -> None:
    rec = recommend(_report(tmp_path, FakeNvmlModule([]), cores=8))
    assert (rec.n_threads, rec.n_threads_batch) == (4, 8)  # physical for generation, logical for prompt
    assert (rec.n_batch, rec.n_ubatch) == (512, 512)
    assert rec.n_gpu_layers == 0 and rec.gpu_layers_text == "no GPU that llama.cpp can use, CPU only"
    assert rec.load_values() == {
        "n_threads": 4,
        "n_threads_batch": 8,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_gpu_layers": 0,
    }
    assert rec.simd_text.startswith("AVX-512")
    assert "physical" in rec.reason("n_threads")


def test_gpu_layers_need_a_model_and_a_gpu_build(tmp_path: Path) -> None:
    report = _report(tmp_path, FakeNvmlModule([FakeGpu("A")]))
    assert recommend(report).n_gpu_layers == 0
    assert recommend(report).gpu_layers_text == "select a model"
    cpu_only = _report(tmp_path, FakeNvmlModule([FakeGpu("A")]), cuda=False)
    assert recommend(cpu_only, _model()).n_gpu_layers == 0
    assert "no backend for the GPU present" in recommend(cpu_only, _model()).gpu_layers_text
    assert recommend(report, _model(n_layer=None)).n_gpu_layers == 0
    unknown = dataclasses.replace(report, devices=None, devices_error="llama.cpp crashed")
    assert recommend(unknown, _model()).n_gpu_layers == 0
    assert recommend(unknown, _model()).gpu_layers_text == "GPUs unknown: llama.cpp crashed"


def test_everything_fits_in_a_big_gpu(tmp_path: Path) -> None:
    report = _report(tmp_path, FakeNvmlModule([FakeGpu("big", total_gib=80, used_gib=1)]))
    rec = recommend(report, _model())
    assert rec.n_gpu_layers == ALL_LAYERS
    assert "all 32 layers" in rec.gpu_layers_text
    assert (rec.n_batch, rec.n_ubatch) == (2048, 512)


def test_partial_offload_is_the_largest_count_that_fits(tmp_path: Path) -> None:
    report = _report(tmp_path, FakeNvmlModule([FakeGpu("small", total_gib=4, used_gib=1)]))
    model = _model(weights_gib=6.0)
    rec = recommend(report, model)
    assert 0 < rec.n_gpu_layers < 32
    budget = 3 * GIB - vram_margin_bytes(4 * GIB)
    load = LoadSettings(n_ctx=2048, n_batch=256, n_ubatch=256)  # the LARGE preset the estimate is based on

    def vram(k: int) -> int:
        return estimate_memory(
            model,
            dataclasses.replace(load, n_gpu_layers=k),
            available_ram_bytes=1 << 62,
            available_vram_bytes=budget,
        ).total_vram_bytes

    assert vram(rec.n_gpu_layers) <= budget < vram(rec.n_gpu_layers + 1)
    assert f"{rec.n_gpu_layers} of 32 layers fit" in rec.gpu_layers_text


def test_fresher_free_vram_overrides_the_report(tmp_path: Path) -> None:
    report = _report(tmp_path, FakeNvmlModule([FakeGpu("big", total_gib=80, used_gib=1)]))
    assert recommend(report, _model(), free_vram_bytes=[0]).n_gpu_layers == 0
    assert recommend(report, _model(), free_vram_bytes=[None]).gpu_layers_text == "free VRAM unknown"


def test_no_budget_means_no_layers() -> None:
    assert gpu_layers_that_fit(_model(), LoadSettings(), 0) == 0
    assert gpu_layers_that_fit(_model(), LoadSettings(), -5) == 0


# ---- CLI ---------------------------------------------------------------------------------------


def test_hw_command_prints_the_report() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "hw", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu"]["logical_cores"] >= 1
    assert "CPU" in report["build"]["backends"]
    assert report["recommendation"]["n_threads"] >= 1
    assert isinstance(report["gpu_summary"], str)
    text = subprocess.run(
        [sys.executable, "-m", "cli", "hw"], capture_output=True, text=True, timeout=120, check=False
    )
    assert text.returncode == 0, text.stderr
    assert "Cores" in text.stdout and "Recommended" in text.stdout


def test_removed_cpu_files_between_detections(tmp_path: Path) -> None:
    build_x86_tree(tmp_path)
    nvml = Nvml(FakeNvmlModule([]))
    first = detect_hardware(str(tmp_path), nvml, build=fake_build(), ps=FakePsutil(), machine="x86_64")
    remove(tmp_path, "/sys/devices/system/cpu/cpu0/cache")
    remove(tmp_path, "/proc/cpuinfo")
    second = detect_hardware(str(tmp_path), nvml, build=fake_build(), ps=FakePsutil(), machine="x86_64")
    assert first.cpu.caches and second.cpu.caches == ()
    assert second.cpu.model_name is None and second.cpu.max_freq_mhz == 4800.0


# ---- AMX and the build check -------------------------------------------------------------------

AMX_FLAGS = " avx512f avx512cd avx512vl avx512dq avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
AMX_FREE_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
)
NATIVE_AMX_BUILD = AMX_FREE_BUILD.replace("REPACK = 1", "AMX_INT8 = 1 | REPACK = 1")


def _amx_machine(tmp_path: Path) -> Path:
    build_x86_tree(tmp_path)
    cpuinfo = tmp_path / "proc" / "cpuinfo"
    cpuinfo.write_text(
        "\n".join(
            line + AMX_FLAGS if line.startswith("flags") else line
            for line in cpuinfo.read_text(encoding="utf-8").splitlines()
        )
        + "\n",
        encoding="utf-8",
    )
    return tmp_path


def test_an_amx_free_build_is_explained_not_called_a_missed_opportunity(tmp_path: Path) -> None:
    report = detect_hardware(
        str(_amx_machine(tmp_path)),
        Nvml(FakeNvmlModule([])),
        build=fake_build(AMX_FREE_BUILD),
        ps=FakePsutil(cores=2),
        machine="x86_64",
    )
    assert "AMX_INT8" in report.cpu.features_cpu and "AMX_INT8" not in report.cpu.features_build
    notes = " ".join(report.notes)
    assert "native build would" not in notes  # the native build is the one that crashes
    assert "AMX path out on purpose" in notes and "illegal instruction" in notes
    assert report.build_check is None  # a fake build is not checked


def test_a_build_that_crashed_the_check_is_never_recommended(tmp_path: Path) -> None:
    from app.llama.build_check import CRASHED, OK, BuildVerdict

    crashed = BuildVerdict(
        key="k",
        status=CRASHED,
        message="crashed",
        signal_text="illegal instruction (SIGILL)",
        rebuild_command='CMAKE_ARGS="-DGGML_AMX_INT8=OFF" python -m pip install ...',
    )
    report = detect_hardware(
        str(_amx_machine(tmp_path)),
        Nvml(FakeNvmlModule([])),
        build=fake_build(NATIVE_AMX_BUILD),
        ps=FakePsutil(cores=2),
        machine="x86_64",
        build_check=lambda: crashed,
    )
    notes = " ".join(report.notes)
    assert report.build_check is crashed
    assert "crashed LlamaScope's build check" in notes and "illegal instruction (SIGILL)" in notes
    assert crashed.rebuild_command in notes
    assert "AMX in use" not in notes
    fine = BuildVerdict(key="k", status=OK, message="ok")
    report = detect_hardware(
        str(_amx_machine(tmp_path)),
        Nvml(FakeNvmlModule([])),
        build=fake_build(NATIVE_AMX_BUILD),
        ps=FakePsutil(cores=2),
        machine="x86_64",
        build_check=lambda: fine,
    )
    assert "AMX in use" in " ".join(report.notes)  # a build with AMX that passed (a fixed llama.cpp)
