"""One place that imports llama-cpp-python, routes llama.cpp's log and reads its build facts.

llama.cpp writes its log (model buffer sizes, KV cache size, compute buffers) through a global
callback. llama-cpp-python prints it to stderr; LlamaScope keeps the recent lines in a ring
buffer instead, so the memory llama.cpp really allocated can be read back after a load, and the
terminal of a CLI user is not flooded.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import platform
import re
import sys
import threading
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TextIO

log = logging.getLogger(__name__)

_LOG_LINES: deque[tuple[int, str]] = deque(maxlen=20000)  # (serial number, line)
_serial = 0
_log_lock = threading.Lock()
_partial_line: list[str] = []
_line_level = [0]  # the level of the line being joined
_log_callback_ref: object | None = None  # the ctypes callback must outlive every llama.cpp call


def llama_lib_dir() -> Path:
    """The folder llama-cpp-python loads libllama from: LLAMA_CPP_LIB_PATH, else its own lib/."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed")
    return Path(spec.origin).parent / "lib"


def _ggml_library(lib_dir: Path) -> ctypes.CDLL:
    """The libggml that libllama itself uses (call after importing llama_cpp).

    On Linux libllama links libggml by its soname (libggml.so.0), which a wheel ships as a copy
    beside libggml.so and a PyInstaller bundle also puts in its top folder, found first through
    the bootloader's LD_LIBRARY_PATH. Opening another copy by path would give a second ggml with a
    backend registry of its own, so the soname already loaded is asked for first (RTLD_NOLOAD).
    """
    rtld_noload = getattr(os, "RTLD_NOLOAD", None)
    if rtld_noload is not None and sys.platform.startswith("linux"):
        for soname in sorted((p.name for p in lib_dir.glob("libggml.so.*")), key=len):
            try:
                return ctypes.CDLL(soname, mode=rtld_noload)
            except OSError:
                continue  # not loaded under this name
    names = {"linux": "libggml.so", "darwin": "libggml.dylib", "win32": "ggml.dll"}
    return ctypes.CDLL(str(lib_dir / names.get(sys.platform, "libggml.so")))


def _load_backend_modules(lib_dir: Path) -> None:
    """Load the ggml backends of a GGML_BACKEND_DL build (the bundle's portable llama.cpp).

    Such a build ships its CPU backend as one library per CPU generation (libggml-cpu-haswell,
    -skylakex, ...) and registers none until asked; ggml_backend_load_all_from_path then loads
    the best variant this CPU can run. A regular build registers its backends when loaded, so
    this does nothing there.
    """
    try:
        ggml = _ggml_library(lib_dir)
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        if int(ggml.ggml_backend_reg_count()) > 0:
            return
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path.restype = None
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
    except (OSError, AttributeError) as exc:
        log.debug("ggml backends not loadable by path: %s", exc)


def cpu_backend_variant() -> str | None:
    """Which CPU variant a GGML_BACKEND_DL build loaded ("haswell", "zen4"...), None otherwise."""
    return _cpu_variant


_cpu_variant: str | None = None
# ggml logs "load_backend: loaded CPU backend from .../libggml-cpu-<variant>.so" when it loads one.
_RE_CPU_VARIANT = re.compile(r"loaded CPU backend from .*ggml-cpu-([\w.]+?)\.(?:so|dll|dylib)")


def llama() -> ModuleType:
    """Import llama_cpp once, with LlamaScope's log routing installed and its backends loaded."""
    import llama_cpp

    global _log_callback_ref
    if _log_callback_ref is None:

        @llama_cpp.llama_log_callback  # type: ignore[misc]
        def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            global _serial
            chunk = text.decode("utf-8", errors="replace")
            with _log_lock:
                # llama.cpp sends one line in several calls (level CONT); join them.
                if not _partial_line:
                    _line_level[0] = level
                _partial_line.append(chunk)
                if chunk.endswith("\n"):
                    line = "".join(_partial_line).rstrip("\n")
                    _partial_line.clear()
                    # Debug lines (level 1) are most of what llama.cpp logs (2,000 lines of graph
                    # inputs per load of the demo model) and nothing here reads them.
                    if _line_level[0] == 1:
                        return
                    _serial += 1
                    _LOG_LINES.append((_serial, line))
                    if level == 4:  # GGML_LOG_LEVEL_ERROR (ggml: 1 debug, 2 info, 3 warn, 4 error)
                        log.warning("llama.cpp: %s", line)
                    if _echo_stream is not None:
                        _echo_stream.write(line + "\n")
                        _echo_stream.flush()

        _log_callback_ref = _on_log
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
        mark = log_mark()
        _load_backend_modules(llama_lib_dir())
        global _cpu_variant
        _cpu_variant = next(
            (m.group(1) for line in log_since(mark) for m in [_RE_CPU_VARIANT.search(line)] if m), None
        )
    return llama_cpp


_echo_stream: TextIO | None = None


def echo_log_to(stream: TextIO | None) -> None:
    """Also write every llama.cpp log line to `stream` as it arrives (a child process's stderr,
    so that the lines before a native crash reach the parent)."""
    global _echo_stream
    _echo_stream = stream


def log_mark() -> int:
    """A position in the llama.cpp log; pass it to `log_since` to read what came after."""
    with _log_lock:
        return _serial


def log_since(mark: int) -> list[str]:
    """llama.cpp log lines written after `mark` (those still in the ring buffer)."""
    with _log_lock:
        return [line for serial, line in _LOG_LINES if serial > mark]


@dataclass(frozen=True)
class LlamaMemoryReport:
    """Buffers llama.cpp reported allocating for a loaded model, in bytes (None if not reported)."""

    model_buffer_bytes: int | None
    kv_cache_bytes: int | None
    compute_buffer_bytes: int | None
    output_buffer_bytes: int | None


_MIB = 1024 * 1024
_RE_MODEL_BUF = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")
_RE_KV = re.compile(r"llama_kv_cache[^:]*:\s+size\s*=\s*([\d.]+) MiB")
_RE_KV_OLD = re.compile(r"KV self size\s*=\s*([\d.]+) MiB")
_RE_COMPUTE = re.compile(r"(\S+) compute buffer size\s*=\s*([\d.]+) MiB")
_RE_OUTPUT = re.compile(r"(\S+)\s+output buffer size\s*=\s*([\d.]+) MiB")


def parse_memory_report(lines: list[str]) -> LlamaMemoryReport:
    """Sum the buffer sizes llama.cpp logs while loading a model and creating its context."""

    def total(pattern: re.Pattern[str], group: int) -> int | None:
        found = [float(m.group(group)) for line in lines for m in [pattern.search(line)] if m]
        return int(sum(found) * _MIB) if found else None

    kv = total(_RE_KV, 1)
    if kv is None:
        kv = total(_RE_KV_OLD, 1)
    return LlamaMemoryReport(
        model_buffer_bytes=total(_RE_MODEL_BUF, 2),
        kv_cache_bytes=kv,
        compute_buffer_bytes=total(_RE_COMPUTE, 2),
        output_buffer_bytes=total(_RE_OUTPUT, 2),
    )


@dataclass(frozen=True)
class BuildInfo:
    """What the installed llama.cpp build can do, as it reports itself."""

    llama_cpp_python_version: str
    system_info: str  # llama_print_system_info(), verbatim
    backends: tuple[str, ...]  # e.g. ("CPU",) or ("CUDA", "CPU")
    gpu_offload: bool
    mmap: bool
    mlock: bool


def _registered_backends(lc: ModuleType) -> list[str]:
    """Backends registered in ggml (CPU, CUDA, Metal, Vulkan...), read from libggml itself.

    The Python bindings do not wrap ggml's backend registry, so it is called through ctypes on
    the libggml shipped beside libllama; any failure means "unknown" and the caller falls back.
    """
    try:
        ggml = _ggml_library(llama_lib_dir())
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
        ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        lc.llama_backend_init()
        count = int(ggml.ggml_backend_reg_count())
        return [ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(count)]
    except (OSError, AttributeError) as exc:
        log.debug("ggml backend registry not readable: %s", exc)
        return []


@lru_cache(maxsize=1)
def build_info() -> BuildInfo:
    """The installed build's facts. A process that has not loaded llama.cpp (the window, the
    command line) reads them through app.llama.facts, in a child process, so that loading a
    library built for another CPU cannot end it."""
    if "llama_cpp" in sys.modules:
        return read_build_info()
    from app.llama.facts import library_facts

    facts = library_facts()
    return BuildInfo(
        llama_cpp_python_version=facts.llama_cpp_python_version,
        system_info=facts.system_info,
        backends=facts.backends,
        gpu_offload=facts.gpu_offload,
        mmap=facts.mmap,
        mlock=facts.mlock,
    )


def read_build_info() -> BuildInfo:
    """The build's facts, read from llama.cpp in this process (which loads it)."""
    lc = llama()
    system_info = lc.llama_print_system_info().decode("utf-8", errors="replace").strip()
    backends = _registered_backends(lc)
    if not backends:
        # The per-backend system-info format names each backend ("CPU : SSE3 = 1 | ...").
        backends = sorted(set(re.findall(r"(\w+) : ", system_info))) or ["CPU"]
    return BuildInfo(
        llama_cpp_python_version=getattr(lc, "__version__", "n/a"),
        system_info=system_info,
        backends=tuple(backends),
        gpu_offload=bool(lc.llama_supports_gpu_offload()),
        mmap=bool(lc.llama_supports_mmap()),
        mlock=bool(lc.llama_supports_mlock()),
    )


def platform_line() -> str:
    """OS, architecture, llama.cpp backends and binding version, for the Platform box."""
    info = build_info()
    os_name = {"Darwin": "macOS", "Windows": "Windows", "Linux": "Linux"}.get(
        platform.system(), platform.system()
    )
    return (
        f"{os_name} {platform.machine()} · llama.cpp backends: {', '.join(info.backends)} · "
        f"llama-cpp-python {info.llama_cpp_python_version}"
    )
