"""LlamaScope's pg figures against llama.cpp's own llama-batched-bench, same shape, same threads.

llama-batched-bench (built by `make llama-tools` from the llama.cpp that llama-cpp-python
vendors) runs `-npp PP -ntg TG -npl 1` with the context, batch, micro-batch, threads and flash
attention given here; LlamaScope runs the pg test `PP,TG` with the same settings through
app.bench.runner (in this process, as the engine host would) and app.bench.batched turns each
repetition into batched-bench's T_PP, S_PP, T_TG, S_TG, T and S. The two alternate, round by
round, first one then the other, so that what else runs on the machine hits both alike; each
round is `--reps` measurements of each (batched-bench measures one shape once per listed size,
so the size is listed `--reps` times). The table shows, per figure, the median over rounds of
each tool's round mean and the median of the per-round ratio LlamaScope / batched-bench.

    .venv/bin/python benchmarks/batched_bench_agreement.py [--pp 128] [--tg 32] [--rounds 5] [--threads 2]

Measured on the 2-vCPU VM in a quiet minute (load average 1.7; --rounds 8 --reps 1 --threads 2):
S_PP 303.9 (batched-bench) and 308.7 t/s (LlamaScope), S_TG 107.9 and 112.2, S 222.9 and 231.6;
paired ratios 1.04 [0.93, 1.10], 1.08 [0.93, 1.16] and 1.06 [0.93, 1.12], inside the ±10 % that
rounds differ by. With the machine loaded (load average 4 to 8 from other work) single rounds
differ up to tenfold, and only the medians over many rounds mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.bench.batched import pg_figures  # noqa: E402
from app.bench.runner import BenchPlan, BenchTest, run_benchmark  # noqa: E402
from app.llama.tools import find_tool  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings  # noqa: E402

FIGURES = ("t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")
HEADERS = {
    "t_pp": "T_PP s (TTFT)",
    "speed_pp": "S_PP t/s",
    "t_tg": "T_TG s",
    "speed_tg": "S_TG t/s",
    "t": "T s",
    "speed": "S t/s",
}


def batched_bench(tool: str, model: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """One llama-batched-bench process: its JSONL rows for `reps` copies of the shape."""
    sizes = ",".join([str(args.pp)] * args.reps)
    command = [
        tool,
        "-m",
        model,
        "-c",
        str(args.pp + args.tg),
        "-b",
        str(args.batch),
        "-ub",
        str(args.ubatch),
        "-npp",
        sizes,
        "-ntg",
        str(args.tg),
        "-npl",
        "1",
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
        "-fa",
        "off",
        "--output-format",
        "jsonl",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = [
        json.loads(line)
        for line in (done.stdout + done.stderr).splitlines()
        if line.startswith('{"n_kv_max"')
    ]
    if len(rows) != args.reps:
        raise RuntimeError(f"llama-batched-bench printed {len(rows)} rows, expected {args.reps}")
    return [{k: float(row[k]) for k in FIGURES} for row in rows]


def llamascope(model: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """The pg test through LlamaScope's runner: each repetition as batched-bench's row."""
    load = LoadSettings(
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=args.batch,
        n_ubatch=args.ubatch,
        flash_attn=False,
    )
    plan = BenchPlan(
        models=(model,), tests=(BenchTest(n_prompt=args.pp, n_gen=args.tg),), base=load, repetitions=args.reps
    )
    (result,) = run_benchmark(plan)
    rows = []
    for total, prompt in zip(result.samples_ns, result.samples_pp_ns, strict=True):
        one = pg_figures(result.n_prompt, result.n_gen, result.n_depth, (total,), (prompt,))
        rows.append(
            {
                "t_pp": one.t_pp_s.mean,
                "speed_pp": one.s_pp_ts.mean,
                "t_tg": one.t_tg_s.mean,
                "speed_tg": one.s_tg_ts.mean,
                "t": one.t_s.mean,
                "speed": one.s_ts.mean,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, default=128)
    parser.add_argument("--tg", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ubatch", type=int, default=512)
    args = parser.parse_args()
    model = demo_model_path()
    tool = find_tool("llama-batched-bench")
    if model is None or tool is None:
        print("needs the demo model and llama-batched-bench (make llama-tools)", file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]
    per_round: dict[str, list[dict[str, float]]] = {"bb": [], "ls": []}
    for i in range(args.rounds):
        order = ("bb", "ls") if i % 2 == 0 else ("ls", "bb")
        for who in order:
            rows = batched_bench(str(tool), model, args) if who == "bb" else llamascope(model, args)
            per_round[who].append({k: statistics.mean(r[k] for r in rows) for k in FIGURES})
        bb, ls = per_round["bb"][-1], per_round["ls"][-1]
        print(
            f"round {i + 1}: batched-bench S_PP {bb['speed_pp']:.1f} S_TG {bb['speed_tg']:.1f} · "
            f"LlamaScope S_PP {ls['speed_pp']:.1f} S_TG {ls['speed_tg']:.1f}",
            file=sys.stderr,
        )
    print(
        f"pg {args.pp},{args.tg}, {args.threads} threads, n_batch {args.batch}, n_ubatch {args.ubatch}, "
        f"flash attention off; {args.rounds} interleaved rounds of {args.reps} measurement(s) each; "
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} logical CPUs)\n"
    )
    print(
        "| figure | llama-batched-bench (median) | LlamaScope (median) | ratio of medians "
        "| paired ratio: median [quartiles] |"
    )
    print("|---|---:|---:|---:|---|")
    for k in FIGURES:
        bb_values = [r[k] for r in per_round["bb"]]
        ls_values = [r[k] for r in per_round["ls"]]
        ratios = [ls / bb for ls, bb in zip(ls_values, bb_values, strict=True)]
        q1, _q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        bb_median, ls_median = statistics.median(bb_values), statistics.median(ls_values)
        print(
            f"| {HEADERS[k]} | {bb_median:.3f} | {ls_median:.3f} | {ls_median / bb_median:.3f} "
            f"| {statistics.median(ratios):.3f} [{q1:.2f}, {q3:.2f}] |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
