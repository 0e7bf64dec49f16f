"""Same command, same test: `llamascope bench -p 512 -n 128` against `llama-bench -p 512 -n 128`.

Both with their own defaults, nothing else given: llama-bench's are -b 2048 -ub 512 -fa auto,
5 repetitions, threads = its count of math cores; LlamaScope's are now the same (threads = the
physical cores). Rounds are paired and interleaved (ABBA: llama-bench first in odd rounds,
LlamaScope first in even ones) so that a drift of a shared machine hits both. Each round gives
the ratio LlamaScope / llama-bench of mean t/s for pp512 and tg128; the table shows every round,
the settings each tool recorded, and the median ratio. Target: a median ratio near 1.

llama-bench is the one built from the same llama.cpp sources as the installed library
(`python -m app.llama.tools build`).

    .venv/bin/python benchmarks/bench_vs_llama_bench.py [--rounds 5] [--model M] [-t N]

The table ends with the other load LlamaScope measured beside each of its results: on a shared
machine that load, not the tools, can decide a round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.llama.tools import find_tool  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402

SETTINGS = ("n_batch", "n_ubatch", "flash_attn", "n_threads", "type_k", "n_gpu_layers")


def run_json(command: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    records: list[dict[str, Any]] = json.loads(out.stdout)
    return records


def other_load(results: dict[str, dict[str, Any]]) -> str:
    """The other processes' load LlamaScope measured beside its own pp and tg results."""
    cells = []
    for test in ("pp", "tg"):
        value = results[test].get("other_cpu_percent")
        cells.append("n/a" if value is None else f"{value:.0f} %")
    return ", ".join(cells)


def by_test(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {("pp" if r["n_prompt"] else "tg"): r for r in records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    parser.add_argument(
        "-t", "--threads", type=int, default=None, help="pass -t N to both (default: each tool's own default)"
    )
    args = parser.parse_args()
    model = args.model or demo_model_path()
    if not model:
        print("no model given and the demo model package is not installed", file=sys.stderr)
        return 1
    found = find_tool("llama-bench")
    if found is None:
        print("llama-bench is not built: run `python -m app.llama.tools build`", file=sys.stderr)
        return 1
    llama_bench = str(found)
    commands = {
        "llama-bench": [llama_bench, "-m", model, "-p", "512", "-n", "128", "-o", "json"],
        "llamascope": [sys.executable, "-m", "cli", "bench", model, "-p", "512", "-n", "128", "-o", "json"]
        + ["--no-history"],
    }
    if args.threads is not None:
        for command in commands.values():
            command += ["-t", str(args.threads)]
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    for i in range(1, args.rounds + 1):
        order = ("llama-bench", "llamascope") if i % 2 else ("llamascope", "llama-bench")
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for tool in order:
            print(f"round {i}: {tool} …", file=sys.stderr, flush=True)
            results[tool] = by_test(run_json(commands[tool]))
        rounds.append(results)

    first = rounds[0]
    print("\nSettings each tool recorded (its JSON):\n")
    print("| tool | " + " | ".join(SETTINGS) + " | repetitions |")
    print("|---|" + "---:|" * (len(SETTINGS) + 1))
    for tool in ("llama-bench", "llamascope"):
        r = first[tool]["pp"]
        print(f"| {tool} | " + " | ".join(str(r[s]) for s in SETTINGS) + f" | {len(r['samples_ns'])} |")

    print(
        "\n| round | first | pp512 llama-bench | pp512 llamascope | ratio | tg128 llama-bench | "
        "tg128 llamascope | ratio | other load (pp, tg) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    for i, results in enumerate(rounds, 1):
        cells = []
        for test in ("pp", "tg"):
            lb, ls = results["llama-bench"][test], results["llamascope"][test]
            ratio = ls["avg_ts"] / lb["avg_ts"]
            ratios[test].append(ratio)
            cells += [
                f"{lb['avg_ts']:.1f} ± {lb['stddev_ts']:.1f}",
                f"{ls['avg_ts']:.1f} ± {ls['stddev_ts']:.1f}",
                f"{ratio:.3f}",
            ]
        print(
            f"| {i} | {next(iter(results))} | "
            + " | ".join(cells)
            + f" | {other_load(results['llamascope'])} |"
        )
    print(
        f"\nmedian ratio LlamaScope / llama-bench over {len(rounds)} paired rounds: "
        f"pp512 {statistics.median(ratios['pp']):.3f}, tg128 {statistics.median(ratios['tg']):.3f}"
    )
    flagged = [
        f"round {i} {test}: {r['noise_reasons']}"
        for i, results in enumerate(rounds, 1)
        for test, r in results["llamascope"].items()
        if r.get("noisy")
    ]
    if flagged:
        print(
            "\nLlamaScope flagged these of its own results as noisy:\n" + "\n".join(f"- {f}" for f in flagged)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
