"""Do the trust flags tell a benchmark on a quiet machine from one under a competing CPU load?

Runs the same `llamascope bench` (the real command: engine host, telemetry, the trust figures)
again and again, alternating between two conditions:

- **quiet**: nothing of ours runs beside it;
- **loaded**: a busy loop (`while True: pass`) runs in a child process of this script, pinned to
  one core where the system allows it (os.sched_setaffinity), from before the bench starts until
  it ends.

The busy loop is not in the bench command's process tree (it is the command's sibling), so
LlamaScope counts it as other load; the table shows the CPUs' worth it used over each loaded
command, beside the other load LlamaScope measured (which also holds whatever else the machine
ran: on a shared machine a "quiet" run is not quiet, and the flags say so). Rounds alternate the
order (quiet first, then loaded first) so that a drift of the machine hits both. The table shows
each result's t/s, CV, steal, other load and flags; the summary counts how often each condition
was flagged for other load, pairs the other load of the two conditions by round, and says
whether the flags told the two apart (every loaded row flagged, fewer quiet ones).

    .venv/bin/python benchmarks/bench_noise.py [--rounds 3] [-p 512] [-n 64] [-r 3] [--model M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.trust import OTHER_LOAD_LIMIT_PERCENT  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402


def busy_loop() -> subprocess.Popen[bytes]:
    """A child spinning on one core (core 0 when affinity can be set), until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(child.pid, {0})
        except OSError:
            pass  # not allowed here: it spins on whichever core the scheduler gives it
    return child


def bench(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One `llamascope bench` run; its JSON records."""
    command = [sys.executable, "-m", "cli", "bench", model, "-p", str(args.p), "-n", str(args.n)]
    command += ["-r", str(args.r), "-o", "json", "--no-history"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"llamascope bench failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    records: list[dict[str, Any]] = json.loads(out.stdout)
    return records


def run_condition(
    model: str, loaded: bool, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], float | None]:
    """The bench's records, and the CPUs' worth the busy loop used over the whole command (None when quiet):
    what the loaded condition added, beside whatever else the machine ran."""
    child = busy_loop() if loaded else None
    started = time.monotonic()
    try:
        records = bench(model, args)
        if child is None:
            return records, None
        times = psutil.Process(child.pid).cpu_times()
        return records, (times.user + times.system) / (time.monotonic() - started)
    finally:
        if child is not None:
            child.kill()
            child.wait()


def pct(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else f"{value:{spec}} %"


def loop_text(cpus: float | None) -> str:
    return "—" if cpus is None else f"{cpus:.2f} CPUs"


def test_name(r: dict[str, Any]) -> str:
    return "+".join(
        part
        for part in (f"pp{r['n_prompt']}" if r["n_prompt"] else "", f"tg{r['n_gen']}" if r["n_gen"] else "")
        if part
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (quiet + loaded)")
    parser.add_argument("-p", type=int, default=512, help="prompt size (default 512)")
    parser.add_argument("-n", type=int, default=64, help="generation size (default 64)")
    parser.add_argument("-r", type=int, default=3, help="repetitions per test (default 3)")
    parser.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    args = parser.parse_args()
    model = args.model or demo_model_path()
    if not model:
        print("no model given and the demo model package is not installed", file=sys.stderr)
        return 1

    rows: list[tuple[int, str, dict[str, Any]]] = []
    busy: dict[int, float | None] = {}
    for round_ in range(1, args.rounds + 1):
        order = (False, True) if round_ % 2 else (True, False)  # alternate which goes first
        for loaded in order:
            condition = "loaded" if loaded else "quiet"
            print(f"round {round_}: {condition} …", file=sys.stderr, flush=True)
            records, busy_cpus = run_condition(model, loaded, args)
            if loaded:
                busy[round_] = busy_cpus
            for record in records:
                rows.append((round_, condition, record))

    print(
        f"\nllamascope bench -p {args.p} -n {args.n} -r {args.r} on {os.path.basename(model)}, "
        f"{os.cpu_count()} CPUs; loaded = a busy loop on one core in a child process\n"
    )
    print("| round | condition | busy loop | test | t/s | CV | steal | other load | flags |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---|")
    for round_, condition, r in rows:
        flags = "⚠ " + r["noise_reasons"] if r["noisy"] else "ok"
        print(
            f"| {round_} | {condition} | {loop_text(busy.get(round_) if condition == 'loaded' else None)} "
            f"| {test_name(r)} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} "
            f"| {pct(r['cv_percent'])} | {pct(r['steal_percent'])} | {pct(r['other_cpu_percent'], '.0f')} "
            f"| {flags} |"
        )

    print(
        "\n| condition | rows | flagged noisy | flagged for other load | other load (median) | t/s (median) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    summary: dict[str, tuple[int, int]] = {}
    for condition in ("quiet", "loaded"):
        mine = [r for _, c, r in rows if c == condition]
        other = [r["other_cpu_percent"] for r in mine if r["other_cpu_percent"] is not None]
        flagged_other = sum(1 for r in mine if "other processes used" in r["noise_reasons"])
        noisy = sum(1 for r in mine if r["noisy"])
        speeds = ", ".join(
            f"{name} {statistics.median(r['avg_ts'] for r in mine if test_name(r) == name):.1f}"
            for name in dict.fromkeys(test_name(r) for r in mine)
        )
        summary[condition] = (flagged_other, len(mine))
        median_other = pct(statistics.median(other), ".0f") if other else "n/a"
        print(f"| {condition} | {len(mine)} | {noisy} | {flagged_other} | {median_other} | {speeds} |")
    # Paired by round and test: how much more other load the busy loop added than the machine had anyway.
    deltas = []
    for round_ in range(1, args.rounds + 1):
        for quiet in (r for n, c, r in rows if n == round_ and c == "quiet"):
            partner = next(
                (r for n, c, r in rows if n == round_ and c == "loaded" and test_name(r) == test_name(quiet)),
                None,
            )
            if (
                partner
                and quiet["other_cpu_percent"] is not None
                and partner["other_cpu_percent"] is not None
            ):
                deltas.append(f"{partner['other_cpu_percent'] - quiet['other_cpu_percent']:+.0f}")
    print(
        f"\nOther load, loaded minus quiet, paired by round and test (points): {', '.join(deltas) or 'n/a'}"
    )
    loaded_flagged, loaded_rows = summary["loaded"]
    quiet_flagged, quiet_rows = summary["quiet"]
    apart = loaded_flagged == loaded_rows and quiet_flagged < loaded_flagged
    print(
        f"\nOther load over {OTHER_LOAD_LIMIT_PERCENT:g} % flagged {loaded_flagged}/{loaded_rows} loaded "
        f"rows and {quiet_flagged}/{quiet_rows} quiet rows: the flags "
        + ("told the two apart." if apart else "did NOT tell the two apart.")
    )
    return 0 if apart else 1


if __name__ == "__main__":
    sys.exit(main())
