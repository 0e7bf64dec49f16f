"""Which llama.cpp build this CPU should get, and the command that makes it.

llama-cpp-python compiles llama.cpp with GGML_NATIVE (`-march=native`). On an x86 CPU with Intel
AMX (Sapphire Rapids and later) that compiles ggml's AMX matmul path in, and the path dies with
SIGILL on llama.cpp's worker threads: the tile permission and tile configuration are set up on
the main thread only (ggml-org/llama.cpp PR #26954, open). On such a CPU LlamaScope builds
without `-march=native` and switches every other SIMD level the CPU has on by name, with AMX off.
Every other CPU keeps the stock native build.

Stdlib only: the Makefile runs this module (`python -m app.llama.build_flags cmake-args`) before the
virtual environment has any of LlamaScope's dependencies.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping

# The /proc/cpuinfo flags that mean Intel AMX.
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")

# ggml's CMake option -> the /proc/cpuinfo flags the option's compiler flags need, all of them.
# (ggml/src/ggml-cpu/CMakeLists.txt: GGML_AVX512 means -mavx512f -mavx512cd -mavx512vl
# -mavx512dq -mavx512bw.) The order is ggml's own.
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE42", ("sse4_2",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2",)),
    ("BMI2", ("bmi2",)),
    ("AVX_VNNI", ("avx_vnni",)),
    ("FMA", ("fma",)),
    ("F16C", ("f16c",)),
    ("AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("AVX512_VBMI", ("avx512vbmi",)),
    ("AVX512_VNNI", ("avx512_vnni",)),
    ("AVX512_BF16", ("avx512_bf16",)),
)
AMX_OPTIONS = ("AMX_TILE", "AMX_INT8", "AMX_BF16")
_X86_MACHINES = ("x86_64", "amd64", "i686", "i386", "x86")


def read_cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The x86 "flags" (or ARM "Features") of the first CPU in a cpuinfo file; empty if unreadable."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def is_x86(machine: str) -> bool:
    return machine.lower() in _X86_MACHINES


def has_amx(flags: Iterable[str]) -> bool:
    return any(flag in AMX_FLAGS for flag in flags)


def needs_amx_free_build(flags: Iterable[str], machine: str) -> bool:
    """True on an x86 CPU with AMX, where the stock native build crashes."""
    return is_x86(machine) and has_amx(flags)


def amx_free_cmake_args(flags: Iterable[str]) -> list[str]:
    """CMake options for this CPU's SIMD levels, named one by one, with AMX off and no -march=native."""
    present = set(flags)
    args = ["-DGGML_NATIVE=OFF"]
    for option, needed in X86_OPTIONS:
        args.append(f"-DGGML_{option}={'ON' if all(f in present for f in needed) else 'OFF'}")
    args += [f"-DGGML_{option}=OFF" for option in AMX_OPTIONS]
    return args


def cmake_args_for_cpu(flags: Iterable[str], machine: str) -> list[str]:
    """The CMake options LlamaScope adds for this CPU: none (the stock native build) unless it has AMX."""
    flags = frozenset(flags)
    return amx_free_cmake_args(flags) if needs_amx_free_build(flags, machine) else []


def venv_cmake_args(env: Mapping[str, str], flags: Iterable[str], machine: str) -> str:
    """CMAKE_ARGS for building llama-cpp-python: this CPU's options, then the user's own CMAKE_ARGS.

    CMake takes the last -D of an option, so the user's options (a GPU backend, or
    -DGGML_NATIVE=ON to insist on the native build) win over LlamaScope's.
    """
    ours = cmake_args_for_cpu(flags, machine)
    user = env.get("CMAKE_ARGS", "").strip()
    return " ".join([*ours, *([user] if user else [])])


def rebuild_command(python: str, version: str, flags: Iterable[str], machine: str) -> str:
    """The shell command that reinstalls llama-cpp-python `version` for this CPU without AMX."""
    args = " ".join(amx_free_cmake_args(flags)) if is_x86(machine) else "-DGGML_NATIVE=ON"
    return (
        f'CMAKE_ARGS="{args}" {shlex.quote(python)} -m pip install --force-reinstall --no-cache-dir '
        f"--no-deps llama-cpp-python=={version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.llama.build_flags", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    args_cmd = sub.add_parser("cmake-args", help="print the CMAKE_ARGS llama-cpp-python is built with here")
    args_cmd.add_argument(
        "--cpuinfo", default="/proc/cpuinfo", help="a cpuinfo file (default: this machine's)"
    )
    args_cmd.add_argument(
        "--machine", default=platform.machine(), help="architecture (default: this machine's)"
    )
    opts = parser.parse_args(argv)
    if opts.command == "cmake-args":
        print(venv_cmake_args(os.environ, read_cpu_flags(opts.cpuinfo), opts.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
