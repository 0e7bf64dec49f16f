"""What the installed llama.cpp build is, read in a child process so the window never loads it.

The window and the command line show facts about the llama.cpp build (its CPU features and
backends, GPU offload, which quantization types it knows, the devices it computes on) but run no
model: the engine host does that. Loading the library alone can already fault: a build compiled
for a newer CPU may run AVX-512 code in ggml's start-up. So these facts are read by
`python -m app.llama.facts` in a child process and cached per installed build (the build check's
key) in the user cache folder. A process that has loaded llama.cpp anyway (the engine host, the
build check, the quantizer, the tests) reads them in place.

The devices (ggml's device registry, `app.llama.devices`) are part of the record, so the hardware
report, the advice, the tuner and the benchmark records all use one list. Their free memory changes
and a driver can come or go without the build changing, so `current_devices()` reads them again
(and refreshes the cached record) instead of trusting the cache.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.common.json_store import read_json_dict, write_json_atomic
from app.llama.devices import LlamaDevice

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "llama-facts.json"
CHILD_TIMEOUT_S = 120.0


class LlamaFactsError(RuntimeError):
    """The build's facts could not be read (the library is missing, or reading it crashed)."""


@dataclass(frozen=True)
class LibraryFacts:
    """The build as it reports itself, plus the llama_ftype constants its bindings define."""

    llama_cpp_python_version: str
    system_info: str
    backends: tuple[str, ...]
    gpu_offload: bool
    mmap: bool
    mlock: bool
    cpu_variant: str | None
    ftypes: dict[str, int]  # "LLAMA_FTYPE_MOSTLY_Q4_K_M" -> 15
    # ggml's device registry (CPU included) when read; None when the registry could not be read.
    devices: tuple[LlamaDevice, ...] | None
    devices_error: str | None = None  # why `devices` is None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LibraryFacts:
        return cls(
            llama_cpp_python_version=str(data["llama_cpp_python_version"]),
            system_info=str(data["system_info"]),
            backends=tuple(str(b) for b in data["backends"]),
            gpu_offload=bool(data["gpu_offload"]),
            mmap=bool(data["mmap"]),
            mlock=bool(data["mlock"]),
            cpu_variant=None if data.get("cpu_variant") is None else str(data["cpu_variant"]),
            ftypes={str(k): int(v) for k, v in dict(data["ftypes"]).items()},
            # A record written before devices were read has no "devices" key: KeyError, read again.
            devices=None
            if data["devices"] is None
            else tuple(LlamaDevice.from_json(d) for d in data["devices"]),
            devices_error=None if data.get("devices_error") is None else str(data["devices_error"]),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["devices"] = None if self.devices is None else [d.to_json() for d in self.devices]
        return out


def read_in_this_process() -> LibraryFacts:
    """Load llama.cpp here and ask it."""
    from app.llama import runtime as llama_runtime

    lc = llama_runtime.llama()
    info = llama_runtime.read_build_info()
    ftypes = {name: int(getattr(lc, name)) for name in dir(lc) if name.startswith("LLAMA_FTYPE_")}
    devices, devices_error = _devices_in_this_process()
    return LibraryFacts(
        llama_cpp_python_version=info.llama_cpp_python_version,
        system_info=info.system_info,
        backends=info.backends,
        gpu_offload=info.gpu_offload,
        mmap=info.mmap,
        mlock=info.mlock,
        cpu_variant=llama_runtime.cpu_backend_variant(),
        ftypes=ftypes,
        devices=devices,
        devices_error=devices_error,
    )


def _devices_in_this_process() -> tuple[tuple[LlamaDevice, ...] | None, str | None]:
    """(devices, None), or (None, why) when ggml's device registry cannot be read."""
    from app.llama import runtime as llama_runtime
    from app.llama.devices import read_devices

    lc = llama_runtime.llama()
    try:
        lc.llama_backend_init()  # registers the backends a regular build has compiled in
        return read_devices(llama_runtime._ggml_library(llama_runtime.llama_lib_dir())), None
    except (OSError, AttributeError) as exc:  # a libggml without the device registry
        log.warning("llama.cpp's device list not readable: %s", exc)
        return None, f"llama.cpp's device list not readable: {exc}"


_lock = threading.Lock()
_facts: LibraryFacts | None = None
_facts_read_at: float | None = None  # time.monotonic() when _facts was read from llama.cpp, not the cache
# A device list read this recently is read again no sooner: the first detection of a session reads
# the facts once, not once for the build and again for its devices.
DEVICES_FRESH_S = 2.0


def library_facts(*, refresh: bool = False) -> LibraryFacts:
    """The installed build's facts: in place if llama.cpp is loaded here, else from the cache or a
    child process (about a second, once per installed build). `refresh` reads them again (a child
    process, or in place) and updates the cache. Raises LlamaFactsError."""
    global _facts, _facts_read_at
    with _lock:
        if _facts is None or refresh:
            if "llama_cpp" in sys.modules:
                _facts, from_llama = read_in_this_process(), True
            else:
                _facts, from_llama = _from_child_or_cache(use_cache=not refresh)
            _facts_read_at = time.monotonic() if from_llama else None
        return _facts


def current_devices() -> tuple[LlamaDevice, ...] | None:
    """llama.cpp's device list as it is now, with free memory as of now; None when not readable.

    In a process that has loaded llama.cpp (the engine host) the registry is read in place, which
    costs microseconds; elsewhere a child process reads it (a third of a second) and the cached
    record is refreshed. Raises LlamaFactsError when the library cannot be read at all.
    """
    if "llama_cpp" in sys.modules:
        return _devices_in_this_process()[0]
    with _lock:
        read_at = _facts_read_at
    fresh = read_at is not None and time.monotonic() - read_at < DEVICES_FRESH_S
    return library_facts(refresh=not fresh).devices


def _cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("LlamaScope", appauthor=False)) / CACHE_FILE_NAME


def _from_child_or_cache(*, use_cache: bool = True) -> tuple[LibraryFacts, bool]:
    """(the facts, whether a child read them just now rather than the cache)."""
    from app.llama.build_check import build_key, describe_exit
    from app.llama.runtime import llama_lib_dir

    try:
        key = build_key(llama_lib_dir())
    except ImportError as exc:
        raise LlamaFactsError(f"llama-cpp-python is not installed: {exc}") from None
    if key is None:
        raise LlamaFactsError(f"No llama.cpp library found in {llama_lib_dir()}.")
    path = _cache_path()
    cached = read_json_dict(path).get(key) if use_cache else None
    if isinstance(cached, dict):
        try:
            return LibraryFacts.from_json(cached), False
        except (KeyError, TypeError, ValueError):
            pass  # written by another version: read again
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app.llama.facts"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=CHILD_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamaFactsError(f"The llama.cpp build could not be read: {exc}") from None
    crash = describe_exit(done.returncode)
    if crash is not None:
        raise LlamaFactsError(f"Loading the llama.cpp library crashed: {crash}.")
    try:
        facts = LibraryFacts.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError, TypeError):
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise LlamaFactsError(f"The llama.cpp build could not be read: {tail[0]}") from None
    _write_cache(path, key, facts)
    return facts, True


def _write_cache(path: Path, key: str, facts: LibraryFacts) -> None:
    # A cache that cannot be written only costs a child process next time.
    entries = read_json_dict(path)
    entries[key] = facts.to_json()
    write_json_atomic(path, entries)


if __name__ == "__main__":
    print(json.dumps(read_in_this_process().to_json()), flush=True)
