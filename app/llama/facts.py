"""What the installed llama.cpp build is, read in a child process so the window never loads it.

The window and the command line show facts about the llama.cpp build (its CPU features and
backends, GPU offload, which quantization types it knows) but run no model: the engine host does
that. Loading the library alone can already fault: a build compiled for a newer CPU may run
AVX-512 code in ggml's start-up. So these facts are read by `python -m app.llama.facts` in a child
process and cached per installed build (the build check's key) in the user cache folder. A process
that has loaded llama.cpp anyway (the engine host, the build check, the quantizer, the tests)
reads them in place.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.common.json_store import read_json_dict, write_json_atomic

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
        )


def read_in_this_process() -> LibraryFacts:
    """Load llama.cpp here and ask it."""
    from app.llama import runtime as llama_runtime

    lc = llama_runtime.llama()
    info = llama_runtime.read_build_info()
    ftypes = {name: int(getattr(lc, name)) for name in dir(lc) if name.startswith("LLAMA_FTYPE_")}
    return LibraryFacts(
        llama_cpp_python_version=info.llama_cpp_python_version,
        system_info=info.system_info,
        backends=info.backends,
        gpu_offload=info.gpu_offload,
        mmap=info.mmap,
        mlock=info.mlock,
        cpu_variant=llama_runtime.cpu_backend_variant(),
        ftypes=ftypes,
    )


_lock = threading.Lock()
_facts: LibraryFacts | None = None


def library_facts() -> LibraryFacts:
    """The installed build's facts: in place if llama.cpp is loaded here, else from the cache or a
    child process (about a second, once per installed build). Raises LlamaFactsError."""
    global _facts
    with _lock:
        if _facts is None:
            _facts = read_in_this_process() if "llama_cpp" in sys.modules else _from_child_or_cache()
        return _facts


def _cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("LlamaScope", appauthor=False)) / CACHE_FILE_NAME


def _from_child_or_cache() -> LibraryFacts:
    from app.llama.build_check import build_key, describe_exit
    from app.llama.runtime import llama_lib_dir

    try:
        key = build_key(llama_lib_dir())
    except ImportError as exc:
        raise LlamaFactsError(f"llama-cpp-python is not installed: {exc}") from None
    if key is None:
        raise LlamaFactsError(f"No llama.cpp library found in {llama_lib_dir()}.")
    path = _cache_path()
    cached = read_json_dict(path).get(key)
    if isinstance(cached, dict):
        try:
            return LibraryFacts.from_json(cached)
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
    return facts


def _write_cache(path: Path, key: str, facts: LibraryFacts) -> None:
    # A cache that cannot be written only costs a child process next time.
    entries = read_json_dict(path)
    entries[key] = asdict(facts)
    write_json_atomic(path, entries)


if __name__ == "__main__":
    print(json.dumps(asdict(read_in_this_process())), flush=True)
