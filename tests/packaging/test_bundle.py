"""The standalone bundle: build it with PyInstaller, then run it as a user would.

Marked `bundle` and deselected by default (pyproject's addopts): building takes a minute or more.
Run it with `make test-bundle` (or `pytest -m bundle`). To test a bundle built already, point
LLAMASCOPE_BUNDLE_DIR at its folder (it must carry the demo model: `make bundle DEMO_MODEL=1`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bundle

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "build" / "test-bundle"
# On Windows LlamaScope.exe is windowed (no stdout); its console twin prints the report.
EXECUTABLE = {"win32": "llamascope-cli.exe"}.get(sys.platform, "LlamaScope")
# Linux x86-64 bundles carry the portable llama.cpp: one CPU backend per CPU generation.
PORTABLE = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
CPU_VARIANTS = (
    "x64",
    "sse42",
    "sandybridge",
    "ivybridge",
    "piledriver",
    "haswell",
    "skylakex",
    "cannonlake",
    "cascadelake",
    "icelake",
    "cooperlake",
    "zen4",
    "alderlake",
)
DEMO_PROMPT_TOKENS = 32
UNUSED_QT = ("WebEngine", "Qml", "Quick", "3D", "Multimedia", "Pdf", "Designer", "Charts")


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    prebuilt = os.environ.get("LLAMASCOPE_BUNDLE_DIR")
    if prebuilt:
        return Path(prebuilt).resolve()
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.fail("PyInstaller is not installed: run `make test-bundle`")
    t0 = time.monotonic()
    # The portable llama.cpp the bundle ships (cached; the first build of a version takes long).
    portable = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build_llama_portable.py")],
        capture_output=True,
        text=True,
        timeout=3 * 3600,
        check=False,
    )
    assert portable.returncode == 0, portable.stdout[-3000:] + portable.stderr[-6000:]
    print(f"\nportable llama.cpp ready in {time.monotonic() - t0:.0f} s: {portable.stdout.strip() or 'n/a'}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--distpath",
            str(BUILD_DIR / "dist"),
            "--workpath",
            str(BUILD_DIR / "work"),
            str(ROOT / "packaging" / "llamascope.spec"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "LLAMASCOPE_BUNDLE_DEMO_MODEL": "1",
            "LLAMASCOPE_LLAMA_LIB_DIR": portable.stdout.strip(),
        },
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    print(f"\nbundle built in {time.monotonic() - t0:.0f} s")
    return BUILD_DIR / "dist" / "LlamaScope"


def _size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _bundle_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: no venv, no checkout on the path, own user folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "QT_"))}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    return env


def test_self_test_runs_from_a_path_with_spaces_and_umlauts(bundle_dir: Path, tmp_path: Path) -> None:
    installed = tmp_path / "Mein Ördner mit Leerzeichen" / "LlamaScope"
    shutil.copytree(bundle_dir, installed, symlinks=True)  # a copy: a symlink would resolve away
    home = tmp_path / "home"
    try:
        result = subprocess.run(
            [str(installed / EXECUTABLE), "--self-test"],
            cwd=tmp_path,  # not the checkout: nothing may be imported from it
            env=_bundle_env(home),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=600,
            check=False,
        )
    finally:
        shutil.rmtree(installed, ignore_errors=True)  # pytest keeps its temp folders; this is 300 MB
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["frozen"] is True
    # The bundled demo model, found through app.common.resources inside the copied folder.
    assert report["model"].startswith(str(installed))
    assert report["window_shown"] is True
    assert "CPU" in report["backends"]
    assert report["generated_tokens"] >= 1
    assert report["telemetry"]["samples"] == 2
    assert report["build_check"]["status"] == "ok"
    assert "CPU :" in report["llama_system_info"]  # libllama sees the backend ggml loaded
    if PORTABLE:
        # The bundle's llama.cpp picked the CPU backend for this CPU at run time.
        assert report["cpu_variant"] in CPU_VARIANTS, report["cpu_variant"]
    if sys.platform.startswith("linux"):
        assert {"xcb", "offscreen", "wayland"} <= set(report["qt_platform_plugins"])
    assert not (home / "config").exists() and not (home / "data").exists()  # self-test: temp only
    print(
        f"\nbundle self-test: window shown {report['startup_s']} s after start, "
        f"{report['tokens_per_s']} tokens/s, backends {report['backends']}, "
        f"CPU variant {report['cpu_variant']}, "
        f"{_size_bytes(bundle_dir) / 2**20:.0f} MiB"
    )


def test_the_command_line_works_in_the_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(bundle_dir / EXECUTABLE), "info", "--json"],
        cwd=tmp_path,
        env=_bundle_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file_type"] == "Q4_1"


def test_the_bundle_carries_what_it_needs_and_no_more(bundle_dir: Path) -> None:
    internal = bundle_dir / "_internal"
    files = [p.relative_to(internal).as_posix() for p in internal.rglob("*")]
    assert any(f.startswith("llama_cpp/lib/") and "llama" in f.rsplit("/", 1)[1] for f in files)
    assert any(f.startswith("llama_cpp/lib/") and "ggml-cpu" in f for f in files)
    assert "resources/icons/llamascope.svg" in files
    assert "resources/models/SmolLM2-135M-Instruct.Q4_1.gguf" in files
    assert not [f for f in files if "/tests/" in f"/{f}/"], "test folders in the bundle"
    assert not [f for f in files if "nvidia-ml" in f or f.endswith("nvml.dll")], "the NVIDIA driver"
    qt = [f for f in files if "Qt" in f]
    assert not [f for f in qt if any(name in f for name in UNUSED_QT)], "unused Qt modules"


def _bundle_libs(bundle_dir: Path) -> Path:
    return bundle_dir / "_internal" / "llama_cpp" / "lib"


@pytest.mark.skipif(not PORTABLE, reason="the portable llama.cpp is built for Linux x86-64")
def test_the_bundle_ships_a_cpu_backend_per_cpu_generation_without_amx(bundle_dir: Path) -> None:
    names = {p.name for p in _bundle_libs(bundle_dir).iterdir()}
    variants = {
        n.removeprefix("libggml-cpu-").removesuffix(".so") for n in names if n.startswith("libggml-cpu-")
    }
    assert {"x64", "sse42", "haswell", "skylakex", "zen4"} <= variants
    assert "sapphirerapids" not in variants  # the AMX variant (app/llama/build_flags.py)
    assert "libggml-cpu.so" not in names  # no backend compiled for the build machine alone


def _under_qemu_haswell(lib_dir: Path | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The build check's child, under an emulated AVX2-only CPU (no AVX-512): it loads the given
    llama.cpp libraries (LLAMA_CPP_LIB_PATH) into the venv's Python and decodes a prompt.

    qemu-user does not follow an exec and the bundle's bootloader re-executes itself, so the
    bundle's libraries are loaded by a Python that qemu runs itself.
    """
    from app.model.demo_model import demo_model_path

    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    if lib_dir is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    command = [
        shutil.which("qemu-x86_64") or "qemu-x86_64",
        "-cpu",
        "Haswell",
        sys.executable,
        "-m",
        "app.llama.build_check",
        "--child",
        str(demo_model_path()),
        "--prompt-tokens",
        str(DEMO_PROMPT_TOKENS),
    ]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )


@pytest.mark.skipif(
    not PORTABLE or shutil.which("qemu-x86_64") is None,
    reason="needs Linux x86-64 and qemu-user (Debian: apt-get install qemu-user)",
)
def test_the_bundles_llama_cpp_decodes_on_an_avx2_only_cpu(bundle_dir: Path, tmp_path: Path) -> None:
    result = _under_qemu_haswell(_bundle_libs(bundle_dir), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    facts = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {"ok": True, "prompt_tokens": DEMO_PROMPT_TOKENS, "stage": "done"} in facts
    assert any(f.get("cpu_variant") == "haswell" for f in facts), facts
    print(
        f"\nunder qemu -cpu Haswell the bundle's llama.cpp chose {[f.get('cpu_variant') for f in facts][1]}"
    )


def _native_build_has_avx512() -> bool:
    from app.llama.runtime import build_info

    return "AVX512 = 1" in build_info().system_info


@pytest.mark.skipif(
    not PORTABLE or shutil.which("qemu-x86_64") is None,
    reason="needs Linux x86-64 and qemu-user (Debian: apt-get install qemu-user)",
)
# A string condition is evaluated when the test runs, not when the module is collected.
@pytest.mark.skipif("not _native_build_has_avx512()", reason="the venv's native build has no AVX-512 code")
def test_a_native_avx512_build_dies_there(tmp_path: Path) -> None:
    """The control: the venv's build, compiled with this machine's native flags, is what a bundle
    used to ship. Where this machine has AVX-512, that build dies on the emulated Haswell."""
    result = _under_qemu_haswell(None, tmp_path)
    assert result.returncode == -signal.SIGILL, (result.returncode, result.stderr[-3000:])
