"""`llamascope quantize` and `llamascope eval`: the Quantization panel's core from the command line.

    llamascope quantize SRC --type Q4_K_M [-o OUT] [--allow-requantize] [--pure]
        [--leave-output-tensor] [--output-tensor-type T] [--token-embedding-type T] [--threads N]
    llamascope quantize --list-types
    llamascope imatrix [MODEL] [--text FILE] [-c 512] [--chunks N] [-o FILE] [--threads N]
    llamascope eval MODEL --ppl TEXT [--ctx 512] [--chunks N] [--kld-base BASE.gguf | --kld-logits FILE]
        [--save-logits FILE] [--mc FILE --format hellaswag|arc|mmlu] [--json]

Progress goes to stderr, results to stdout. Ctrl-C cancels (exit code 130) and leaves no partial
file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from app.common.formatting import jsonable as _jsonable
from cli.checks import MAX_UINT32, input_file_error, output_file_error, threads_error, threads_help

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130


def register(subparsers: Any) -> None:
    """Add the `quantize` and `eval` subcommands to the llamascope parser."""
    p_q = subparsers.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    p_q.add_argument("source", nargs="?", default=None, help="GGUF file to quantize (never overwritten)")
    p_q.add_argument("--type", "-q", dest="type_name", help="target type, e.g. Q4_K_M (see --list-types)")
    p_q.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file (default: MODEL.TYPE.gguf beside the source, or in LlamaScope's user data folder "
        "when the source's folder is not writable or belongs to an installed Python package)",
    )
    p_q.add_argument(
        "--allow-requantize",
        action="store_true",
        help="allow quantizing an already quantized model (quality is lost)",
    )
    p_q.add_argument("--pure", action="store_true", help="every tensor in the main type (no K-quant mix)")
    p_q.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight un(re)quantized")
    p_q.add_argument("--output-tensor-type", default=None, help="tensor type for output.weight, e.g. Q8_0")
    p_q.add_argument("--token-embedding-type", default=None, help="tensor type for token_embd.weight")
    p_q.add_argument(
        "--threads", "-t", type=int, default=None, help=threads_help("quantization threads", "all")
    )
    p_q.add_argument(
        "--imatrix",
        default=None,
        metavar="FILE",
        help="importance matrix (GGUF or legacy .dat, e.g. from `llamascope imatrix`); needed for the "
        "IQ1/IQ2/IQ3_XXS mixes and Q2_K_S, used by every type whose quantization takes one",
    )
    p_q.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="PATTERN=TYPE",
        help="quantize tensors whose name matches the regex PATTERN to TYPE (e.g. attn_v=Q8_0); "
        "repeatable, the first match wins",
    )
    p_q.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; print each tensor's type and the file's size",
    )
    p_q.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p_q.add_argument("--list-types", action="store_true", help="list the quantization types and exit")
    p_q.add_argument("--json", action="store_true", help="print the result as JSON")
    p_q.set_defaults(func=_cmd_quantize)

    p_i = subparsers.add_parser(
        "imatrix", help="compute an importance matrix for quantizing, as llama-imatrix does"
    )
    p_i.add_argument("model", nargs="?", default=None, help="GGUF model (default: the demo model)")
    p_i.add_argument(
        "--text",
        "-f",
        default=None,
        help="calibration text file (default: the shipped calibration text, Python standard library "
        "docstrings; see resources/calibration)",
    )
    p_i.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file, llama.cpp's imatrix GGUF (default: MODEL.imatrix.gguf beside the model, or in "
        "LlamaScope's user data folder when that folder is not writable or belongs to a Python package)",
    )
    p_i.add_argument(
        "-c", "--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-imatrix)"
    )
    p_i.add_argument("--chunks", type=int, default=None, help="at most this many chunks (default: all)")
    p_i.add_argument(
        "--threads", "-t", type=int, default=None, help=threads_help("threads", "physical cores")
    )
    p_i.add_argument(
        "--process-output",
        action="store_true",
        help="collect data for output.weight too (llama-imatrix's flag)",
    )
    p_i.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p_i.add_argument(
        "--override-memory", action="store_true", help="run even when the memory check says it will not fit"
    )
    p_i.add_argument("--json", action="store_true", help="print the result as JSON")
    p_i.set_defaults(func=_cmd_imatrix)

    p_e = subparsers.add_parser("eval", help="perplexity, KL divergence and multiple-choice benchmarks")
    p_e.add_argument("model", help="GGUF file to evaluate")
    p_e.add_argument(
        "--ppl",
        metavar="TEXT",
        default=None,
        help='evaluation text file, or "default" for the Python documentation shipped with Python',
    )
    p_e.add_argument("--ctx", "-c", type=int, default=512, help="context size per chunk (default 512)")
    p_e.add_argument("--chunks", type=int, default=None, help="evaluate at most N chunks")
    p_e.add_argument("--threads", "-t", type=int, default=None, help=threads_help("threads", "all"))
    kld = p_e.add_mutually_exclusive_group()
    kld.add_argument(
        "--kld-base",
        metavar="BASE.gguf",
        default=None,
        help="compute the base model's log-probabilities on TEXT, then MODEL's KL divergence",
    )
    kld.add_argument(
        "--kld-logits",
        metavar="FILE",
        default=None,
        help="KL divergence against saved base log-probabilities (also llama-perplexity's files)",
    )
    p_e.add_argument(
        "--save-logits",
        metavar="FILE",
        default=None,
        help="keep the base log-probabilities in FILE (MODEL's own without --kld-base)",
    )
    p_e.add_argument("--mc", metavar="FILE", default=None, help="multiple-choice benchmark data file")
    p_e.add_argument(
        "--format",
        dest="mc_format",
        choices=("hellaswag", "arc", "mmlu"),
        default=None,
        help="format of --mc",
    )
    p_e.add_argument(
        "--override-memory",
        action="store_true",
        help="evaluate even if the memory estimate says the model and context will not fit",
    )
    p_e.add_argument("--json", action="store_true", help="print one JSON object with every result")
    p_e.set_defaults(func=_cmd_eval)


def _err(message: str) -> None:
    print(f"llamascope: {message}", file=sys.stderr)


class _StderrProgress:
    """One updating line on a terminal; a line every 10 % otherwise (logs, CI)."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last_decile = -1
        self._open = False

    def show(self, fraction: float, text: str) -> None:
        if self._tty:
            sys.stderr.write(f"\r\x1b[K{text}")
            sys.stderr.flush()
            self._open = True
            return
        decile = int(fraction * 10)
        if decile != self._last_decile:
            self._last_decile = decile
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False
        self._last_decile = -1


# ---- quantize ----------------------------------------------------------------------------------
def _print_types() -> None:
    from app.quant.types import supported_quant_types

    print(f"{'Type':<10} {'Bits/w':>7}  {'imatrix':<8} Description")
    for t in supported_quant_types():
        flag = "needed" if t.needs_imatrix else ""
        print(f"{t.name:<10} {t.bits_per_weight:>7.2f}  {flag:<8} {t.description}")
    print(
        "\nTypes marked 'needed' take --imatrix FILE (compute one with `llamascope imatrix MODEL -o FILE`)."
    )


def _cmd_quantize(args: argparse.Namespace) -> int:
    from app.common.formatting import format_bytes
    from app.quant.partials import sweep_leftover_partials
    from app.quant.plan import (
        QuantizeCancelled,
        QuantizeError,
        QuantizeProgress,
        QuantizeRequest,
        output_folder_reason,
    )
    from app.quant.quantize import QuantizeJob

    if args.list_types:
        _print_types()
        return EXIT_OK
    if args.source is None or args.type_name is None:
        _err("quantize needs a source file and --type (see `llamascope quantize --list-types`)")
        return EXIT_USAGE
    problem = threads_error(args.threads) or (output_file_error(args.output, "-o") if args.output else None)
    if problem is None and args.imatrix is not None:
        problem = input_file_error(args.imatrix, "--imatrix", "importance matrix")
    tensor_types: list[tuple[str, str]] = []
    for item in args.tensor_type:
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern or not type_name:
            problem = problem or f"--tensor-type wants PATTERN=TYPE (e.g. attn_v=Q8_0), not {item!r}"
        tensor_types.append((pattern, type_name))
    if problem is not None:
        _err(problem)
        return EXIT_USAGE
    # What quantizations that did not live to finish (kill -9, a crash) left behind, wherever it is.
    for leftover in sweep_leftover_partials():
        _err(f"removed {leftover}, left by a quantization that did not finish")
    request = QuantizeRequest(
        source=args.source,
        type_name=args.type_name,
        output=args.output,
        allow_requantize=args.allow_requantize,
        pure=args.pure,
        leave_output_tensor=args.leave_output_tensor,
        output_tensor_type=args.output_tensor_type,
        token_embedding_type=args.token_embedding_type,
        n_threads=args.threads,
        overwrite=args.overwrite,
        imatrix=args.imatrix,
        tensor_types=tuple(tensor_types),
        dry_run=args.dry_run,
    )
    bar = _StderrProgress()

    def on_progress(p: QuantizeProgress) -> None:
        bar.show(
            p.fraction, f"quantizing [{p.tensor_index:>4}/{p.n_tensors}] {p.fraction:5.1%} {p.tensor_name}"
        )

    job = QuantizeJob(request, on_progress=on_progress)
    try:
        plan = job.start()
        for warning in plan.warnings:
            _err(f"warning: {warning}")
        moved = output_folder_reason(plan.source.path) if args.output is None else None
        if moved is not None:
            _err(f"writing to LlamaScope's user data folder, because {moved} (-o chooses another place)")
        if plan.imatrix is not None:
            print(
                f"Importance matrix {plan.imatrix.path}: {plan.imatrix.n_entries} entries, "
                f"{plan.imatrix.chunk_count} chunks of {', '.join(plan.imatrix.datasets) or 'n/a'}",
                file=sys.stderr,
            )
        if not args.dry_run:
            print(
                f"Quantizing {plan.source.path} -> {plan.output_path} ({plan.qtype.name}, "
                f"about {format_bytes(plan.expected_bytes)})",
                file=sys.stderr,
            )
        try:
            result = job.wait()
        except KeyboardInterrupt:
            job.cancel()
            result = job.wait()
    except QuantizeCancelled as exc:
        bar.end()
        _err(str(exc))
        return EXIT_CANCELLED
    except QuantizeError as exc:
        bar.end()
        _err(str(exc))
        return EXIT_ERROR
    bar.end()
    if args.json:
        out = _jsonable(result)
        out.pop("log_tail", None)
        out["label"] = result.label
        print(json.dumps(out, indent=2))
    elif result.dry_run:
        print(f"{'Tensor':<36} {'Shape':<18} {'From':>7} {'To':>8} {'Bytes':>12}")
        for t in result.tensors:
            shape = "x".join(str(n) for n in t.shape if n != 1) or "1"
            print(f"{t.name:<36} {shape:<18} {t.source_type:>7} {t.target_type:>8} {t.target_bytes:>12}")
        print(
            f"Dry run, nothing written: {result.type_name} of {result.source_path} would be "
            f"{result.output_bytes} bytes ({format_bytes(result.output_bytes)}, {result.bits_per_weight:.2f} "
            "bits/weight; tensor data exact, header taken as the source's)"
        )
    else:
        print(
            f"Wrote {result.output_path}: {result.label}, {format_bytes(result.output_bytes)}, "
            f"{result.bits_per_weight:.2f} bits/weight, {result.size_change} "
            f"({format_bytes(result.source_bytes)}), in {result.elapsed_s:.1f} s"
        )
    return EXIT_OK


# ---- imatrix -----------------------------------------------------------------------------------
def _imatrix_argument_error(args: argparse.Namespace) -> str | None:
    from app.model.file_format import detect_format

    if not 16 <= args.ctx <= MAX_UINT32:
        return f"-c/--ctx must be from 16 tokens (llama-imatrix ignores smaller products) to {MAX_UINT32:,}"
    if args.chunks is not None and args.chunks < 1:
        return f"--chunks must be 1 or more, not {args.chunks}"
    problem = threads_error(args.threads)
    if problem is None:
        fmt = detect_format(args.model)
        problem = None if fmt.loadable else f"MODEL: {args.model}: {fmt.message}"
    if problem is None and args.text is not None:
        problem = input_file_error(args.text, "--text", "calibration text")
    if problem is None:
        problem = output_file_error(args.output, "-o")
    if problem is None and os.path.exists(args.output) and not args.overwrite:
        problem = f"-o: {args.output} already exists; choose another name or pass --overwrite"
    return problem


def _cmd_imatrix(args: argparse.Namespace) -> int:
    from app.engine.client import Engine
    from app.engine.imatrix_job import ImatrixJob, ImatrixRequest
    from app.engine.types import EngineError
    from app.model.demo_model import demo_model_path
    from app.model.memory import InsufficientMemoryError
    from app.quality.eval_types import ChunkProgress, EvalCancelled, EvalError
    from app.quant.plan import default_output_folder, output_folder_reason

    if args.model is None:
        args.model = demo_model_path()
        if args.model is None:
            _err("imatrix needs a MODEL (the demo model is not installed)")
            return EXIT_USAGE
    if args.output is None:
        stem = os.path.splitext(os.path.basename(args.model))[0]
        folder = default_output_folder(args.model)
        if folder != os.path.dirname(os.path.abspath(args.model)):
            os.makedirs(folder, exist_ok=True)
            _err(f"writing to LlamaScope's user data folder, because {output_folder_reason(args.model)}")
        args.output = os.path.join(folder, f"{stem}.imatrix.gguf")
    problem = _imatrix_argument_error(args)
    if problem is not None:
        _err(problem)
        return EXIT_USAGE
    bar = _StderrProgress()

    def on_chunk(p: ChunkProgress) -> None:
        bar.show(
            p.fraction,
            f"importance matrix [{p.chunk}/{p.n_chunks}] PPL {p.ppl:.4f} ({p.tokens_per_s:.0f} t/s)",
        )

    engine = Engine()  # in the engine host: a crash in llama.cpp is a message, not an exit
    request = ImatrixRequest(
        model_path=args.model,
        text_source=args.text,
        output=args.output,
        n_ctx=args.ctx,
        n_chunks=args.chunks,
        n_threads=args.threads,
        process_output=args.process_output,
        override_memory=args.override_memory,
    )
    job = ImatrixJob(engine, request, on_progress=on_chunk)
    try:
        future = job.start()
        try:
            try:
                result = future.result()
            except KeyboardInterrupt:
                job.cancel()
                result = future.result()
        finally:
            bar.end()
    except EvalCancelled as exc:
        _err(str(exc))
        return EXIT_CANCELLED
    except InsufficientMemoryError as exc:
        _err(f"{exc} (--override-memory)")
        return EXIT_ERROR
    except (EvalError, EngineError) as exc:
        _err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("cancelled; nothing was written")
        return EXIT_CANCELLED
    finally:
        engine.shutdown()
    if args.json:
        print(json.dumps(_jsonable(result), indent=2))
    else:
        print(
            f"Wrote {result.path}: {result.n_entries} matrices from {result.n_chunks} chunks of "
            f"{result.n_ctx} tokens of {result.text_name} (PPL {result.ppl:.4f}, "
            f"{result.tokens_per_s:.0f} t/s, {result.elapsed_s:.1f} s)"
        )
    return EXIT_OK


# ---- eval --------------------------------------------------------------------------------------
def _fmt_unc(value: float | None, spec: str) -> str:
    return "" if value is None else f" ± {value:{spec}}"


def _print_ppl(label: str, r: Any) -> None:
    print(
        f"{label}: PPL = {r.ppl:.4f}{_fmt_unc(r.ppl_uncertainty, '.5f')} over {r.n_chunks} chunks of "
        f"{r.n_ctx} "
        f"tokens ({r.n_scored} scored; {r.tokens_per_s:.1f} tokens/s)"
    )


def _percent(value: float, uncertainty: float | None) -> str:
    return f"{100 * value:.3f}{_fmt_unc(None if uncertainty is None else 100 * uncertainty, '.3f')} %"


def _print_kld(r: Any) -> None:
    rows = [
        ("Mean PPL(Q)", f"{r.ppl:.6f}{_fmt_unc(r.ppl_uncertainty, '.6f')}"),
        ("Mean PPL(base)", f"{r.ppl_base:.6f}{_fmt_unc(r.ppl_base_uncertainty, '.6f')}"),
        ("Mean ln(PPL(Q)/PPL(base))", f"{r.ln_ppl_ratio:.6f}{_fmt_unc(r.ln_ppl_ratio_uncertainty, '.6f')}"),
        ("ΔPPL", f"{r.delta_ppl_percent:+.3f} %"),
        ("Mean KLD", f"{r.kld_mean:.6f}{_fmt_unc(r.kld_uncertainty, '.6f')}"),
        ("Maximum KLD", f"{r.kld_max:.6f}"),
        ("99.9% KLD", f"{r.kld_p99_9:.6f}"),
        ("99.0% KLD", f"{r.kld_p99:.6f}"),
        ("95.0% KLD", f"{r.kld_p95:.6f}"),
        ("90.0% KLD", f"{r.kld_p90:.6f}"),
        ("Median KLD", f"{r.kld_median:.6f}"),
        ("10.0% KLD", f"{r.kld_p10:.6f}"),
        ("5.0% KLD", f"{r.kld_p5:.6f}"),
        ("1.0% KLD", f"{r.kld_p1:.6f}"),
        ("0.1% KLD", f"{r.kld_p0_1:.6f}"),
        ("Minimum KLD", f"{r.kld_min:.6f}"),
        ("Mean Δp", _percent(r.delta_p_mean, r.delta_p_uncertainty)),
        ("RMS Δp", _percent(r.delta_p_rms, r.delta_p_rms_uncertainty)),
        ("Same top p", _percent(r.same_top_p, r.same_top_p_uncertainty)),
    ]
    print(
        f"KL divergence of {r.model_path} from {r.base_model} "
        f"({r.n_chunks} chunks of {r.n_ctx}, {r.n_scored} tokens):"
    )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _eval_argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with eval's files and numbers, found before the engine starts and a model loads."""
    from app.model.file_format import detect_format
    from app.quality.eval_text import DEFAULT_TEXT_NAME
    from app.quality.eval_types import EvalError
    from app.quality.multiple_choice import load_items

    if args.ctx > MAX_UINT32:
        return f"--ctx {args.ctx:,} is beyond what llama.cpp can take ({MAX_UINT32:,})"
    problem = threads_error(args.threads)
    for flag, path in (("MODEL", args.model), ("--kld-base", args.kld_base)):
        if problem is None and path is not None:
            fmt = detect_format(path)
            problem = None if fmt.loadable else f"{flag}: {path}: {fmt.message}"
    if problem is None and args.ppl and args.ppl != DEFAULT_TEXT_NAME:
        problem = input_file_error(args.ppl, "--ppl", "evaluation text")
    if problem is None and args.kld_logits:
        problem = input_file_error(args.kld_logits, "--kld-logits", "log-probabilities")
    if problem is None and args.save_logits:
        problem = output_file_error(args.save_logits, "--save-logits")
    if problem is None and args.mc:
        try:
            load_items(args.mc, args.mc_format)  # read again in the engine host; a bad file stops here
        except EvalError as exc:
            problem = f"--mc: {exc}"
    return problem


def _cmd_eval(args: argparse.Namespace) -> int:
    from app.common.formatting import format_bytes
    from app.model.memory import InsufficientMemoryError
    from app.quality.eval_text import EvalTextError, load_text
    from app.quality.eval_types import (
        ChunkProgress,
        EvalCancelled,
        EvalError,
        EvalSettings,
    )
    from app.quality.multiple_choice import MCProgress

    if args.kld_base and not args.ppl:
        _err("--kld-base needs --ppl TEXT: the base's log-probabilities are computed on that text")
        return EXIT_USAGE
    if not (args.ppl or args.kld_logits or args.mc):
        _err("eval needs --ppl TEXT, --kld-logits FILE or --mc FILE")
        return EXIT_USAGE
    if args.save_logits and not args.ppl:
        _err("--save-logits needs --ppl TEXT")
        return EXIT_USAGE
    if args.save_logits and args.kld_logits:
        _err("--save-logits and --kld-logits cannot be combined: the logits file already exists")
        return EXIT_USAGE
    if args.mc and not args.mc_format:
        _err("--mc needs --format hellaswag, arc or mmlu")
        return EXIT_USAGE
    problem = _eval_argument_error(args)
    if problem is not None:
        _err(problem)
        return EXIT_USAGE

    settings = EvalSettings(n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads)
    bar = _StderrProgress()
    out: dict[str, Any] = {"model": os.path.abspath(args.model)}

    def on_chunk(p: ChunkProgress) -> None:
        extra = f" KLD {p.mean_kld:.5f}" if p.mean_kld is not None else ""
        rate = f"{p.tokens_per_s:.0f} t/s"
        bar.show(p.fraction, f"{p.phase} [{p.chunk}/{p.n_chunks}] PPL {p.ppl:.4f}{extra} ({rate})")

    def on_mc(p: MCProgress) -> None:
        bar.show(
            p.item / p.n_items, f"benchmark [{p.item}/{p.n_items}] accuracy {100 * p.accuracy_norm:.1f} %"
        )

    from app.engine.client import Engine
    from app.engine.jobs import host_call, host_plain
    from app.engine.types import EngineError

    engine = Engine()  # every evaluation runs in the engine host: a crash is a message, not an exit

    def run(function: str, *fn_args: Any, on_progress: Any, **kwargs: Any) -> Any:
        future = engine.run_exclusive(
            lambda _cancel: host_call(
                engine,
                function,
                *fn_args,
                callbacks={"on_progress": on_progress},
                override_memory=args.override_memory,  # every evaluation checks memory before it loads
                **kwargs,
            )
        )
        try:
            try:
                return future.result()
            except KeyboardInterrupt:
                engine.cancel()
                return future.result()
        except EngineError as exc:
            raise EvalError(str(exc)) from None
        finally:
            bar.end()

    try:
        settings.validate()
        text = load_text(args.ppl) if args.ppl else None
        if args.kld_base:  # before anything long: the base pass would be wasted
            host_plain(engine, "app.quality.kl_divergence:check_same_vocabulary", args.kld_base, [args.model])
        if text is not None and (args.kld_base or args.save_logits):
            # Say how big the logits file will be before writing it (llama.cpp's are large).
            logits_owner = args.kld_base or args.model
            plan = host_plain(engine, "app.quality.perplexity:plan_perplexity", logits_owner, text, settings)
            target = args.save_logits or "a temporary file"
            print(
                f"Base log-probabilities: {plan.n_chunks} chunks x {settings.scored_per_chunk} positions x "
                f"{plan.n_vocab} tokens = {format_bytes(plan.logits_file_bytes)} in {target}",
                file=sys.stderr,
            )
        if text is not None and not args.kld_base and not args.kld_logits:
            ppl = run(
                "app.quality.perplexity:evaluate_perplexity",
                args.model,
                text,
                settings,
                save_logits=args.save_logits,
                on_progress=on_chunk,
            )
            out["perplexity"] = ppl
            if not args.json:
                _print_ppl(os.path.basename(args.model), ppl)
                if ppl.logits_file:
                    print(f"Saved base log-probabilities to {ppl.logits_file}")
        if args.kld_base and text is not None:
            both = run(
                "app.quality.kl_divergence:evaluate_against_base",
                args.kld_base,
                [args.model],
                text,
                settings,
                logits_file=args.save_logits,
                on_progress=on_chunk,
            )
            out["base_perplexity"] = both.base
            out["kl_divergence"] = both.variants[0]
            if not args.json:
                _print_ppl(f"base {os.path.basename(args.kld_base)}", both.base)
                if both.base.logits_file and args.save_logits:
                    print(f"Saved base log-probabilities to {both.base.logits_file}")
                _print_kld(both.variants[0])
        if args.kld_logits:
            kld = run(
                "app.quality.kl_divergence:evaluate_kl_divergence",
                args.model,
                args.kld_logits,
                settings,
                text=text,
                on_progress=on_chunk,
            )
            out["kl_divergence"] = kld
            if not args.json:
                _print_kld(kld)
        if args.mc:
            mc = run(
                "app.quality.multiple_choice:run_benchmark_file",
                args.model,
                args.mc,
                args.mc_format,
                n_threads=args.threads,
                on_progress=on_mc,
            )
            out["multiple_choice"] = mc
            if not args.json:
                lo, hi = mc.accuracy_norm_ci95
                print(
                    f"{mc.benchmark} ({mc.n_items} items from {os.path.basename(args.mc)}): "
                    f"accuracy {100 * mc.accuracy:.2f} %, length-normalised {100 * mc.accuracy_norm:.2f} % "
                    f"[95 % CI {100 * lo:.1f}–{100 * hi:.1f} %]"
                )
    except EvalCancelled as exc:
        _err(str(exc))
        return EXIT_CANCELLED
    except InsufficientMemoryError as exc:
        _err(f"{exc} (--override-memory)")
        return EXIT_ERROR
    except (EvalError, EvalTextError, EngineError) as exc:
        _err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("cancelled")
        return EXIT_CANCELLED
    finally:
        engine.shutdown()
    if args.json:
        print(json.dumps(_jsonable(out), indent=2))
    return EXIT_OK
