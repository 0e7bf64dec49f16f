"""`llamascope bench`, `history` and `compare`: llama-bench's interface on LlamaScope's runner."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from cli.checks import threads_error, threads_help

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
# More tests than this in one plan is a typo in a sweep, not a benchmark anyone waits for; the plan's
# combinations are counted before they are built.
MAX_TESTS = 10_000


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark like llama-bench: pp/tg/pg tests, sweeps, mean ± stdev over repetitions",
        description="Comma lists and ranges (1-8, 1-8+2, 1-64*2) sweep a parameter; every combination runs.",
    )
    p.add_argument("models", nargs="*", help="GGUF files (default: the demo model)")
    p.add_argument("-p", "--n-prompt", default="512", help="prompt sizes (default 512; 0 = none)")
    p.add_argument("-n", "--n-gen", default="128", help="generation sizes (default 128; 0 = none)")
    p.add_argument("-pg", action="append", default=[], metavar="PP,TG", help="prompt + generation test")
    p.add_argument("-d", "--n-depth", default="0", help="KV cache depths to test at (default 0)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions per test (default 5)")
    p.add_argument(
        "-t", "--threads", default=None, help=threads_help("threads, a list or range", "physical cores")
    )
    # llama-bench's defaults (app.bench.runner.DEFAULT_*): the same command runs the same test.
    p.add_argument("-b", "--batch-size", default="2048", help="n_batch (default 2048, as llama-bench)")
    p.add_argument("-ub", "--ubatch-size", default="512", help="n_ubatch (default 512)")
    p.add_argument(
        "-fa",
        "--flash-attn",
        default="auto",
        help="flash attention 0/1/auto (default auto: llama.cpp turns it on where the backend has it, "
        "as llama-bench)",
    )
    p.add_argument("-ctk", "--cache-type-k", default="f16", help="K cache type (default f16)")
    p.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache type (default f16)")
    p.add_argument("-ngl", "--n-gpu-layers", default="0", help="GPU layers (default 0)")
    p.add_argument("-mmp", "--mmap", default="1", help="use mmap 0/1 (default 1)")
    p.add_argument(
        "-o",
        "--output",
        choices=("md", "csv", "json", "jsonl", "sql"),
        default="md",
        help="md also prints batched-bench's view of pg tests and t/s by depth; sql is llama-bench's "
        "(pipe it into sqlite3 for llama.cpp's compare-llama-bench.py)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    p.add_argument(
        "--warmup-until-steady",
        action="store_true",
        help="warm up with full repetitions until the last 3 agree within 3 %% of their median "
        "(at most 10 runs or 60 s a test; one that does not settle is flagged)",
    )
    p.add_argument("--no-history", action="store_true", help="do not store the results")
    p.add_argument("--no-telemetry", action="store_true", help="do not sample CPU/memory/power during tests")
    p.add_argument(
        "--override-memory",
        action="store_true",
        help="run configurations even if the memory estimate says they will not fit",
    )
    p.set_defaults(func=_cmd_bench)

    h = sub.add_parser(
        "history", help="list stored benchmark and generation runs, or import llama-bench output"
    )
    h.add_argument("--model", default=None, help="only runs whose model path contains this")
    h.add_argument("--run", type=int, default=None, help="show one run's results")
    h.add_argument(
        "--import",
        dest="import_file",
        default=None,
        metavar="FILE",
        help="store llama-bench -o json/jsonl output beside LlamaScope's runs",
    )
    h.add_argument("--json", action="store_true", help="print JSON")
    h.set_defaults(func=_cmd_history)

    c = sub.add_parser(
        "compare",
        help="compare two stored runs, or the configurations of one sweep run (Welch's t-test "
        "over the repetitions)",
    )
    c.add_argument("run_a", type=int)
    c.add_argument("run_b", type=int, nargs="?", help="omit to compare the configurations within RUN_A")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_cmd_compare)


def _plan(args: argparse.Namespace) -> Any:
    from app.bench.runner import BenchPlan, build_tests, parse_flash_attn, parse_values
    from app.model.demo_model import demo_model_path
    from app.model.fields import MAX_N_CTX
    from app.model.gguf_info import inspect_model
    from app.model.settings import LoadSettings, count_physical_cores

    models = tuple(args.models) or ((demo_model_path(),) if demo_model_path() else ())
    if not models:
        raise ValueError("no model given and the demo model package is not installed")
    for model in models:
        inspect_model(model)  # a missing, truncated or corrupt file stops here, before the engine starts
    pg = []
    for item in args.pg:
        values = parse_values(item)
        if len(values) != 2:
            raise ValueError(f"-pg takes two numbers, PP,TG (got {item!r})")
        pg.append((values[0], values[1]))
    sizes = {
        flag: parse_values(text)
        for flag, text in (("-p", args.n_prompt), ("-n", args.n_gen), ("-d", args.n_depth))
    }
    for flag, values in sizes.items():  # build_tests drops sizes of 0 ("none"); a negative one is a typo
        if min(values) < 0:
            raise ValueError(f"{flag} {min(values)}: sizes must be 0 or more")
    tests = build_tests(sizes["-p"], sizes["-n"], pg, sizes["-d"])
    for test in tests:  # the context holds the depth, the prompt and the generated tokens
        if test.n_depth + test.n_tokens > MAX_N_CTX:
            raise ValueError(
                f"{test.name} needs a context of {test.n_depth + test.n_tokens:,} tokens; "
                f"the largest context is {MAX_N_CTX:,}"
            )
    threads = parse_values(args.threads) if args.threads else (count_physical_cores(),)
    problem = threads_error(threads, "-t")
    if problem is not None:
        raise ValueError(problem)
    sweep = (
        ("n_threads", threads),
        ("n_batch", parse_values(args.batch_size)),
        ("n_ubatch", parse_values(args.ubatch_size)),
        ("flash_attn", parse_flash_attn(args.flash_attn)),
        ("type_k", parse_values(args.cache_type_k, str)),
        ("type_v", parse_values(args.cache_type_v, str)),
        ("n_gpu_layers", parse_values(args.n_gpu_layers)),
        ("use_mmap", parse_values(args.mmap, bool)),
    )
    runs = len(models) * len(tests) * math.prod(len(values) for _, values in sweep)
    if runs > MAX_TESTS:
        raise ValueError(
            f"the lists combine into {runs:,} tests (models x tests x every combination of the swept "
            f"values); at most {MAX_TESTS:,} run in one benchmark: sweep fewer values"
        )
    return BenchPlan(
        models=models,
        tests=tests,
        base=LoadSettings(),
        sweep=sweep,
        repetitions=args.repetitions,
        warmup=not args.no_warmup,
        warmup_until_steady=args.warmup_until_steady,
        override_memory=args.override_memory,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from app.bench.export import dumps
    from app.bench.history import run_and_record
    from app.bench.runner import BenchError, BenchResult
    from app.model.file_format import ModelFileError
    from app.model.memory import InsufficientMemoryError
    from app.model.settings import SettingsError

    try:
        plan = _plan(args)
        for _model, load, _test in plan.instances():
            load.validate()
    except (BenchError, SettingsError, ValueError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelFileError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR

    store, sampler = history_and_sampler(args, "results will not be stored")

    results: list[BenchResult] = []
    run_ids: dict[str, int] = {}

    def on_result(result: BenchResult) -> None:
        results.append(result)
        if args.output == "jsonl":
            sys.stdout.write(dumps([result], "jsonl"))
            sys.stdout.flush()

    def on_progress(done: int, total: int, what: str) -> None:
        print(f"\r[{done}/{total}] {what[:70]:<70}", end="", file=sys.stderr, flush=True)

    from app.engine.client import Engine
    from app.engine.jobs import host_benchmark
    from app.engine.types import EngineError

    # The plan runs in the engine host: a model that crashes llama.cpp fails the run with a message.
    engine = Engine()
    status = "finished"
    try:
        future = engine.run_exclusive(
            lambda cancel: run_and_record(
                plan,
                store,
                cancel=cancel,
                on_progress=on_progress,
                on_result=on_result,
                sampler=sampler,
                run_ids=run_ids,
                run=host_benchmark(engine),
            )
        )
        try:
            future.result()
        except KeyboardInterrupt:
            engine.cancel()  # the finished repetitions are kept, as llama-bench's Ctrl+C does not
            status = "cancelled"
            future.exception()
    except InsufficientMemoryError as exc:  # checked in the host before anything loads
        print(f"\nllamascope: benchmark refused: {exc} (--override-memory)", file=sys.stderr)
        status = "failed"
    except (BenchError, ModelFileError, SettingsError, EngineError, RuntimeError, ValueError) as exc:
        print(f"\nllamascope: benchmark failed: {exc}", file=sys.stderr)
        status = "failed"
    finally:
        engine.shutdown()
        print(file=sys.stderr)
        if sampler is not None:
            sampler.stop()
    if args.output != "jsonl":
        sys.stdout.write(dumps(results, args.output, swept=plan.swept_fields))
    if args.output == "md":
        from app.bench.batched import batched_tables

        sys.stdout.write(batched_tables(results))
    if run_ids:
        print(f"stored as run {', '.join(map(str, run_ids.values()))}", file=sys.stderr)
    return {"finished": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status, EXIT_ERROR)


def history_and_sampler(args: argparse.Namespace, unstored: str) -> tuple[Any, Any]:
    """The history store and the telemetry sampler of a measuring command (bench, score), each None
    when turned off (--no-history, --no-telemetry); a history that cannot be opened is said, with
    `unstored`, and the run goes on without it."""
    from app.bench.history import HistoryError, HistoryStore

    store = None
    if not args.no_history:
        try:
            store = HistoryStore()
        except HistoryError as exc:
            print(f"llamascope: {unstored}: {exc}", file=sys.stderr)
    return store, (None if args.no_telemetry else _start_sampler())


def _start_sampler() -> Any:
    try:
        from app.telemetry.sampler import Sampler
    except ImportError:  # telemetry not built in this version
        return None
    sampler = Sampler(interval_s=0.5)
    sampler.start()
    return sampler


def _cmd_history(args: argparse.Namespace) -> int:
    from cli import server as cli_server

    if args.run is not None and not args.import_file:
        shown = cli_server.show_server_run(args.run, args.json)  # None: not a server benchmark
        if shown is not None:
            return shown
    from app.bench.export import dumps, load_llama_bench
    from app.bench.history import HistoryError, HistoryStore
    from app.bench.runner import BenchError

    try:
        store = HistoryStore()
        if args.import_file:
            results = load_llama_bench(args.import_file)
            run_id = store.import_results(results, label=f"imported from {args.import_file}")
            print(f"imported {len(results)} results as run {run_id}")
            return EXIT_OK
        if args.run is not None:
            run = store.run(args.run)  # an unknown id is an error, not an empty table
            if run.kind == "generation":
                generations = store.generations(run.id)
                if args.json:
                    print(json.dumps(generations, indent=2))
                else:
                    for g in generations:
                        print(", ".join(f"{k} {v}" for k, v in g.items() if k not in ("id", "run_id")))
                return EXIT_OK
            results = store.results(args.run)
            sys.stdout.write(dumps(results, "json" if args.json else "md"))
            if not args.json:
                from app.bench.batched import batched_tables

                sys.stdout.write(batched_tables(results))
            return EXIT_OK
        runs = store.runs(model=args.model)
    except (HistoryError, BenchError, OSError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in runs], indent=2))
        return EXIT_OK
    print(f"{'run':>5}  {'when':<20}  {'kind':<10}  {'status':<11}  {'results':>7}  model")
    for r in runs:
        status = "interrupted" if r.status == "running" else r.status
        print(f"{r.id:>5}  {r.created_at:<20}  {r.kind:<10}  {status:<11}  {r.n_results:>7}  {r.model_path}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from cli import server as cli_server

    compared = cli_server.compare_server_runs(args.run_a, args.run_b, args.json)  # None: local runs
    if compared is not None:
        return compared
    from app.bench.history import HistoryError, HistoryStore
    from app.bench.trust import assess

    try:
        rows = HistoryStore().compare(args.run_a, args.run_b)
    except HistoryError as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "test": r.test,
                        "config": r.config,
                        "a_avg_ts": r.a.avg_ts,
                        "b_avg_ts": r.b.avg_ts,
                        "diff_percent": r.comparison.diff_percent,
                        "p_value": r.comparison.p_value,
                        "significant": r.comparison.significant,
                        "repetitions_a": len(r.a.samples_ns),
                        "repetitions_b": len(r.b.samples_ns),
                        "not_judged": r.comparison.refused,
                        "repetitions_needed": r.comparison.repetitions_needed,
                        "a_flags": list(assess(r.a).reasons),
                        "b_flags": list(assess(r.b).reasons),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return EXIT_OK
    a_head, b_head = (
        (f"run {args.run_a} t/s", f"run {args.run_b} t/s") if args.run_b is not None else ("A t/s", "B t/s")
    )
    print(
        f"| test | config (A → B) | {a_head} | {b_head} | change | Welch's t-test | flags |"
        if args.run_b is None
        else f"| test | config | {a_head} | {b_head} | change | Welch's t-test | flags |"
    )
    print("|---|---|---:|---:|---:|---|---|")
    for r in rows:
        # A noisy side makes any verdict weaker: say so beside it (app.bench.trust).
        flags = f"A: {assess(r.a).cell} · B: {assess(r.b).cell}"
        print(
            f"| {r.test} | {r.config} | {r.a.avg_ts:.2f} ± {r.a.stddev_ts:.2f} "
            f"| {r.b.avg_ts:.2f} ± {r.b.stddev_ts:.2f} "
            f"| {r.comparison.diff_percent:+.1f} % | {r.comparison.verdict()} | {flags} |"
        )
    return EXIT_OK
