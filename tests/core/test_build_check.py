"""The llama.cpp build check (app/llama/build_check.py): the verdict on children that die by a signal,
the cache keyed by the installed libraries, the gate in front of model loads, and the real check
of the installed build."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from app.engine.types import EngineError
from app.llama import build_check
from app.llama.build_check import (
    CRASHED,
    FAILED,
    OK,
    BuildVerdict,
    build_key,
    check_build,
    describe_exit,
    read_cache,
    run_check,
    write_cache,
)

SYSTEM_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"


def _dying_child(sig: signal.Signals, after_stage: bool = True) -> list[str]:
    """A child that reports what a real one reports first, then dies by `sig` like native code."""
    lines = [
        "import json, os, signal, sys",
        f"print(json.dumps({{'system_info': {SYSTEM_INFO!r}, 'stage': 'loading the model'}}), flush=True)",
        "print('llama_model_loader: loaded meta data', file=sys.stderr, flush=True)",
    ]
    if after_stage:
        lines.append("print(json.dumps({'stage': 'decoding a 256-token prompt on 2 threads'}), flush=True)")
    # PYTHONFAULTHANDLER (set by run_check) prints a stack, then lets the signal end the process.
    lines.append(f"os.kill(os.getpid(), signal.{sig.name})")
    return [sys.executable, "-c", "\n".join(lines)]


def _rebuild() -> str:
    return 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF" python -m pip install llama-cpp-python==0.3.36'


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        (signal.SIGILL, "illegal instruction"),
        (signal.SIGSEGV, "segmentation fault"),
        (signal.SIGABRT, "aborted by an assertion"),
    ],
)
def test_a_child_killed_by_a_fault_marks_the_build_as_crashing(sig: signal.Signals, words: str) -> None:
    verdict = run_check("model.gguf", "key1", command=_dying_child(sig), rebuild=_rebuild)
    assert verdict.status == CRASHED and verdict.crashed
    assert words in verdict.signal_text and sig.name in verdict.signal_text
    # The message names the fault, where it happened, what the build uses and the fix.
    assert words in verdict.message
    assert "decoding a 256-token prompt" in verdict.message
    assert SYSTEM_INFO in verdict.message and verdict.system_info == SYSTEM_INFO
    assert _rebuild() in verdict.message and verdict.rebuild_command == _rebuild()
    assert "llama_model_loader: loaded meta data" in verdict.log_tail


def test_a_kill_from_outside_is_no_verdict_on_the_build() -> None:
    verdict = run_check("model.gguf", "key1", command=_dying_child(signal.SIGKILL), rebuild=_rebuild)
    assert verdict.status == FAILED
    assert "killed" in verdict.message and "out of memory" in verdict.message
    assert describe_exit(-signal.SIGTERM) is None and describe_exit(0) is None and describe_exit(1) is None


def test_a_child_that_fails_without_crashing_is_inconclusive() -> None:
    child = [
        sys.executable,
        "-c",
        "import json; print(json.dumps({'error': 'llama.cpp could not load x'})); exit(1)",
    ]
    verdict = run_check("model.gguf", "key1", command=child, rebuild=_rebuild)
    assert verdict.status == FAILED and "could not load x" in verdict.message


def test_a_child_that_finishes_passes() -> None:
    child = [
        sys.executable,
        "-c",
        "import json; print(json.dumps({'system_info': 'CPU : AVX2 = 1 |', 'cpu_variant': 'haswell'}));"
        "print(json.dumps({'ok': True, 'prompt_tokens': 256}))",
    ]
    verdict = run_check("model.gguf", "key1", command=child, rebuild=_rebuild)
    assert verdict.status == OK and not verdict.crashed
    assert verdict.prompt_tokens == 256 and verdict.cpu_variant == "haswell"
    assert "256-token prompt" in verdict.message and "haswell" in verdict.message


def _fake_libs(folder: Path) -> Path:
    folder.mkdir()
    for name in ("libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libmtmd.so"):
        (folder / name).write_bytes(b"\x7fELF" + name.encode())
    return folder


def test_the_cache_key_follows_the_installed_libraries(tmp_path: Path) -> None:
    libs = _fake_libs(tmp_path / "lib")
    key = build_key(libs)
    assert key is not None and build_key(libs) == key
    (libs / "libmtmd.so").write_bytes(b"unrelated library, rebuilt")  # not part of the check
    assert build_key(libs) == key
    (libs / "libggml-cpu.so").write_bytes(b"a reinstalled CPU backend")
    assert build_key(libs) != key
    assert build_key(tmp_path / "nowhere") is None


def test_a_verdict_is_cached_per_build_and_a_failure_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libs = _fake_libs(tmp_path / "lib")
    cache = tmp_path / "cache" / "build-check.json"
    calls: list[str] = []

    def fake_run(model: str, key: str) -> BuildVerdict:
        calls.append(key)
        status = FAILED if len(calls) == 1 else CRASHED
        return BuildVerdict(
            key=key, status=status, message=f"run {len(calls)}", signal_text="illegal instruction"
        )

    monkeypatch.setattr(build_check, "run_check", fake_run)
    first = check_build("model.gguf", cache_path=cache, lib_dir=libs)
    assert first.status == FAILED and not read_cache(cache)  # tried again next time
    second = check_build("model.gguf", cache_path=cache, lib_dir=libs)
    assert second.status == CRASHED and not second.cached
    third = check_build("model.gguf", cache_path=cache, lib_dir=libs)
    assert third.cached and third.status == CRASHED and len(calls) == 2  # not run again
    (libs / "libllama.so").write_bytes(b"reinstalled")
    check_build("model.gguf", cache_path=cache, lib_dir=libs)
    assert len(calls) == 3  # a new build is checked again
    assert len(read_cache(cache)) == 2  # both builds' verdicts are kept


def test_a_damaged_cache_file_means_checking_again(tmp_path: Path) -> None:
    cache = tmp_path / "build-check.json"
    cache.write_text("{not json", encoding="utf-8")
    assert read_cache(cache) == {}
    verdict = BuildVerdict(key="k", status=OK, message="fine")
    write_cache(cache, verdict)
    assert BuildVerdict.from_json(json.loads(cache.read_text(encoding="utf-8"))["k"]) == verdict


def test_loads_are_refused_with_the_verdict_when_the_build_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    crashed = BuildVerdict(
        key="k", status=CRASHED, message="This llama.cpp build crashed: illegal instruction."
    )
    monkeypatch.setattr(build_check, "_session_verdict", crashed)
    monkeypatch.delenv(build_check.SKIP_ENV, raising=False)
    with pytest.raises(EngineError, match="illegal instruction") as info:
        build_check.require_working_build(EngineError)
    assert build_check.SKIP_ENV in str(info.value)
    monkeypatch.setenv(build_check.SKIP_ENV, "1")
    build_check.require_working_build(EngineError)  # the user insisted


def test_the_engine_refuses_to_load_on_a_crashing_build(
    demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.engine.client import Engine
    from app.model.settings import LoadSettings

    monkeypatch.setattr(
        build_check,
        "_session_verdict",
        BuildVerdict(key="k", status=CRASHED, message="crashed: illegal instruction"),
    )
    monkeypatch.delenv(build_check.SKIP_ENV, raising=False)
    engine = Engine()
    try:
        with pytest.raises(EngineError, match="illegal instruction"):
            engine.load(demo_model, LoadSettings()).result(timeout=60)
        assert engine.loaded is None
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_the_installed_build_passes_the_real_check(demo_model: str, tmp_path: Path) -> None:
    cache = tmp_path / "build-check.json"
    verdict = check_build(demo_model, force=True, cache_path=cache)
    assert verdict.status == OK, verdict.message + "\n" + "\n".join(verdict.log_tail)
    assert verdict.prompt_tokens is not None and verdict.prompt_tokens >= 256
    assert verdict.system_info and "CPU" in verdict.system_info
    again = check_build(demo_model, cache_path=cache)
    assert again.cached and again.key == verdict.key


def test_the_window_and_the_cli_read_the_build_without_loading_llama_cpp(tmp_path: Path) -> None:
    """Build facts, the platform line and the quantization types come from a child process (and
    its cache): a library built for another CPU cannot end the window by being loaded."""
    import subprocess

    script = (
        "import sys\n"
        "from app.llama.runtime import build_info, platform_line\n"
        "from app.quant.types import ftype_value, supported_quant_types, QUANT_TYPES\n"
        "info = build_info()\n"
        "assert 'CPU' in info.backends and info.system_info, info\n"
        "assert 'llama-cpp-python' in platform_line()\n"
        "types = supported_quant_types()\n"
        "assert len(types) > 10 and ftype_value(types[0]) >= 0\n"
        "print('llama_cpp' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):  # the first reads through the child, the second from the cache
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "False"
    assert (tmp_path / "cache" / "LlamaScope" / "llama-facts.json").is_file()
