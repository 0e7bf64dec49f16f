"""This machine's memory bandwidth as LlamaScope measures it for the roofline, on 1 thread and on all.

Runs `app.telemetry.bandwidth.measure_bandwidth` (the STREAM triad, a = b + s·c, in numpy's native
loops, 24 bytes counted per element) `--runs` times, and for comparison the measurement LlamaScope
used before: one thread copying 256 MiB with numpy (16 bytes counted per element: 1 read + 1 write).
Prints a markdown table of the best and the median of the runs. Nothing is cached.

    .venv/bin/python benchmarks/memory_bandwidth.py [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.common.markdown import markdown_table  # noqa: E402
from app.telemetry.bandwidth import MIB, measure_bandwidth, usable_cpus  # noqa: E402


def numpy_copy_bytes_per_s(size_bytes: int = 256 * MIB, repetitions: int = 5) -> float:
    """The old single-thread figure: np.copyto of `size_bytes`, best of `repetitions`."""
    src = np.ones(size_bytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # page faults are not bandwidth
    best = float("inf")
    for _ in range(repetitions):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements to take (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the all-cores figure")
    args = parser.parse_args()
    if args.runs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--runs and --threads must be at least 1")
    runs = [measure_bandwidth(threads=args.threads) for _ in range(args.runs)]
    copies = [numpy_copy_bytes_per_s() for _ in range(args.runs)]
    first = runs[0]

    def row(what: str, values: list[float]) -> list[str]:
        gb = [v / 1e9 for v in values]
        return [what, f"{max(gb):.1f}", f"{statistics.median(gb):.1f}"]

    llc = first.last_level_cache_bytes
    print(
        f"CPUs usable by this process: {usable_cpus()}; triad arrays {first.array_bytes // MIB} MiB each; "
        f"last-level caches {'n/a' if llc is None else f'{llc // MIB} MiB'}; "
        f"{args.runs} runs, each the best of {first.repetitions} passes\n"
    )
    print(
        markdown_table(
            ["measurement", "best GB/s", "median GB/s"],
            [
                row("triad, 1 thread", [r.single_thread_bytes_per_s for r in runs]),
                row(f"triad, {first.threads} threads (the roofline's figure)", [r.bytes_per_s for r in runs]),
                row("numpy copy 256 MiB, 1 thread (before)", copies),
            ],
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
