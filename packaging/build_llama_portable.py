"""Build the llama.cpp libraries the bundle ships: one build that runs on any x86-64 CPU.

    python packaging/build_llama_portable.py            # builds if needed, prints the lib folder

The venv's llama-cpp-python is compiled for the machine that built it (-march=native), and a
bundle made from it dies with SIGILL on an older CPU (AVX-512 code on an AVX2 laptop). This
builds llama.cpp the way llama.cpp's own releases do: GGML_BACKEND_DL with
GGML_CPU_ALL_VARIANTS, so the CPU backend is a set of libraries (libggml-cpu-haswell.so,
-skylakex, -zen4, ...) and ggml loads the best one the CPU can run at start-up
(app.llama.runtime calls ggml_backend_load_all_from_path).

The sources are the llama.cpp tree vendored in the sdist of the llama-cpp-python version
installed in the venv, so the libraries match the Python bindings. The Sapphire Rapids variant
is left out: it is the only one with AMX, and llama.cpp's AMX path crashes on worker threads
(app/llama/build_flags.py); an AMX machine gets the best variant below it.

The result is cached in the user's cache folder, keyed by the version and the options, so only
the first build of a version takes long (every CPU variant compiles ggml's CPU backend again:
about 20-30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The sources and the cache are shared with the build of llama.cpp's programs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.llama.tools import cache_root, extract_llama_cpp, sdist  # noqa: E402

LEFT_OUT_VARIANTS = ("sapphirerapids",)  # AMX: see the module docstring
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF",
    # The libraries find each other beside themselves, wherever the bundle is unpacked.
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)


def supported() -> bool:
    """ggml builds all CPU variants for x86-64 (Linux here; Windows needs MSVC and its own steps)."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def user_cmake_args() -> list[str]:
    """The user's CMAKE_ARGS (a GPU backend, say), added after LlamaScope's options."""
    return shlex.split(os.environ.get("CMAKE_ARGS", ""))


def build_key(version: str) -> str:
    digest = hashlib.sha256()
    digest.update(version.encode())
    for part in (*CMAKE_OPTIONS, "|", *user_cmake_args(), "|", *LEFT_OUT_VARIANTS, "|", platform.machine()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:12]


def build(version: str, out_dir: Path, jobs: int) -> None:
    root = cache_root()
    with tempfile.TemporaryDirectory(prefix="llama-portable-", dir=root) as tmp:
        source = extract_llama_cpp(sdist(version), Path(tmp) / "src")
        build_dir = Path(tmp) / "build"
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS, *user_cmake_args()], check=True
        )
        # libllama links libggml, which depends on every CPU variant: this builds them all.
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", "llama"],
            check=True,
        )
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in sorted((build_dir / "bin").iterdir()):
            if not path.name.startswith("lib") or ".so" not in path.name:
                continue
            if any(f"-{variant}." in path.name for variant in LEFT_OUT_VARIANTS):
                continue
            shutil.copy2(path, staging / path.name, follow_symlinks=False)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)


def portable_lib_dir(version: str | None = None, jobs: int | None = None) -> Path | None:
    """The folder of the portable libraries, built first if needed; None where not supported."""
    if not supported():
        return None
    version = version or importlib.metadata.version("llama-cpp-python")
    out_dir = cache_root() / f"llama-portable-{version}-{build_key(version)}" / "lib"
    if not (out_dir / "libllama.so").exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        build(version, out_dir, jobs or os.cpu_count() or 2)
    return out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)"
    )
    opts = parser.parse_args()
    lib_dir = portable_lib_dir(opts.version, opts.jobs)
    if lib_dir is None:
        print(
            f"no portable build on {sys.platform} {platform.machine()}: the bundle uses the venv's llama.cpp",
            file=sys.stderr,
        )
        return 0
    print(lib_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
