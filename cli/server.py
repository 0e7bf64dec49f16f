"""llama-server instances from the command line: `llamascope server-bench`, and `llamascope monitor`'s
`--server` and `--prometheus` (the local monitor itself is in cli/hardware.py).

    llamascope monitor --server http://127.0.0.1:8080 [--server URL2] [--api-key KEY]
    llamascope monitor --prometheus 127.0.0.1:9464 [--server URL]
    llamascope server-bench URL --concurrency 1,2,4,8 --requests 16 --prompt-tokens 128 --gen-tokens 64

Server benchmarks are stored in the run history beside local runs: `llamascope history` lists them,
`history --run ID` shows one, `compare A B` compares two of them level by level.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app.common.formatting import NOT_AVAILABLE, fmt

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
OUTPUTS = ("md", "csv", "json", "jsonl")


def _error(message: str, code: int = EXIT_ERROR) -> int:
    print(f"llamascope: {message}", file=sys.stderr)
    return code


# ---- monitor --server / --prometheus -------------------------------------------------------------


def add_monitor_arguments(p_mon: argparse.ArgumentParser) -> None:
    """`monitor`'s options for llama-server instances and the Prometheus endpoint."""
    p_mon.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="watch a llama-server (http://HOST:PORT); repeat for several. Read at most once a second",
    )
    p_mon.add_argument("--api-key", default=None, help="the servers' API key (llama-server --api-key)")
    p_mon.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for a server's answer (default 5)"
    )
    p_mon.add_argument(
        "--prometheus",
        default=None,
        metavar="[HOST:]PORT",
        help="serve the readings to Prometheus at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)",
    )


def wants_server_monitor(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "server", None) or getattr(args, "prometheus", None))


def server_line(s: Any) -> str:
    """One text line for a ServerSnapshot."""
    stamp = time.strftime("%H:%M:%S", time.localtime(s.t_unix_s))
    if s.error is not None:
        return f"{stamp}  {s.url}  {s.status.value}: {s.error}"
    if s.status.value != "ok":
        return f"{stamp}  {s.url}  {s.status.value}"
    busy = s.busy_slots
    slots = (
        f"slots {NOT_AVAILABLE}"
        if busy is None
        else f"slots {busy}/{fmt(s.total_slots) if s.total_slots is not None else len(s.slots)} busy"
    )
    progress = " ".join(
        f"[{slot.id}: {fmt(slot.n_decoded_tokens)} tok, ctx {fmt(slot.context_used_ratio, '.0%')}]"
        for slot in s.slots
        if slot.is_processing
    )
    kv = fmt(s.kv_cache_tokens, ".0f") if s.kv_cache_usage_ratio is None else f"{s.kv_cache_usage_ratio:.0%}"
    return (
        f"{stamp}  {s.url}  ok  {s.model or NOT_AVAILABLE}  {slots}  "
        f"requests {fmt(s.requests_processing, '.0f')} processing "
        f"{fmt(s.requests_deferred, '.0f')} deferred  "
        f"prompt {fmt(s.prompt_tokens_per_s, '.1f', ' t/s')}  gen {fmt(s.gen_tokens_per_s, '.1f', ' t/s')}  "
        f"KV {kv}" + (f"  {progress}" if progress else "")
    )


def cmd_monitor(args: argparse.Namespace, local_line: Callable[[Any], str], csv_writer_type: Any) -> int:
    """`monitor` with --server and/or --prometheus: server lines (or the local lines without --server),
    and the Prometheus endpoint fed by the sampler and the pollers."""
    from app.server.client import ServerError
    from app.server.exporter import ExporterError, PrometheusExporter, parse_listen_address
    from app.server.poller import MIN_INTERVAL_S, ServerPoller, ServerTarget
    from app.telemetry.sampler import MAX_INTERVAL_S, Sampler
    from app.telemetry.sampler import MIN_INTERVAL_S as SAMPLER_MIN_S

    if not SAMPLER_MIN_S <= args.interval <= MAX_INTERVAL_S:  # False for NaN too
        return _error(f"--interval must be between {SAMPLER_MIN_S:g} and {MAX_INTERVAL_S:g} s", EXIT_USAGE)
    if args.seconds is not None and not 0 < args.seconds < float("inf"):
        return _error("--seconds must be a positive number", EXIT_USAGE)
    if not 0 < args.timeout <= 600:
        return _error("--timeout must be between 0 and 600 s", EXIT_USAGE)
    if args.server and args.csv:
        return _error("--csv writes the local readings only: leave it out with --server", EXIT_USAGE)
    try:
        listen = parse_listen_address(args.prometheus) if args.prometheus else None
        poller = ServerPoller(max(MIN_INTERVAL_S, args.interval), timeout_s=args.timeout)
        targets = [ServerTarget(url, args.api_key) for url in args.server]
        for target in targets:
            target.client()  # a bad URL is a usage error before anything starts
    except (ExporterError, ServerError) as exc:
        return _error(str(exc), EXIT_USAGE)

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    exporter = PrometheusExporter() if listen is not None else None
    sampler = Sampler(interval_s=args.interval)
    if exporter is not None:
        sampler.add_listener(exporter.update_telemetry)
        poller.add_listener(exporter.update_server)
    if not args.server:
        sampler.add_listener(lambda snapshot: events.put(("local", snapshot)))
    poller.add_listener(lambda snapshot: events.put(("server", snapshot)))
    if exporter is not None and listen is not None:
        try:
            url = exporter.start(*listen)
        except ExporterError as exc:
            return _error(str(exc))
        print(f"serving Prometheus metrics at {url}", file=sys.stderr, flush=True)
    csv_writer = csv_writer_type(sys.stdout) if args.csv else None
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    notes: dict[str, tuple[str, ...]] = {}
    sampler.start()
    try:
        for target in targets:
            poller.add(target)
        while deadline is None or time.monotonic() < deadline:
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                kind, snapshot = events.get(timeout=timeout)
            except queue.Empty:
                continue
            if kind == "server":
                if notes.get(snapshot.url) != snapshot.notes:  # a note once, not every second
                    notes[snapshot.url] = snapshot.notes
                    for note in snapshot.notes:
                        print(f"note: {note}", file=sys.stderr, flush=True)
                print(server_line(snapshot), flush=True)
            elif csv_writer is not None:
                csv_writer.write(snapshot)
            else:
                print(local_line(snapshot), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a user ends monitoring
    except BrokenPipeError:  # `llamascope monitor --server URL | head`
        pass
    finally:
        poller.stop()
        sampler.stop()
        if exporter is not None:
            exporter.stop()
    return EXIT_OK


# ---- server-bench ---------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "server-bench",
        help="benchmark a llama-server under load: TTFT percentiles, inter-token latency, t/s per "
        "concurrency level, and where the throughput stops rising",
        description="Sends streaming requests through the server's OpenAI-compatible API, C at a time, "
        "for each concurrency level C. Each prompt starts with its own nonce, so the server's prompt "
        "cache cannot serve one request from another. Results go into the run history.",
    )
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--concurrency", "-c", default="1,2,4,8", help="levels, comma-separated (default 1,2,4,8)")
    p.add_argument("--requests", "-n", type=int, default=16, help="requests per level (default 16)")
    p.add_argument(
        "--prompt-tokens", "-p", type=int, default=128, help="prompt tokens per request (default 128)"
    )
    p.add_argument(
        "--gen-tokens", "-g", type=int, default=64, help="tokens to generate per request (default 64)"
    )
    p.add_argument("--api-key", default=None, help="the server's API key (llama-server --api-key)")
    p.add_argument(
        "--api",
        choices=("completions", "chat"),
        default="completions",
        help="/v1/completions (default; exact prompt sizes) or /v1/chat/completions",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each answer or token (default 120)"
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request")
    p.add_argument("-o", "--output", choices=OUTPUTS, default="md", help="table format (default md)")
    p.add_argument("--no-history", action="store_true", help="do not store the results")
    p.set_defaults(func=_cmd_server_bench)


def _cmd_server_bench(args: argparse.Namespace) -> int:
    from app.bench.history import HistoryError, HistoryStore
    from app.server.bench import ServerBenchError, ServerBenchPlan, parse_concurrency, run_server_bench
    from app.server.client import ServerClient, ServerError
    from app.server.record import ServerRunRecorder, dumps, level_summary

    try:
        plan = ServerBenchPlan(
            concurrency=parse_concurrency(args.concurrency),
            requests=args.requests,
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            api=args.api,
            timeout_s=args.timeout,
            warmup=not args.no_warmup,
        )
        client = ServerClient(args.url, args.api_key, timeout_s=min(args.timeout, 30.0))
    except (ServerBenchError, ServerError) as exc:
        return _error(str(exc), EXIT_USAGE)

    store: HistoryStore | None = None
    recorder: ServerRunRecorder | None = None
    cancel = threading.Event()
    levels: list[Any] = []
    props: dict[str, Any] = {}
    stream = args.output == "jsonl"
    lock = threading.Lock()

    def on_progress(done: int, total: int, what: str) -> None:
        with lock:
            print(f"\r{done}/{total} requests  {what:<24}", end="", file=sys.stderr, flush=True)

    def on_level(level: Any) -> None:
        nonlocal recorder
        levels.append(level)
        if store is not None:
            # The run starts with its first finished level: a server that cannot be benchmarked
            # at all leaves no empty run behind.
            if recorder is None:
                recorder = ServerRunRecorder(store, client.url, plan, props)
            recorder.add_level(level)
        if stream:
            sys.stdout.write(dumps([level_summary(level, plan)], "jsonl"))
            sys.stdout.flush()

    result = None
    try:
        if not args.no_history:
            try:
                store = HistoryStore()
            except HistoryError as exc:
                return _error(f"{exc} (--no-history runs without it)")
        answer = client.get_json("/props")  # the configuration the results are stored with
        props.update(answer if isinstance(answer, dict) else {})
        result = run_server_bench(client, plan, cancel=cancel, on_level=on_level, on_progress=on_progress)
    except ServerError as exc:
        print(file=sys.stderr)
        if recorder is not None:
            recorder.finish(None)
        return _error(f"server benchmark failed: {exc}")
    except HistoryError as exc:
        print(file=sys.stderr)
        return _error(str(exc))
    except KeyboardInterrupt:
        cancel.set()
        print("\nllamascope: cancelled; the finished levels are kept", file=sys.stderr)
    print(file=sys.stderr)
    if recorder is not None:
        recorder.finish(result)
    rows = [level_summary(level, plan) for level in levels]
    if not stream:
        sys.stdout.write(dumps(rows, args.output))
    if args.output == "md":
        for row in rows:
            print(f"c={row['concurrency']}: {row['verdict']} — {row['verdict_detail']}")
    if result is not None and not result.prompt_exact:
        print(
            "note: the server cannot tokenize (/tokenize), so prompts are text of about "
            f"{plan.prompt_tokens} tokens; the server's own counts are in the JSON output",
            file=sys.stderr,
        )
    if recorder is not None:
        print(f"stored as run {recorder.run_id}", file=sys.stderr)
    if result is not None and result.stopped:
        n = len(levels)
        kept = (
            "no level had finished"
            if not n
            else "the finished level is kept"
            if n == 1
            else f"the {n} finished levels are kept"
        )
        return _error(f"{result.stopped}; {kept}")
    return EXIT_CANCELLED if result is None or result.cancelled else EXIT_OK


# ---- history and compare of server runs -----------------------------------------------------------


def show_server_run(run_id: int, as_json: bool) -> int | None:
    """`history --run ID` for a server benchmark; None when the run is not one (the caller shows it)."""
    from app.bench.history import HistoryError, HistoryStore
    from app.server.record import RUN_KIND, dumps, stored_levels

    try:
        store = HistoryStore()
        run = next((r for r in store.runs(kind=RUN_KIND) if r.id == run_id), None)
        if run is None:
            return None
        _, levels = stored_levels(store, run_id)
    except HistoryError as exc:
        return _error(str(exc))
    rows = [level.summary() for level in levels]
    if as_json:
        settings = run.settings
        print(
            json.dumps(
                {
                    "run": run_id,
                    "server_url": settings.get("server_url"),
                    "plan": settings.get("plan"),
                    "status": run.status,
                    "levels": rows,
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"server benchmark {run_id} of {run.model_path} ({run.status}, {run.created_at})")
    sys.stdout.write(dumps(rows, "md"))
    return EXIT_OK


def compare_server_runs(run_a: int, run_b: int | None, as_json: bool) -> int | None:
    """`compare A B` when either run is a server benchmark; None when neither is."""
    from app.bench.history import HistoryError, HistoryStore
    from app.server.record import RUN_KIND, compare_runs

    try:
        store = HistoryStore()
        server_ids = {r.id for r in store.runs(kind=RUN_KIND)}
        if run_a not in server_ids and run_b not in server_ids:
            return None
        if run_b is None:
            return _error(
                f"run {run_a} is a server benchmark: give a second server benchmark to compare it with"
            )
        if run_a not in server_ids or run_b not in server_ids:
            local = run_b if run_a in server_ids else run_a
            return _error(
                f"run {local} is not a server benchmark: server benchmarks compare with server benchmarks"
            )
        rows = compare_runs(store, run_a, run_b)
    except HistoryError as exc:
        return _error(str(exc))
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "concurrency": r.concurrency,
                        "test": r.test,
                        "a_request_tokens_per_s": r.comparison.mean_a,
                        "b_request_tokens_per_s": r.comparison.mean_b,
                        "diff_percent": r.comparison.diff_percent,
                        "p_value": r.comparison.p_value,
                        "significant": r.comparison.significant,
                        "a_aggregate_tokens_per_s": r.a["aggregate_tokens_per_s"],
                        "b_aggregate_tokens_per_s": r.b["aggregate_tokens_per_s"],
                        "a_ttft_p95_s": r.a["ttft_p95_s"],
                        "b_ttft_p95_s": r.b["ttft_p95_s"],
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return EXIT_OK
    print(
        f"| concurrency | test | run {run_a} t/s per request | run {run_b} t/s per request | change | "
        f"Welch's t-test | aggregate t/s | TTFT p95 ms |"
    )
    print("|---:|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        ttft = f"{fmt(_ms(r.a['ttft_p95_s']), '.1f')} → {fmt(_ms(r.b['ttft_p95_s']), '.1f')}"
        aggregate = (
            f"{fmt(r.a['aggregate_tokens_per_s'], '.2f')} → {fmt(r.b['aggregate_tokens_per_s'], '.2f')}"
        )
        print(
            f"| {r.concurrency} | {r.test} | {r.comparison.mean_a:.2f} | {r.comparison.mean_b:.2f} | "
            f"{r.comparison.diff_percent:+.1f} % | {r.comparison.verdict()} | {aggregate} | {ttft} |"
        )
    return EXIT_OK


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
