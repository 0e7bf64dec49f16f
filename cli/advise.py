"""`llamascope advise` and `llamascope quantize --target-size/--target-bpw`.

    llamascope advise MODEL [--base F16.gguf] [--max-memory SIZE] [--min-tg T/S] [--text FILE]
        [--calibration FILE | --imatrix FILE] [--types Q8_0,Q4_K_M,...] [-c CTX] [--eval-ctx N]
        [--chunks N] [--keep FOLDER] [--threads N] [--json]
    llamascope quantize MODEL --target-size 80MiB | --target-bpw 4.2 [--text FILE] [-o OUT]
        [--imatrix FILE] [--layer-parts N] [--kinds ffn_down,attn_v] [--eval-ctx N] [--chunks N]

The work runs on a thread of its own; Ctrl+C sets its Stop, which kills the quantizer child or
stops the measurement, and the work folder is removed before the command exits (code 130).
Measurements run in the engine host, as `eval` does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from app.common.formatting import jsonable
from cli.checks import input_file_error, output_file_error, threads_error, threads_help

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130
T = TypeVar("T")


def _err(message: str) -> None:
    print(f"llamascope: {message}", file=sys.stderr)


def register(subparsers: Any) -> None:
    """`advise`, and the target options of the `quantize` command registered before."""
    p = subparsers.add_parser(
        "advise", help="measure candidate quantizations and recommend one for this machine"
    )
    p.add_argument("model", help="GGUF to quantize (an F16/BF16/F32 file is best)")
    p.add_argument("--base", default=None, help="KL divergence reference (default: MODEL)")
    p.add_argument("--max-memory", default=None, metavar="SIZE", help="memory limit, e.g. 300MiB or 8GiB")
    p.add_argument(
        "--min-tg", type=float, default=None, metavar="T/S", help="generation speed floor, tokens/s"
    )
    p.add_argument("--text", default="default", help='evaluation text file, or "default" (the Python docs)')
    matrix = p.add_mutually_exclusive_group()
    matrix.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help='calibration text for an importance matrix ("calibration": the shipped one)',
    )
    matrix.add_argument("--imatrix", default=None, metavar="FILE", help="a ready importance matrix")
    p.add_argument(
        "--types", default=None, help="comma-separated candidate types (default: a standard sweep)"
    )
    p.add_argument(
        "-c", "--ctx", type=int, default=None, help="context for the memory estimate (default 4096)"
    )
    p.add_argument(
        "--eval-ctx", type=int, default=256, help="context of each KL-divergence chunk (default 256)"
    )
    p.add_argument("--chunks", type=int, default=8, help="KL-divergence chunks (default 8)")
    p.add_argument("--speed-reps", type=int, default=3, help="speed repetitions (default 3)")
    p.add_argument("--keep", default=None, metavar="FOLDER", help="keep the recommended file in FOLDER")
    p.add_argument("--allow-requantize", action="store_true", help="MODEL may be quantized already")
    p.add_argument("--threads", "-t", type=int, default=None, help=threads_help("threads", "all"))
    p.add_argument("--json", action="store_true", help="print the advice as JSON")
    p.set_defaults(func=_cmd_advise)

    q = subparsers.choices.get("quantize")
    if q is None:
        return
    q.add_argument("--target-size", default=None, metavar="SIZE", help="choose per-tensor types to meet SIZE")
    q.add_argument("--target-bpw", type=float, default=None, metavar="B", help="... or B bits per weight")
    q.add_argument("--text", default="default", help="evaluation text for the target's sensitivities")
    q.add_argument("--layer-parts", type=int, default=2, help="layer ranges per tensor kind (default 2)")
    q.add_argument(
        "--eval-ctx", type=int, default=256, help="context of each sensitivity chunk (default 256)"
    )
    q.add_argument("--chunks", type=int, default=4, help="chunks per sensitivity (default 4)")
    q.add_argument(
        "--kinds",
        default=None,
        help="tensor kinds the target may lower, comma-separated (e.g. ffn_down,attn_v; default: all)",
    )
    plain = q.get_default("func")
    q.set_defaults(func=lambda args: _cmd_target(args) if _wants_target(args) else plain(args))


def _wants_target(args: argparse.Namespace) -> bool:
    return args.target_size is not None or args.target_bpw is not None


def _run_stoppable(work: Callable[[], T], stop: Any) -> T:
    """`work()` on a thread of its own; Ctrl+C sets `stop` and waits for the work to wind up."""
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: an interrupted join can leave the thread marked ended

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="llamascope-advise", daemon=True).start()
    try:
        while not done.wait(0.25):
            pass
    except KeyboardInterrupt:
        stop.set()
        while not done.wait(0.25):
            pass
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _run_on_engine(
    build: Callable[[Any, Any], Callable[[], T]], n_threads: int | None, errors: tuple[type[Exception], ...]
) -> tuple[T | None, int]:
    """Start an engine host, make the work with `build(runner, stop)` (an EngineEvalRunner on it and
    the Stop that Ctrl+C sets), run it stoppably and shut the host down. Returns (result, EXIT_OK), or
    (None, exit code) once a stop or one of `errors` was told to the user: a message, no traceback."""
    from app.engine.client import Engine
    from app.engine.quant_steps import EngineEvalRunner
    from app.quant.measuring import OperationStopped, Stop

    stop = Stop()
    engine = Engine()
    try:
        return _run_stoppable(build(EngineEvalRunner(engine, n_threads=n_threads), stop), stop), EXIT_OK
    except OperationStopped as exc:
        _err(str(exc))
        return None, EXIT_CANCELLED
    except errors as exc:
        _err(str(exc))
        return None, EXIT_ERROR
    finally:
        engine.shutdown()


def _progress_printer() -> Callable[[Any], None]:
    def show(p: Any) -> None:
        where = f"[{p.index}/{p.total}] " if getattr(p, "total", 0) and hasattr(p, "index") else ""
        if hasattr(p, "done"):
            where = f"[{p.done}/{p.total}] " if p.total else ""
        print(f"{p.phase}: {where}{p.text}", file=sys.stderr, flush=True)

    return show


def _settings_error(args: argparse.Namespace) -> str | None:
    problem = threads_error(args.threads)
    if problem is None and (args.eval_ctx < 8 or args.eval_ctx % 2):
        problem = f"--eval-ctx must be an even number of at least 8, not {args.eval_ctx}"
    if problem is None and args.chunks < 1:
        problem = f"--chunks must be 1 or more, not {args.chunks}"
    if problem is None and args.text != "default":
        problem = input_file_error(args.text, "--text", "evaluation text")
    return problem


def _cmd_advise(args: argparse.Namespace) -> int:
    from app.quality.eval_types import EvalError, EvalSettings
    from app.quant.advisor import AdviceError, AdviceRequest, Advisor
    from app.quant.plan import QuantizeError
    from app.quant.target import TargetError, parse_size

    problem = _settings_error(args)
    calibration = None if args.calibration == "calibration" else args.calibration  # the shipped text
    for flag, path, what in (("MODEL", args.model, "model"), ("--base", args.base, "model"),
                             ("--calibration", calibration, "calibration text"),
                             ("--imatrix", args.imatrix, "importance matrix")):  # fmt: skip
        if problem is None and path is not None:
            problem = input_file_error(path, flag, what)
    if problem is None and args.keep is not None:
        problem = output_file_error(args.keep + "/x.gguf", "--keep")
    if problem is None and args.min_tg is not None and not (math.isfinite(args.min_tg) and args.min_tg >= 0):
        problem = f"--min-tg must be a number of 0 or more tokens per second, not {args.min_tg:g}"
    if problem is None and args.speed_reps < 1:
        problem = f"--speed-reps must be 1 or more, not {args.speed_reps}"
    types = tuple(t.strip() for t in args.types.split(",") if t.strip()) if args.types is not None else None
    if problem is None and types == ():
        problem = "--types names no type: give a comma-separated list such as Q8_0,Q4_K_M"
    if problem is None and args.imatrix is not None:
        # Read it now: a wrong file found after the first candidate has been quantized wastes minutes.
        from app.quant.imatrix import ImatrixFileError, read_imatrix

        try:
            read_imatrix(args.imatrix)
        except ImatrixFileError as exc:
            problem = f"--imatrix: {exc}"
    if problem is None and args.ctx is not None and args.ctx < 1:
        problem = f"-c must be 1 or more, not {args.ctx}"
    max_memory = None
    if problem is None and args.max_memory is not None:
        try:
            max_memory = parse_size(args.max_memory, "--max-memory")
        except TargetError as exc:
            problem = str(exc)
    if problem is not None:
        _err(problem)
        return EXIT_USAGE
    from app.model.settings import LoadSettings

    request = AdviceRequest(
        source=args.model,
        text_source=args.text,
        base=args.base,
        calibration=args.calibration,
        imatrix=args.imatrix,
        types=types,
        max_memory_bytes=max_memory,
        min_tg=args.min_tg,
        n_ctx=args.ctx or LoadSettings().n_ctx,
        settings=EvalSettings(n_ctx=args.eval_ctx, n_chunks=args.chunks, n_threads=args.threads),
        speed_repetitions=args.speed_reps,
        n_threads=args.threads,
        allow_requantize=args.allow_requantize,
        keep_folder=args.keep,
    )
    advice, code = _run_on_engine(
        lambda runner, stop: Advisor(request, runner, stop=stop, on_progress=_progress_printer()).run,
        args.threads,
        (AdviceError, EvalError, QuantizeError),
    )
    if advice is None:
        return code
    if args.json:
        print(json.dumps(jsonable(advice), indent=2))
        return EXIT_OK
    print(advice.table())
    print(f"\n{advice.verdict}")
    print(f"Measured now: {advice.measured}; from the history: {advice.reused}. '*' = on the size × KLD × tg "
          "Pareto frontier.")  # fmt: skip
    for note in advice.notes:
        print(note)
    if advice.kept_path:
        print(f"Kept {advice.kept_path}")
    return EXIT_OK if advice.pick is not None else EXIT_ERROR


def _cmd_target(args: argparse.Namespace) -> int:
    from app.common.formatting import format_bytes
    from app.quality.eval_types import EvalError, EvalSettings
    from app.quant.plan import QuantizeError
    from app.quant.target import Target, TargetError, TargetQuantizer, TargetRequest, parse_size

    if args.source is None:
        _err("quantize needs a source file")
        return EXIT_USAGE
    if args.type_name is not None:
        _err("--target-size/--target-bpw choose the types themselves: leave out --type")
        return EXIT_USAGE
    if getattr(args, "tensor_type", None) or getattr(args, "dry_run", False) or args.pure:
        _err("the target chooses per-tensor types itself: leave out --tensor-type, --dry-run and --pure")
        return EXIT_USAGE
    if args.target_size is not None and args.target_bpw is not None:
        _err("give --target-size or --target-bpw, not both")
        return EXIT_USAGE
    problem = _settings_error(args) or input_file_error(args.source, "SOURCE", "model")
    if problem is None and args.output:
        problem = output_file_error(args.output, "-o")
    if problem is None and args.layer_parts < 1:
        problem = f"--layer-parts must be 1 or more, not {args.layer_parts}"
    try:
        target = (
            Target(size_bytes=parse_size(args.target_size, "--target-size"))
            if args.target_size is not None
            else Target(bits_per_weight=args.target_bpw)
        )
    except TargetError as exc:
        problem = problem or str(exc)
    if problem is not None:
        _err(problem)
        return EXIT_USAGE
    request = TargetRequest(
        source=args.source,
        target=target,
        text_source=args.text,
        settings=EvalSettings(n_ctx=args.eval_ctx, n_chunks=args.chunks, n_threads=args.threads),
        output=args.output,
        imatrix=getattr(args, "imatrix", None),
        layer_parts=args.layer_parts,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None,
        n_threads=args.threads,
        overwrite=args.overwrite,
        allow_requantize=args.allow_requantize,
    )
    result, code = _run_on_engine(
        lambda runner, stop: TargetQuantizer(request, runner, stop=stop, on_progress=_progress_printer()).run,
        args.threads,
        (TargetError, EvalError, QuantizeError),
    )
    if result is None:
        return code
    if args.json:
        out = jsonable(result)
        out["quantized"].pop("log_tail", None)
        out["quantized"].pop("tensors", None)
        print(json.dumps(out, indent=2))
        return EXIT_OK
    c = result.choice
    q = result.quantized
    print(f"Wrote {q.output_path}: {format_bytes(q.output_bytes)} ({q.output_bytes} bytes), "
          f"{q.bits_per_weight:.2f} bits/weight, for a target of {c.target.label}.")  # fmt: skip
    if c.lower is None:
        print(f"The target is at or above {c.upper}, the largest mix: {c.upper} as it is.")
    else:
        print(f"Between {c.lower} and {c.upper}: {c.upper} with {len(c.dropped)} of {len(c.groups)} tensor "
              f"groups in {c.lowered_tensor_type}: {', '.join(c.dropped) or 'none'}.")  # fmt: skip
        print(
            f"Mean KLD: {c.upper} {c.upper_kld:.5f}; predicted for the mix {c.predicted_kld:.5f}; "
            f"measured {result.kld.kld_mean:.5f}."
            if result.kld is not None and c.upper_kld is not None
            else ""
        )
    return EXIT_OK
