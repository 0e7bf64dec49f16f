"""What keeping the KV cache between chat turns saves: prompt tokens evaluated and time to first token.

A three-turn chat on the demo model (a system prompt carrying a short document, then three
questions about it), greedy so every run produces the same replies. For turns 2 and 3 it measures:

  - reused: the engine's chat path (GenerationRequest.reuse_cache) with the cache holding the
    previous turn, so only the tokens after the longest common prefix are evaluated;
  - fresh:  the same request from an empty cache, evaluating the whole conversation.

Both run in this process on an EngineCore (what the engine host runs), so the figures are
llama.cpp's work plus the template rendering and tokenizing, without the pipe to the host. The
two are interleaved and their order alternates from one repetition to the next, so machine noise
hits them alike; each repetition first rebuilds the state the turn starts from. TTFT is from the
call to the first sampled token. The replies of the two must be identical (the cache is correct);
the table says so.

    .venv/bin/python benchmarks/chat_kv_reuse.py [--reps 5] [--threads 2] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.core import EngineCore  # noqa: E402
from app.engine.types import GenerationRequest, RunStats  # noqa: E402
from app.llama.chat import ChatTurn  # noqa: E402
from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.settings import LoadSettings, SamplingSettings  # noqa: E402

SYSTEM = (
    "You are a helpful assistant. Answer briefly, using the notes below.\n\nNotes:\n"
    "The llama is a domesticated South American camelid, widely used as a meat and pack animal by "
    "Andean cultures since the pre-Columbian era. Llamas are social animals and live with others as "
    "a herd. Their wool is soft and contains only a small amount of lanolin. Llamas can learn simple "
    "tasks after a few repetitions. When using a pack, they can carry about 25 to 30 percent of their "
    "body weight for 8 to 13 km. The name llama was adopted by European settlers from native "
    "Peruvians. The ancestors of llamas are thought to have originated from the Great Plains of "
    "North America about 40 million years ago, and subsequently migrated to South America about "
    "three million years ago during the Great American Interchange. By the end of the last ice age, "
    "camelids were extinct in North America. As of 2007, there were over seven million llamas and "
    "alpacas in South America, and due to importation from South America in the late 20th century, "
    "there are now over 158,000 llamas and 100,000 alpacas in the United States and Canada."
)
QUESTIONS = (
    "Where do llamas come from?",
    "How much can a llama carry?",
    "How many llamas live in the United States and Canada?",
)


def _request(
    n: int, history: tuple[ChatTurn, ...], sampling: SamplingSettings, reuse: bool
) -> GenerationRequest:
    return GenerationRequest(
        QUESTIONS[n - 1], sampling, chat=True, system_prompt=SYSTEM, history=history, reuse_cache=reuse
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48, help="max tokens per reply")
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()
    sampling = SamplingSettings(temperature=0.0, max_tokens=args.tokens)
    settings = LoadSettings(n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, seed=1)
    core = EngineCore(threading.Event())
    core.load(demo_model_path(), settings)

    # The conversation, once: greedy, so every later run of a turn gives these replies.
    history: tuple[ChatTurn, ...] = ()
    core.clear_kv_cache()
    for n in range(1, 4):
        reply = core.generate(_request(n, history, sampling, True)).text
        history += (ChatTurn("user", QUESTIONS[n - 1]), ChatTurn("assistant", reply))

    def before(n: int) -> tuple[ChatTurn, ...]:
        return history[: 2 * (n - 1)]

    def prepare(n: int) -> None:
        """Leave the cache holding turns 1 … n-1 exactly as the chat left it: replayed from an empty
        cache the same way, so every token is computed in the same batches as in the chat."""
        core.clear_kv_cache()
        for k in range(1, n):
            core.generate(_request(k, before(k), sampling, True))

    results: dict[tuple[int, str], list[RunStats]] = {(n, m): [] for n in (2, 3) for m in ("reused", "fresh")}
    for rep in range(args.reps):
        for n in (2, 3):
            order = ("reused", "fresh") if rep % 2 == 0 else ("fresh", "reused")
            for mode in order:
                if mode == "reused":
                    prepare(n)
                stats = core.generate(_request(n, before(n), sampling, mode == "reused"))
                results[(n, mode)].append(stats)
    core.close()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.1f} ({min(values) * 1000:.1f}–{max(values) * 1000:.1f})"

    def agreement(n: int, mode: str) -> str:
        """Whether the replies are the chat's own, or how many characters they share with it."""
        want = history[2 * n - 1].content
        texts = [s.text for s in results[(n, mode)]]
        if all(t == want for t in texts):
            return "identical"
        shared = min(_shared_prefix(t, want) for t in texts)
        return f"parts after {shared} of {len(want)} chars"

    print(
        f"demo model, n_ctx {args.ctx}, {args.threads} threads, {args.reps} interleaved repetitions, greedy"
    )
    print()
    print(
        "| turn | cache  | prompt tokens evaluated | reused | TTFT ms, median (min–max) | fresh ÷ reused "
        "| reply vs the chat's |"
    )
    print(
        "|------|--------|------------------------:|-------:|--------------------------:|---------------:"
        "|---------------------|"
    )
    for n in (2, 3):
        fresh_ttft = statistics.median(s.ttft_s or 0.0 for s in results[(n, "fresh")])
        for mode in ("reused", "fresh"):
            runs = results[(n, mode)]
            evaluated = {s.prompt_tokens for s in runs}
            reused = {s.prompt_tokens_reused or 0 for s in runs}
            ttfts = [s.ttft_s or 0.0 for s in runs]
            ratio = f"{fresh_ttft / statistics.median(ttfts):.2f}×" if mode == "reused" else ""
            print(
                f"| {n}    | {mode:<6} | {'/'.join(map(str, sorted(evaluated))):>23} | "
                f"{'/'.join(map(str, sorted(reused))):>6} | {ms(ttfts):>25} | {ratio:>14} | "
                f"{agreement(n, mode)} |"
            )
    print()
    print(
        "A reused turn must answer exactly as the chat did: the same tokens, computed the same way.\n"
        "A fresh context computes the earlier turns in one batch rather than a prompt batch plus one\n"
        "token at a time; llama.cpp's results differ in the last bits between batch shapes, so a long\n"
        "greedy reply may part from the chat's at a near tie."
    )
    same = all(s.text == history[2 * n - 1].content for n in (2, 3) for s in results[(n, "reused")])
    return 0 if same else 1


def _shared_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


if __name__ == "__main__":
    sys.exit(main())
