"""Does this llama.cpp build run on this CPU? Checked once per installed build, in a child process.

A llama.cpp build can contain code this machine cannot run: a native build's AMX path on a
Xeon (SIGILL on a worker thread, app/llama/build_flags.py), or AVX-512 code copied to an AVX2 laptop.
Such a build loads fine and dies at the first batched matrix multiplication, taking the process
with it. So before LlamaScope loads a model, a child process loads the demo model and decodes a
prompt of `CHECK_PROMPT_TOKENS` tokens on several threads (the batched matmul paths, where the
AMX fault happens), then a few single tokens (the generation path). If the child dies by a
signal, the build is marked as crashing, with the signal in words, the CPU features the build
uses and the command that rebuilds it without the faulty path.

The verdict is cached in the user's cache folder, keyed by the identity of the installed
libraries (path, size and modification time of libllama and every libggml*), so a reinstall or
an update checks again and an unchanged build is never checked twice.

    python -m app.llama.build_check [--force] [--json]     # the verdict for the installed build
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.common.json_store import read_json_dict, write_json_atomic

log = logging.getLogger(__name__)

CHECK_PROMPT_TOKENS = 256
CHECK_GEN_TOKENS = 8
CHECK_N_CTX = 512
CHECK_TIMEOUT_S = 300.0
CACHE_FILE_NAME = "build-check.json"
_LOG_TAIL_LINES = 12

# Verdicts
OK = "ok"  # the child decoded the prompt and the tokens
CRASHED = "crashed"  # the child died by a signal: this build must not be used here
FAILED = "failed"  # the child exited with an error (no crash): inconclusive, e.g. a broken install
NOT_RUN = "not run"  # nothing to check with (no demo model), or no library found

# Windows reports a crash as an NTSTATUS exit code, not a signal.
_WINDOWS_CRASHES = {
    0xC000001D: "illegal instruction: the llama.cpp build uses a CPU instruction this machine cannot run",
    0xC0000005: "access violation (a memory fault in native code)",
    0xC0000409: "aborted (a failed check in native code)",
    0xC00000FD: "stack overflow in native code",
}


def signal_in_words(signum: int) -> str:
    """What a native death by `signum` means, for a person."""
    words = {
        signal.SIGILL: (
            "illegal instruction: the llama.cpp build uses a CPU instruction this machine cannot run"
        ),
        signal.SIGSEGV: "segmentation fault (a memory fault in native code)",
        signal.SIGABRT: "aborted by an assertion in llama.cpp",
        signal.SIGFPE: "arithmetic fault in native code",
        signal.SIGKILL: "killed — probably out of memory",
    }
    if hasattr(signal, "SIGBUS"):
        words[signal.SIGBUS] = "bus error (a memory fault in native code)"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    text = words.get(signum)  # type: ignore[call-overload]
    return f"{text} ({name})" if text else f"killed by {name}"


# Deaths that come from outside (the OOM killer, a user's kill) say nothing about the build.
_EXTERNAL_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT} | (
    {signal.SIGHUP} if hasattr(signal, "SIGHUP") else set()
)


def describe_exit(returncode: int) -> str | None:
    """The fault in words when `returncode` is a death by a fault signal (or a Windows crash code).

    None for a normal exit, and for a kill from outside (SIGKILL, SIGTERM...), which is no
    verdict on the build.
    """
    if returncode < 0:
        return None if -returncode in _EXTERNAL_SIGNALS else signal_in_words(-returncode)
    if sys.platform == "win32" and (returncode & 0xFFFFFFFF) in _WINDOWS_CRASHES:
        return _WINDOWS_CRASHES[returncode & 0xFFFFFFFF]
    return None


@dataclass(frozen=True)
class BuildVerdict:
    """The outcome of checking one installed llama.cpp build on this machine."""

    key: str
    status: str  # OK, CRASHED, FAILED, NOT_RUN
    message: str  # one paragraph for a person
    signal_text: str | None = None  # the death in words, when CRASHED
    system_info: str | None = None  # llama_print_system_info() as the child saw it
    cpu_variant: str | None = None  # the CPU backend a GGML_BACKEND_DL build picked
    rebuild_command: str | None = None
    log_tail: tuple[str, ...] = ()
    checked_at_s: float = 0.0  # epoch seconds
    duration_s: float | None = None
    prompt_tokens: int | None = None
    cached: bool = False  # read from the cache rather than measured now

    @property
    def crashed(self) -> bool:
        return self.status == CRASHED

    def to_json(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["log_tail"] = list(self.log_tail)
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> BuildVerdict:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["log_tail"] = tuple(values.get("log_tail") or ())  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


# ---- identity and cache ------------------------------------------------------------------------


def library_files(lib_dir: Path) -> list[Path]:
    """libllama and every ggml library (backends and CPU variants included) in `lib_dir`."""
    try:
        entries = sorted(lib_dir.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and p.name.removeprefix("lib").startswith(("llama.", "ggml"))]


def build_key(lib_dir: Path) -> str | None:
    """A fingerprint of the installed build: path, size and mtime of its libraries; None if none."""
    files = library_files(lib_dir)
    if not files:
        return None
    digest = hashlib.sha256(str(lib_dir.resolve()).encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def default_cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("LlamaScope", appauthor=False)) / CACHE_FILE_NAME


def read_cache(path: Path) -> dict[str, dict[str, object]]:
    return read_json_dict(path)


def write_cache(path: Path, verdict: BuildVerdict) -> None:
    """Keep `verdict` under its key (a write that fails only costs a check next time)."""
    entries = read_cache(path)
    entries[verdict.key] = verdict.to_json()
    write_json_atomic(path, entries)


# ---- the check ---------------------------------------------------------------------------------


def child_command(model: str, prompt_tokens: int = CHECK_PROMPT_TOKENS) -> list[str]:
    """The child's command line; in a bundle sys.executable is LlamaScope, whose -m runs a module."""
    return [
        sys.executable,
        "-m",
        "app.llama.build_check",
        "--child",
        model,
        "--prompt-tokens",
        str(prompt_tokens),
    ]


def _rebuild_command() -> str:
    import importlib.metadata

    from app.llama.build_flags import read_cpu_flags, rebuild_command

    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = "<version>"
    return rebuild_command(sys.executable, version, read_cpu_flags(), platform.machine())


def verdict_from_child(
    key: str, returncode: int, stdout: str, stderr: str, duration_s: float, rebuild: Callable[[], str]
) -> BuildVerdict:
    """Turn the child's exit and output into a verdict (the child prints one JSON line per stage)."""
    facts: dict[str, object] = {}
    for line in stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            facts.update(item)
    tail = tuple(line for line in stderr.splitlines() if line.strip())[-_LOG_TAIL_LINES:]
    system_info = facts.get("system_info") if isinstance(facts.get("system_info"), str) else None
    variant = facts.get("cpu_variant") if isinstance(facts.get("cpu_variant"), str) else None
    prompt_tokens = facts.get("prompt_tokens")
    common: dict[str, Any] = dict(
        key=key,
        system_info=system_info,
        cpu_variant=variant,
        log_tail=tail,
        checked_at_s=time.time(),
        duration_s=round(duration_s, 2),
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
    )
    crash = describe_exit(returncode)
    if crash is not None:
        stage = facts.get("stage", "starting")
        command = rebuild()
        message = (
            f"This llama.cpp build crashed LlamaScope's build check on this CPU: {crash}, while "
            f"{stage}. Loading a model with it would end LlamaScope the same way. "
            f"The build uses: {system_info or 'n/a'}. Rebuild llama-cpp-python without the faulty "
            f"path:\n{command}"
        )
        return BuildVerdict(
            status=CRASHED, message=message, signal_text=crash, rebuild_command=command, **common
        )
    if returncode == 0 and facts.get("ok") is True:
        variant_text = f", CPU backend {variant}" if variant else ""
        return BuildVerdict(
            status=OK,
            message=f"llama.cpp build checked: decoded a {common['prompt_tokens']}-token prompt on this CPU"
            f"{variant_text}.",
            **common,  # type: ignore[arg-type]
        )
    if returncode < 0:
        error: object = signal_in_words(-returncode)
    else:
        error = facts.get("error") or (tail[-1] if tail else f"exit status {returncode}")
    return BuildVerdict(status=FAILED, message=f"The llama.cpp build check could not run: {error}", **common)  # type: ignore[arg-type]


def run_check(
    model: str,
    key: str,
    command: Sequence[str] | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
    rebuild: Callable[[], str] = _rebuild_command,
) -> BuildVerdict:
    """Run the check's child on `model` and judge how it ended. `command` replaces the child (tests)."""
    argv = list(command) if command is not None else child_command(model)
    # A Python-level stack on stderr if it dies; a GGML_ASSERT message without a gdb backtrace.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "GGML_NO_BACKTRACE": "1"}
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return BuildVerdict(
            key=key,
            status=FAILED,
            checked_at_s=time.time(),
            message=f"The llama.cpp build check did not finish within {timeout_s:.0f} s.",
        )
    except OSError as exc:
        return BuildVerdict(
            key=key,
            status=FAILED,
            checked_at_s=time.time(),
            message=f"The llama.cpp build check could not start: {exc}",
        )
    return verdict_from_child(key, done.returncode, done.stdout, done.stderr, time.monotonic() - t0, rebuild)


def check_build(
    model: str | None = None,
    force: bool = False,
    cache_path: Path | None = None,
    lib_dir: Path | None = None,
) -> BuildVerdict:
    """The verdict for the installed build: from the cache, or measured now (seconds) and cached.

    Runs a child process; call it off the GUI thread. A FAILED verdict is not cached (the next
    start tries again); OK and CRASHED are.
    """
    from app.llama.runtime import llama_lib_dir
    from app.model.demo_model import demo_model_path

    try:
        lib_dir = lib_dir or llama_lib_dir()
    except ImportError as exc:
        return BuildVerdict(key="", status=NOT_RUN, message=f"No llama.cpp build to check: {exc}")
    key = build_key(lib_dir)
    if key is None:
        return BuildVerdict(key="", status=NOT_RUN, message=f"No llama.cpp library found in {lib_dir}.")
    cache_path = cache_path or default_cache_path()
    if not force:
        cached = read_cache(cache_path).get(key)
        if isinstance(cached, dict):
            try:
                return dataclasses.replace(BuildVerdict.from_json(cached), cached=True)
            except TypeError:
                pass  # an entry from another version of this file: check again
    model = model or demo_model_path()
    if model is None:
        return BuildVerdict(
            key=key,
            status=NOT_RUN,
            message="The llama.cpp build check needs the demo model, which is not installed.",
        )
    verdict = run_check(model, key)
    if verdict.status in (OK, CRASHED):
        write_cache(cache_path, verdict)
    return verdict


# ---- the gate in front of every model load --------------------------------------------------------

_session_lock = threading.Lock()
_session_verdict: BuildVerdict | None = None
SKIP_ENV = "LLAMASCOPE_SKIP_BUILD_CHECK"  # "1": load even if the check saw this build crash


def session_verdict() -> BuildVerdict:
    """The verdict for the installed build, checked at most once per process (thread-safe)."""
    global _session_verdict
    with _session_lock:
        if _session_verdict is None:
            _session_verdict = check_build()
            if _session_verdict.status not in (OK, CRASHED):
                log.warning("%s", _session_verdict.message)
        return _session_verdict


def require_working_build(error: type[Exception] = RuntimeError) -> None:
    """Raise `error` with the verdict's message when this build crashed the check on this CPU.

    Called before every model load (engine, benchmark, evaluations), on their worker threads: the
    first call of a process may run the check (a few seconds, once per installed build).
    """
    if os.environ.get(SKIP_ENV) == "1":
        return
    verdict = session_verdict()
    if verdict.crashed:
        raise error(verdict.message + f"\n(To load anyway, set {SKIP_ENV}=1.)")


# ---- the child ---------------------------------------------------------------------------------


def _emit(**facts: object) -> None:
    print(json.dumps(facts), flush=True)


def _child(model: str, prompt_tokens: int) -> int:
    """Load `model`, decode `prompt_tokens` tokens in one batch on several threads, then a few
    single tokens. Prints a JSON line per stage, so the parent knows how far it got if it dies."""
    from app.llama import runtime as llama_runtime

    llama_runtime.echo_log_to(sys.stderr)
    _emit(stage="loading llama.cpp")
    lc = llama_runtime.llama()
    lc.llama_backend_init()
    _emit(
        system_info=lc.llama_print_system_info().decode("utf-8", "replace").strip(),
        cpu_variant=llama_runtime.cpu_backend_variant(),
        stage="loading the model",
    )
    mparams = lc.llama_model_default_params()
    model_ptr = lc.llama_model_load_from_file(model.encode("utf-8"), mparams)
    if not model_ptr:
        _emit(error=f"llama.cpp could not load {model}")
        return 1
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = max(CHECK_N_CTX, prompt_tokens + CHECK_GEN_TOKENS + 1)
    cparams.n_batch = cparams.n_ctx
    cparams.n_ubatch = min(512, cparams.n_ctx)
    # Several threads: the AMX fault is on llama.cpp's worker threads, not the main one.
    threads = max(2, min(8, os.cpu_count() or 2))
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model_ptr, cparams)
    if not ctx:
        _emit(error="llama.cpp could not create a context")
        return 1
    n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model_ptr)))
    # Token ids spread over the vocabulary, as llama-bench's random prompt: what is computed matters,
    # not what it says.
    tokens = [(7 + 7919 * i) % n_vocab for i in range(prompt_tokens)]
    _emit(stage=f"decoding a {prompt_tokens}-token prompt on {threads} threads")
    array = (lc.llama_token * prompt_tokens)(*tokens)
    if lc.llama_decode(ctx, lc.llama_batch_get_one(array, prompt_tokens)) != 0:
        _emit(error="llama_decode failed on the prompt")
        return 1
    _emit(stage="generating single tokens")
    for i in range(CHECK_GEN_TOKENS):
        one = (lc.llama_token * 1)(tokens[i])
        if lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1)) != 0:
            _emit(error="llama_decode failed on a single token")
            return 1
    lc.llama_free(ctx)
    lc.llama_model_free(model_ptr)
    _emit(ok=True, prompt_tokens=prompt_tokens, stage="done")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.llama.build_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-tokens", type=int, default=CHECK_PROMPT_TOKENS, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help="check again even if a verdict is cached")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--model", help="GGUF to check with (default: the demo model)")
    opts = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if opts.child:
        return _child(opts.child, max(1, opts.prompt_tokens))
    verdict = check_build(opts.model, force=opts.force)
    if opts.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.message)
    return 1 if verdict.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
