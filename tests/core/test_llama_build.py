"""Which llama.cpp build a CPU gets (app/llama/build_flags.py), from fake /proc/cpuinfo files, and the
Makefile's use of it: an AMX CPU gets an AMX-free build and its own install stamp."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.llama.build_flags import (
    cmake_args_for_cpu,
    read_cpu_flags,
    rebuild_command,
    venv_cmake_args,
)

ROOT = Path(__file__).resolve().parents[2]

# Flags as the kernel lists them (trimmed): an Intel Sapphire Rapids VM, an AMD Zen 4 VM (AVX-512,
# no AMX) and an AVX2 laptop.
SAPPHIRE_RAPIDS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
    "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq "
    "pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand "
    "hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq "
    "rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec "
    "xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd ida arat avx512vbmi umip pku ospke waitpkg "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq rdpid cldemote "
    "movdiri movdir64b md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d "
    "arch_capabilities"
)
ZEN4 = (
    "fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512ifma avx512cd "
    "avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq"
)
HASWELL = "fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2"


def _cpuinfo(tmp_path: Path, flags: str, name: str = "cpuinfo") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join(f"processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n" for i in range(2)),
        encoding="utf-8",
    )
    return path


def _options(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("-D").split("=", 1) for a in args)


def test_an_amx_cpu_gets_every_simd_level_by_name_and_no_amx(tmp_path: Path) -> None:
    flags = read_cpu_flags(str(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS)))
    assert {"amx_tile", "amx_int8", "avx512f"} <= flags
    options = _options(cmake_args_for_cpu(flags, "x86_64"))
    assert options["GGML_NATIVE"] == "OFF"  # -march=native would bring AMX back
    for on in (
        "SSE42",
        "AVX",
        "AVX2",
        "BMI2",
        "AVX_VNNI",
        "FMA",
        "F16C",
        "AVX512",
        "AVX512_VBMI",
        "AVX512_VNNI",
        "AVX512_BF16",
    ):
        assert options[f"GGML_{on}"] == "ON", on
    for off in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert options[f"GGML_{off}"] == "OFF", off


def test_cpus_without_amx_keep_the_stock_native_build(tmp_path: Path) -> None:
    for flags in (ZEN4, HASWELL):
        assert cmake_args_for_cpu(read_cpu_flags(str(_cpuinfo(tmp_path, flags))), "x86_64") == []
    # An ARM machine lists "Features", never AMX; an unreadable cpuinfo (macOS) has no flags.
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp sve\n", encoding="utf-8")
    assert read_cpu_flags(str(arm)) >= {"asimd", "sve"}
    assert cmake_args_for_cpu(read_cpu_flags(str(arm)), "aarch64") == []
    assert read_cpu_flags(str(tmp_path / "missing")) == frozenset()
    # The same flags on a non-x86 machine name (a fake) change nothing either.
    assert cmake_args_for_cpu(read_cpu_flags(str(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS))), "aarch64") == []


def test_a_simd_level_is_on_only_when_the_cpu_has_all_its_parts(tmp_path: Path) -> None:
    # AVX-512 in ggml means F, CD, VL, DQ and BW together; an AMX CPU without VL gets none of it.
    partial = SAPPHIRE_RAPIDS.replace(" avx512vl", "").replace(" avx_vnni", "")
    options = _options(cmake_args_for_cpu(read_cpu_flags(str(_cpuinfo(tmp_path, partial))), "x86_64"))
    assert options["GGML_AVX512"] == "OFF"
    assert options["GGML_AVX_VNNI"] == "OFF"
    assert options["GGML_AVX2"] == "ON"


def test_the_users_own_cmake_args_come_last_and_win(tmp_path: Path) -> None:
    flags = read_cpu_flags(str(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS)))
    args = venv_cmake_args({"CMAKE_ARGS": "-DGGML_CUDA=on -DGGML_NATIVE=ON"}, flags, "x86_64")
    assert args.endswith("-DGGML_CUDA=on -DGGML_NATIVE=ON")
    assert args.index("-DGGML_NATIVE=OFF") < args.index("-DGGML_NATIVE=ON")  # CMake keeps the last
    assert (
        venv_cmake_args({"CMAKE_ARGS": "-DGGML_VULKAN=on"}, read_cpu_flags(""), "x86_64")
        == "-DGGML_VULKAN=on"
    )
    assert venv_cmake_args({}, frozenset(HASWELL.split()), "x86_64") == ""


def test_the_rebuild_command_is_a_pip_command_for_this_cpu(tmp_path: Path) -> None:
    flags = read_cpu_flags(str(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS)))
    command = rebuild_command("/opt/my python/bin/python", "0.3.36", flags, "x86_64")
    words = shlex.split(command)
    assert words[0].startswith("CMAKE_ARGS=") and "-DGGML_AMX_INT8=OFF" in words[0]
    assert words[1] == "/opt/my python/bin/python"
    assert words[2:] == [
        "-m",
        "pip",
        "install",
        "--force-reinstall",
        "--no-cache-dir",
        "--no-deps",
        "llama-cpp-python==0.3.36",
    ]


def test_the_module_prints_the_args_for_a_cpuinfo_file(tmp_path: Path) -> None:
    amx = _cpuinfo(tmp_path, SAPPHIRE_RAPIDS)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.llama.build_flags",
            "cmake-args",
            "--cpuinfo",
            str(amx),
            "--machine",
            "x86_64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert out.startswith("-DGGML_NATIVE=OFF") and "-DGGML_AMX_TILE=OFF" in out


@pytest.mark.skipif(shutil.which("make") is None or not sys.platform.startswith("linux"), reason="needs make")
def test_the_makefile_builds_an_amx_cpu_apart_with_its_own_stamp(tmp_path: Path) -> None:
    def dry_run(cpuinfo: Path) -> str:
        return subprocess.run(
            ["make", "-n", "-B", "install", f"CPUINFO={cpuinfo}", "PYTHON=" + sys.executable],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        ).stdout

    amx = dry_run(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS, "amx"))
    plain = dry_run(_cpuinfo(tmp_path, HASWELL, "haswell"))
    # The AMX machine builds its own wheel, outside pip's cache (which would hand back the native one).
    assert "-DGGML_AMX_INT8=OFF" in amx and "pip wheel --no-deps --no-cache-dir" in amx
    assert (
        "-DGGML_" not in plain
        and "pip install --progress-bar off --force-reinstall --no-deps llama-cpp-python==" in plain
    )

    def stamp(text: str) -> str:
        return next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith("touch") and "llama-build" in line
        )

    # A venv with the native build has the other stamp: `make install` on the AMX machine replaces it.
    assert stamp(amx) != stamp(plain)
