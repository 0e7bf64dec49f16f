"""One GPU list: llama.cpp's device registry, read through ctypes, used by the hardware report, the
advice, the tuner and the benchmark records. This machine has no GPU, so GPUs are fakes (facts
records with a Metal, Vulkan or CUDA device; the fake NVML module); the CPU-only facts are real."""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from hardware_fakes import (
    CPU_DEVICE,
    LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvmlModule,
    FakePsutil,
    build_x86_tree,
    fake_build,
    fake_facts,
    from_facts,
    gpu_device,
    metal_facts,
    vulkan_facts,
)

from app.bench.export import to_record
from app.bench.runner import BenchPlan, BenchTest, run_benchmark
from app.llama import facts as llama_facts
from app.llama import runtime as llama_runtime
from app.llama.build_check import build_key
from app.llama.devices import (
    DEVICE_TYPES,
    SIGNATURES,
    LlamaDevice,
    _Props,
    gpu_devices,
    gpu_info_text,
    pci_key,
)
from app.llama.facts import LibraryFacts, current_devices
from app.model.model_info import ModelInfo, SizeClass
from app.model.settings import LoadSettings
from app.telemetry.advice import ALL_LAYERS, recommend
from app.telemetry.hardware import HardwareReport, detect_hardware
from app.telemetry.nvml import Nvml
from app.tune.space import MachineFacts, default_search_space

GIB = 1024**3


def _model() -> ModelInfo:
    return ModelInfo(
        path="/models/m.gguf",
        file_size_bytes=4 * GIB,
        gguf_version=3,
        name="M",
        architecture="llama",
        n_params=7_000_000_000,
        size_class=SizeClass.LARGE,
        size_label="7B",
        file_type="Q4_K_M",
        tensor_types=(),
        tensor_data_bytes=4 * GIB,
        bits_per_weight=4.8,
        context_length=4096,
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_embd_head_k=128,
        n_embd_head_v=128,
        vocab_size=32000,
        chat_template=None,
    )


def _no_nvidia() -> Nvml:
    return Nvml(FakeNvmlModule([], init_error=LIBRARY_NOT_FOUND))


def _detect(tmp_path: Path, facts: LibraryFacts, nvml: Nvml | None = None) -> HardwareReport:
    build_x86_tree(tmp_path, cpus=8)
    return detect_hardware(
        str(tmp_path), nvml or _no_nvidia(), ps=FakePsutil(cores=8), machine="x86_64", **from_facts(facts)
    )


# ---- the C signatures, against the header llama-cpp-python installs -----------------------------


def _header() -> str:
    path = importlib.metadata.distribution("llama_cpp_python").locate_file("include/ggml-backend.h")
    return Path(str(path)).read_text(encoding="utf-8")


def _c_type(text: str) -> object:
    """The ctypes type of a C type as ggml-backend.h spells it."""
    norm = re.sub(r"\s+", " ", re.sub(r"\s*\*", " *", text)).strip()
    return {
        "void": None,
        "size_t": ctypes.c_size_t,
        "const char *": ctypes.c_char_p,
        "enum ggml_backend_dev_type": ctypes.c_int,  # a C enum is an int
        "ggml_backend_dev_t": ctypes.c_void_p,
        "ggml_backend_reg_t": ctypes.c_void_p,
        "size_t *": ctypes.POINTER(ctypes.c_size_t),
        "struct ggml_backend_dev_props *": ctypes.POINTER(_Props),
    }[norm]


def test_each_ctypes_signature_matches_the_installed_ggml_backend_header() -> None:
    header = _header()
    # The handles are pointers to opaque structs: c_void_p carries them.
    assert re.search(r"typedef struct ggml_backend_device \* ggml_backend_dev_t;", header)
    assert re.search(r"typedef struct ggml_backend_reg \* ggml_backend_reg_t;", header)
    for name, (restype, argtypes) in SIGNATURES.items():
        m = re.search(rf"GGML_API\s+([^;()]*?)\s*\b{name}\s*\(([^)]*)\)\s*;", header)
        assert m is not None, name
        assert _c_type(m.group(1)) == restype, name
        params = [p.strip() for p in m.group(2).split(",") if p.strip() not in ("", "void")]
        # Drop each parameter's name: the last identifier.
        types = [_c_type(re.sub(r"\b\w+\s*$", "", p)) for p in params]
        assert types == list(argtypes), name


def test_the_device_type_enum_and_the_props_struct_match_the_header() -> None:
    header = _header()
    enum = re.search(r"enum ggml_backend_dev_type \{(.*?)\};", header, re.S)
    assert enum is not None and "=" not in re.sub(r"//.*", "", enum.group(1))  # counts from 0
    assert tuple(re.findall(r"GGML_BACKEND_DEVICE_TYPE_(\w+)", enum.group(1))) == DEVICE_TYPES
    props = re.search(r"struct ggml_backend_dev_props \{(.*?)\};", header, re.S)
    assert props is not None
    fields = re.findall(r"^\s*([^/\n][^;\n]*?)\s*\b(\w+);", props.group(1), re.M)
    declared = [(n, _c_type(t) if n != "caps" else t.strip()) for t, n in fields]
    ours = [(n, t) for n, t in _Props._fields_ if n != "_room"]
    assert declared[:6] == [(n, t) for n, t in ours[:6]]  # name … device_id: read and checked
    assert declared[6] == ("caps", "struct ggml_backend_dev_caps")


# ---- the real registry (this machine: CPU only) -------------------------------------------------


def test_the_real_registry_reads_plausible_values_in_this_process() -> None:
    lc = llama_runtime.llama()
    devices = current_devices()  # llama.cpp is loaded here: read in place
    assert devices is not None
    cpu = [d for d in devices if d.kind == "CPU"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].backend == "CPU"
    # ggml's CPU device reports the machine's physical memory: the same figure psutil reads.
    assert cpu[0].memory_total_bytes == psutil.virtual_memory().total
    assert [d.index for d in devices] == list(range(len(devices)))
    # Two independent llama.cpp answers agree: a GPU in the list exactly when it can offload.
    assert bool(gpu_devices(devices)) == bool(lc.llama_supports_gpu_offload())


def test_a_child_reads_the_same_devices_and_an_old_cache_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "llama-facts.json"
    monkeypatch.setattr(llama_facts, "_cache_path", lambda: cache)
    key = build_key(llama_runtime.llama_lib_dir())
    assert key is not None
    here = llama_facts.read_in_this_process()
    old = here.to_json()
    del old["devices"]  # a record written before devices were part of it
    cache.write_text(json.dumps({key: old}), encoding="utf-8")
    child, read_now = llama_facts._from_child_or_cache()  # the old record is not trusted
    assert read_now  # a child read it again
    assert child.devices is not None and here.devices is not None
    assert [(d.name, d.kind, d.memory_total_bytes) for d in child.devices] == [
        (d.name, d.kind, d.memory_total_bytes) for d in here.devices
    ]
    stored = json.loads(cache.read_text(encoding="utf-8"))[key]
    assert LibraryFacts.from_json(stored) == child  # the refreshed record, devices included


def test_a_process_without_llama_cpp_asks_a_child_and_never_loads_it() -> None:
    # What the window and the command line do: the device list comes from a child process.
    code = (
        "import json, sys\n"
        "from app.llama.facts import current_devices\n"
        "devices = current_devices()\n"
        "assert 'llama_cpp' not in sys.modules\n"
        "print(json.dumps([d.to_json() for d in devices]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    names = [d["name"] for d in json.loads(done.stdout)]
    here = current_devices()
    assert here is not None and names == [d.name for d in here]


def test_a_detection_asks_one_child_whether_the_cache_is_cold_or_warm(tmp_path: Path) -> None:
    # The build's facts, then its devices, as detect_hardware asks for them: a cold cache costs one
    # child (its device list is fresh), a warm one the child that reads the devices again.
    cache = tmp_path / "llama-facts.json"
    code = (
        "import pathlib, subprocess\n"
        "real, calls = subprocess.run, []\n"
        "subprocess.run = lambda *a, **k: calls.append(a) or real(*a, **k)\n"
        "from app.llama import facts\n"
        f"facts._cache_path = lambda: pathlib.Path({str(cache)!r})\n"
        "facts.library_facts()\n"
        "assert facts.current_devices() is not None\n"
        "print(len(calls))\n"
    )
    for state in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1", state
        assert cache.is_file()


def test_the_facts_record_round_trips_with_its_devices() -> None:
    for facts in (metal_facts(), vulkan_facts(), fake_facts(None)):
        assert LibraryFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts


def test_the_facts_child_prints_the_device_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.llama.facts"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    facts = LibraryFacts.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    assert facts.devices is not None and facts.devices_error is None
    assert any(d.kind == "CPU" for d in facts.devices)
    assert facts.gpu_offload == bool(gpu_devices(facts.devices))


# ---- names and ids ------------------------------------------------------------------------------


def test_pci_bus_ids_in_ggml_and_nvml_spellings_name_one_slot() -> None:
    assert pci_key("0000:01:00.0") == pci_key("00000000:01:00.0") == (0, 1, 0, 0)
    assert pci_key(b"00000000:C1:00.1") == pci_key("0000:c1:00.1") == (0, 0xC1, 0, 1)
    assert pci_key("0000:02:00.0-v1") == (0, 2, 0, 0)  # a CUDA virtual device on that slot
    assert pci_key(None) is None and pci_key("") is None and pci_key("not a bus id") is None


def test_gpu_info_joins_the_gpu_descriptions_as_llama_bench_does() -> None:
    devices = (
        CPU_DEVICE,
        gpu_device(1, "CUDA0", "NVIDIA GeForce RTX 4090", backend="CUDA"),
        LlamaDevice(2, "BLAS", "OpenBLAS", "ACCEL", "BLAS", None, None),  # not a GPU
        gpu_device(3, "Vulkan0", "AMD Radeon 780M (RADV PHOENIX)", backend="Vulkan", kind="IGPU"),
    )
    # llama-bench's get_gpu_info(): GPU and IGPU devices' descriptions joined by ", ".
    assert gpu_info_text(devices) == "NVIDIA GeForce RTX 4090, AMD Radeon 780M (RADV PHOENIX)"
    assert gpu_info_text((CPU_DEVICE,)) == ""


# ---- one list: the report, the advice and the tuner ---------------------------------------------


def test_a_metal_gpu_is_reported_and_gets_layers(tmp_path: Path) -> None:
    report = _detect(tmp_path, metal_facts())
    (gpu,) = report.gpus
    assert (gpu.name, gpu.device_name, gpu.backend, gpu.kind) == ("Apple M2 Max", "MTL0", "MTL", "IGPU")
    assert (gpu.memory_total_bytes, gpu.memory_free_bytes) == (48 * GIB, 40 * GIB)
    assert gpu.nvml_index is None and gpu.power_limit_watts is None  # NVIDIA's details only
    assert report.gpu_summary == "Apple M2 Max (MTL0)"
    assert report.gpu_status == "no NVIDIA driver" and report.unused_gpus == ()
    assert any("Metal" in n for n in report.notes)
    rec = recommend(report, _model())
    assert rec.n_gpu_layers == ALL_LAYERS  # was 0: "no GPU", so Apply turned the GPU off
    assert rec.gpu_layers_text.startswith(
        "all 32 layers and the output layer fit in 40.0 GiB free GPU memory"
    )
    assert (rec.n_batch, rec.n_ubatch) == (2048, 512)


def test_a_vulkan_gpu_without_nvidia_is_reported_and_gets_layers(tmp_path: Path) -> None:
    report = _detect(tmp_path, vulkan_facts())
    (gpu,) = report.gpus
    assert gpu.label == "AMD Radeon RX 7900 XTX (RADV NAVI31) (Vulkan0)"
    assert gpu.pci_bus_id == "0000:03:00.0"
    rec = recommend(report, _model())
    assert rec.n_gpu_layers == ALL_LAYERS and "23.0 GiB free VRAM" in rec.gpu_layers_text


def test_nvml_details_join_the_llama_cpp_gpu_on_the_same_pci_slot(tmp_path: Path) -> None:
    # Two GPUs of one name; llama.cpp lists only the second (CUDA_VISIBLE_DEVICES=1).
    nvml = Nvml(
        FakeNvmlModule(
            [
                FakeGpu(
                    "NVIDIA GeForce RTX 4090", nvmlDeviceGetPciInfo=SimpleNamespace(busId=b"00000000:01:00.0")
                ),
                FakeGpu(
                    "NVIDIA GeForce RTX 4090",
                    nvmlDeviceGetEnforcedPowerLimit=300_000,
                    nvmlDeviceGetPciInfo=SimpleNamespace(busId=b"00000000:02:00.0"),
                ),
            ]
        )
    )
    cuda = gpu_device(1, "CUDA0", "NVIDIA GeForce RTX 4090", backend="CUDA", pci_bus_id="0000:02:00.0")
    report = _detect(tmp_path, fake_facts((CPU_DEVICE, cuda), backends=("CUDA", "CPU")), nvml)
    (gpu,) = report.gpus
    assert gpu.index == 0 and gpu.nvml_index == 1  # by slot: a match by name would take NVML's 0
    assert gpu.power_limit_watts == 300.0 and gpu.pcie_generation == 4
    assert [g.nvml_index for g in report.unused_gpus] == [0]
    assert any("not in llama.cpp's device list" in n for n in report.notes)
    assert not any("no CUDA backend" in n for n in report.notes)


def test_an_nvidia_gpu_used_through_vulkan_is_not_called_unused(tmp_path: Path) -> None:
    nvml = Nvml(
        FakeNvmlModule([FakeGpu("RTX 3060", nvmlDeviceGetPciInfo=SimpleNamespace(busId="00000000:01:00.0"))])
    )
    vk = gpu_device(1, "Vulkan0", "NVIDIA GeForce RTX 3060", backend="Vulkan", pci_bus_id="0000:01:00.0")
    report = _detect(tmp_path, fake_facts((CPU_DEVICE, vk), backends=("Vulkan", "CPU")), nvml)
    assert [g.nvml_index for g in report.gpus] == [0] and report.unused_gpus == ()
    assert report.gpus[0].max_sm_clock_mhz == 2790.0  # NVML's detail on llama.cpp's device
    assert not any("no CUDA backend" in n for n in report.notes)


def test_an_unreadable_device_list_is_unknown_not_cpu_only(tmp_path: Path) -> None:
    nvml = Nvml(FakeNvmlModule([FakeGpu("RTX 4090")]))
    report = _detect(tmp_path, fake_facts(None, backends=("CUDA", "CPU")), nvml)
    assert report.devices is None and report.gpus == ()
    assert report.gpu_summary.startswith("n/a — llama.cpp's device list not readable")
    assert recommend(report, _model()).gpu_layers_text.startswith("GPUs unknown")
    assert [g.name for g in report.unused_gpus] == ["RTX 4090"]  # still shown: NVML sees it
    assert not any("not in llama.cpp's device list" in n for n in report.notes)  # not known

    def crashing() -> None:
        raise llama_facts.LlamaFactsError("Loading the llama.cpp library crashed: illegal instruction")

    build_x86_tree(tmp_path)
    crashed = detect_hardware(
        str(tmp_path), _no_nvidia(), build=fake_build(), devices=crashing, ps=FakePsutil(), machine="x86_64"
    )
    assert crashed.devices is None and "illegal instruction" in (crashed.devices_error or "")


def test_the_tuner_uses_the_same_list(tmp_path: Path) -> None:
    metal = metal_facts()
    machine = MachineFacts.detect(devices=lambda: metal.devices)
    assert machine.has_gpu and machine.available_vram_bytes == 40 * GIB
    assert default_search_space(_model(), has_gpu=machine.has_gpu).n_gpu_layers == tuple(range(34))
    cpu = MachineFacts.detect(devices=lambda: (CPU_DEVICE,))
    assert not cpu.has_gpu and cpu.available_vram_bytes is None
    assert default_search_space(_model(), has_gpu=cpu.has_gpu).n_gpu_layers == (0,)
    unknown = MachineFacts.detect(devices=lambda: None)
    assert not unknown.has_gpu  # nothing offloaded on a guess
    # The report's GPUs and the tuner's come from one list.
    report = _detect(tmp_path, metal)
    assert machine.has_gpu == bool(report.gpus)
    assert machine.available_vram_bytes == sum(g.memory_free_bytes or 0 for g in report.gpus)


def test_this_machines_report_and_tuner_agree_with_llama_cpp() -> None:
    report = detect_hardware()  # the real build's facts, devices read now
    devices = current_devices()
    assert report.devices is not None and devices is not None
    assert [d.name for d in report.devices] == [d.name for d in devices]
    assert [g.device_name for g in report.gpus] == [d.name for d in gpu_devices(devices)]
    assert MachineFacts.detect().has_gpu == bool(report.gpus)
    if not report.gpus:
        assert recommend(report, _model()).gpu_layers_text == "no GPU that llama.cpp can use, CPU only"


# ---- gpu_info in benchmark records --------------------------------------------------------------


def _tiny_plan(demo_model: str) -> BenchPlan:
    base = LoadSettings(n_threads=1, n_threads_batch=1)
    return BenchPlan(
        models=(demo_model,), tests=(BenchTest(n_gen=2),), base=base, repetitions=1, warmup=False
    )


def test_benchmark_records_carry_llama_cpps_gpu_list(
    demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (real,) = run_benchmark(_tiny_plan(demo_model))
    assert real.gpu_info == gpu_info_text(current_devices() or ())  # "" on a machine without a GPU
    vulkan = vulkan_facts().devices
    monkeypatch.setattr("app.bench.runner.current_devices", lambda: vulkan)
    (result,) = run_benchmark(_tiny_plan(demo_model))
    assert result.gpu_info == "AMD Radeon RX 7900 XTX (RADV NAVI31)"
    assert to_record(result)["gpu_info"] == "AMD Radeon RX 7900 XTX (RADV NAVI31)"  # as exported
