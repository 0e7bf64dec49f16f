"""llama.cpp's own programs (llama-server, llama-perplexity, llama-bench, ...) built from the same
sources as the installed library.

    python -m app.llama.tools build      # builds if needed (minutes), prints the folder
    python -m app.llama.tools path NAME  # the program's path, or exit 1 if it is not built

LlamaScope compares its figures with llama.cpp's own tools and watches llama-server instances,
so it needs those programs at exactly the llama.cpp commit the Python bindings were built from.
They come from the llama.cpp tree vendored in the sdist of the installed llama-cpp-python version
(fetched by pip), built with the same CPU options as the library (app.llama.build_flags: no AMX on
AMX machines) and linked statically, so each program stands alone.

The build is cached in the build cache (LLAMASCOPE_BUILD_CACHE, else ~/.cache/llamascope-build),
keyed by the version and the options: the second time is instant.

Stdlib only: the Makefile runs it with the venv's Python before anything else is imported.
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
import tarfile
import tempfile
from pathlib import Path

from app.llama.build_flags import cmake_args_for_cpu, read_cpu_flags

TOOLS = ("llama-server", "llama-perplexity", "llama-bench", "llama-batched-bench", "llama-imatrix")
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    # No network at build time, and none needed: no web UI download, no HTTPS client.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)
# Overrides the folder the programs are looked up in (a system llama.cpp, a GPU build).
TOOLS_DIR_ENV = "LLAMASCOPE_LLAMA_TOOLS_DIR"


class ToolsError(Exception):
    """The programs cannot be built or found; the message says what to do."""


def cache_root() -> Path:
    """LLAMASCOPE_BUILD_CACHE, else ~/.cache/llamascope-build (the Makefile's wheel cache is there too)."""
    return Path(os.environ.get("LLAMASCOPE_BUILD_CACHE") or os.path.expanduser("~/.cache/llamascope-build"))


def installed_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ToolsError("llama-cpp-python is not installed: run `make install` first.") from None


def cpu_cmake_args() -> list[str]:
    """The library's CPU options (the Makefile passes its own LLAMA_CMAKE_ARGS), then the user's."""
    passed = os.environ.get("LLAMASCOPE_LLAMA_CMAKE_ARGS")
    own = (
        shlex.split(passed)
        if passed is not None
        else cmake_args_for_cpu(read_cpu_flags(), platform.machine())
    )
    return [*own, *shlex.split(os.environ.get("CMAKE_ARGS", ""))]


def build_key(version: str, cmake_args: list[str]) -> str:
    digest = hashlib.sha256()
    for part in (version, *CMAKE_OPTIONS, "|", *cmake_args, "|", *TOOLS, platform.machine()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:12]


def sdist(version: str) -> Path:
    """llama-cpp-python's source archive of `version`, downloaded by pip once into the cache."""
    folder = cache_root() / "sdist"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    if not (folder / name).exists():
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, f"llama-cpp-python=={version}", "-d", str(folder)], check=True)
    return folder / name


def extract_llama_cpp(archive: Path, dest: Path) -> Path:
    """The vendored llama.cpp tree of the sdist, unpacked under `dest`."""
    version = archive.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix


def tools_dir(version: str | None = None, cmake_args: list[str] | None = None) -> Path:
    version = version or installed_version()
    args = cpu_cmake_args() if cmake_args is None else cmake_args
    return cache_root() / f"llama-tools-{version}-{build_key(version, args)}" / "bin"


def build(jobs: int | None = None) -> Path:
    """Build the programs if they are not in the cache; return their folder."""
    version = installed_version()
    args = cpu_cmake_args()
    out_dir = tools_dir(version, args)
    if all((out_dir / name).exists() for name in TOOLS):
        return out_dir
    if shutil.which("cmake") is None:
        raise ToolsError("Building llama.cpp's programs needs CMake and a C++ compiler: install them first.")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-tools-", dir=root) as tmp:
        source = extract_llama_cpp(sdist(version), Path(tmp) / "src")
        build_dir = Path(tmp) / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS, *args], check=True)
        command = [
            "cmake",
            "--build",
            str(build_dir),
            "--config",
            "Release",
            "-j",
            str(jobs or os.cpu_count() or 2),
        ]
        subprocess.run([*command, "--target", *TOOLS], check=True)
        # Into place only when every program is there: an interrupted build leaves no half folder.
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in TOOLS:
            shutil.copy2(build_dir / "bin" / name, staging / name)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    return out_dir


def find_tool(name: str) -> Path | None:
    """Where llama.cpp's program `name` is: LLAMASCOPE_LLAMA_TOOLS_DIR, else this build's cache."""
    override = os.environ.get(TOOLS_DIR_ENV)
    if override:
        path = Path(override) / name
        return path if path.exists() else None
    try:
        path = tools_dir() / name
    except ToolsError:
        return None
    return path if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.llama.tools", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the programs if needed and print their folder")
    p_build.add_argument(
        "-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)"
    )
    p_path = sub.add_parser("path", help="print the path of one program")
    p_path.add_argument("name", choices=TOOLS)
    opts = parser.parse_args(argv)
    try:
        if opts.command == "build":
            print(build(opts.jobs))
            return 0
        path = find_tool(opts.name)
    except (ToolsError, subprocess.CalledProcessError, OSError) as exc:
        print(f"llama.cpp tools: {exc}", file=sys.stderr)
        return 1
    if path is None:
        print(f"{opts.name} is not built: run `make llama-tools`.", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
