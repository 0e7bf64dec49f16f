"""app.llama.driver against the real demo model: llama.cpp's C API, without llama_cpp.Llama."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.llama.driver import DriverCancelled, DriverError, LlamaContext, LlamaModel, SamplerChain
from app.llama.text import StopMatcher, TextStream, apply_chat_template
from app.model.settings import SamplingSettings

PROMPT = "Once upon a time"
REPETITIVE = "one, one, one, one, one, one, one, one,"
FOX = "the quick brown fox jumps over the lazy dog "
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
SAMPLED = SamplingSettings(temperature=1.0, repeat_penalty=1.0)
N_TOKENS = 24

# Token ids the llama-cpp-python `Llama`-based Engine generated (64 tokens, temperature 0, n_ctx 512,
# 2 threads) before the driver replaced it; recorded with that Engine's on_token events. The same
# recording, with text and statistics, is GREEDY_REFERENCE in test_engine.py.
OLD_ENGINE_GREEDY = {
    ("The capital of France is", 1.1): [
        7042,
        30,
        198,
        29,
        378,
        1797,
        1918,
        553,
        253,
        2155,
        282,
        4723,
        216,
        35,
        34,
        33,
        2215,
        701,
        28,
        351,
        690,
        216,
        37,
        32,
        21,
        2242,
        281,
        4343,
        1721,
        30,
        198,
        29,
        378,
        1797,
        8378,
        553,
        253,
        2155,
        282,
        1130,
        216,
        38,
        39,
        36,
        2215,
        701,
        28,
        979,
        260,
        3284,
        4353,
        365,
        25953,
        25,
        553,
        253,
        2155,
        282,
        563,
        216,
        40,
        41,
        33,
        2215,
    ],
    ("def fibonacci(n):", 1.0): [
        472,
        585,
        304,
        1758,
        216,
        32,
        42,
        448,
        1003,
        216,
        33,
        472,
        1003,
        2822,
        24,
        38572,
        46477,
        24,
        94,
        731,
        216,
        33,
        25,
        1232,
        3987,
        46477,
        24,
        94,
        731,
        216,
        34,
        643,
        304,
        25,
        198,
        198,
        19,
        4246,
        260,
        1517,
        198,
        3272,
        24,
        38572,
        46477,
        24,
        33,
        32,
        1292,
        216,
        907,
        21367,
        42,
        216,
        35,
        35,
        198,
        3272,
        24,
        38572,
        46477,
        24,
        34,
        1292,
    ],
}


@pytest.fixture(scope="module")
def model(demo_model: str) -> Iterator[LlamaModel]:
    m = LlamaModel(demo_model)
    yield m
    m.close()


@pytest.fixture(scope="module")
def ctx(model: LlamaModel) -> Iterator[LlamaContext]:
    # A batch smaller than most prompts here, so decode() has to chunk them.
    c = LlamaContext(model, n_ctx=256, n_batch=64, n_ubatch=64, n_threads=2, n_threads_batch=2)
    yield c
    c.close()


def generate(
    model: LlamaModel,
    ctx: LlamaContext,
    sampling: SamplingSettings,
    seed: int = 1,
    *,
    prompt: str = PROMPT,
    n: int = N_TOKENS,
    typical_p: float | None = None,
) -> list[int]:
    """The engine's loop in miniature: fresh cache, prompt, then sample and decode token by token."""
    ctx.clear(data=False)
    ctx.decode(model.tokenize(prompt, add_special=True, parse_special=False))
    out: list[int] = []
    with SamplerChain(model, sampling, seed, typical_p=typical_p) as chain:
        while len(out) < n:
            token = chain.sample(ctx)
            out.append(token)
            if model.is_eog(token):
                break
            ctx.decode_one(token)
    return out


# ---- sampling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prompt", "repeat_penalty"), list(OLD_ENGINE_GREEDY))
def test_greedy_decoding_gives_the_old_engines_tokens(
    model: LlamaModel, ctx: LlamaContext, prompt: str, repeat_penalty: float
) -> None:
    sampling = dataclasses.replace(GREEDY, repeat_penalty=repeat_penalty)
    assert generate(model, ctx, sampling, prompt=prompt, n=64) == OLD_ENGINE_GREEDY[(prompt, repeat_penalty)]


def test_a_fixed_seed_repeats_its_tokens_and_another_seed_does_not(
    model: LlamaModel, ctx: LlamaContext
) -> None:
    first = generate(model, ctx, SAMPLED, seed=42)
    assert generate(model, ctx, SAMPLED, seed=42) == first
    assert generate(model, ctx, SAMPLED, seed=43) != first
    assert first != generate(model, ctx, GREEDY)


@pytest.mark.parametrize(
    "change",
    [{"top_k": 1}, {"top_k": 0, "top_p": 1.0, "min_p": 1.0}, {"top_k": 0, "top_p": 0.0, "min_p": 0.0}],
    ids=["top-k 1", "min-p 1", "top-p 0"],
)
def test_filters_that_keep_one_token_make_sampling_greedy(
    model: LlamaModel, ctx: LlamaContext, change: dict[str, float]
) -> None:
    sampling = dataclasses.replace(SAMPLED, **change)
    assert generate(model, ctx, sampling, seed=42) == generate(model, ctx, GREEDY)


def test_typical_p_is_applied(model: LlamaModel, ctx: LlamaContext) -> None:
    typical = generate(model, ctx, SAMPLED, seed=7, typical_p=0.2)
    assert len(typical) == N_TOKENS
    assert generate(model, ctx, SAMPLED, seed=7, typical_p=0.2) == typical
    assert typical != generate(model, ctx, SAMPLED, seed=7)


@pytest.mark.parametrize(
    "penalty", [{"repeat_penalty": 1.5}, {"frequency_penalty": 1.0}], ids=["repeat", "frequency"]
)
def test_penalties_break_a_repetitive_continuation(
    model: LlamaModel, ctx: LlamaContext, penalty: dict[str, float]
) -> None:
    plain = generate(model, ctx, GREEDY, prompt=REPETITIVE)
    assert len(set(plain)) <= 2  # " one" and "," forever
    penalised = generate(model, ctx, dataclasses.replace(GREEDY, **penalty), prompt=REPETITIVE)
    assert len(set(penalised)) > 10


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat_runs_and_replaces_the_filters(model: LlamaModel, ctx: LlamaContext, mode: int) -> None:
    sampling = dataclasses.replace(SAMPLED, temperature=0.8, mirostat_mode=mode)
    tokens = generate(model, ctx, sampling, seed=7)
    assert len(tokens) == N_TOKENS
    assert all(0 <= t < model.n_vocab for t in tokens)
    assert generate(model, ctx, sampling, seed=7) == tokens
    assert tokens != generate(model, ctx, dataclasses.replace(sampling, mirostat_mode=0), seed=7)


def test_a_seed_outside_uint32_is_refused(model: LlamaModel) -> None:
    with pytest.raises(DriverError, match="seed"):
        SamplerChain(model, GREEDY, -1)


# ---- loading ---------------------------------------------------------------------------------------
def test_load_progress_is_reported_and_false_aborts_the_load(demo_model: str) -> None:
    seen: list[float] = []

    def stop_at_second(fraction: float) -> bool:
        seen.append(fraction)
        return len(seen) < 2

    with pytest.raises(DriverCancelled):
        LlamaModel(demo_model, progress=stop_at_second)
    assert len(seen) == 2 and seen[-1] < 1.0
    seen.clear()
    with LlamaModel(demo_model, progress=lambda f: seen.append(f) is None) as loaded:
        assert loaded.n_vocab > 0
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_a_progress_callback_that_raises_does_not_break_the_load(demo_model: str) -> None:
    def broken(_fraction: float) -> bool:
        raise RuntimeError("listener bug")

    with LlamaModel(demo_model, vocab_only=True, progress=broken) as loaded:
        assert loaded.n_vocab > 0


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: str(tmp / "missing.gguf"), "No such file"),
        (lambda tmp: (tmp / "noise.gguf").write_bytes(os.urandom(4096)) and str(tmp / "noise.gguf"), "magic"),
    ],
    ids=["missing", "not-gguf"],
)
def test_a_load_failure_quotes_llama_cpps_reason(
    tmp_path: Path, make: Callable[[Path], str], reason: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(DriverError, match=reason) as info:
        LlamaModel(path)
    assert path in str(info.value)
    assert not isinstance(info.value, DriverCancelled)


# ---- evaluation ------------------------------------------------------------------------------------
def test_decode_chunks_by_n_batch_and_refuses_past_the_context(model: LlamaModel, ctx: LlamaContext) -> None:
    tokens = model.tokenize(FOX * 15, add_special=True, parse_special=False)
    assert ctx.n_batch < len(tokens) < ctx.n_ctx
    ctx.clear()
    ctx.decode(tokens)
    assert ctx.n_tokens == len(tokens)
    with pytest.raises(DriverError, match="context is full"):
        ctx.decode(tokens)
    ctx.clear()
    assert ctx.n_tokens == 0


def test_the_cancel_flag_aborts_a_prompt_only_while_watched(model: LlamaModel) -> None:
    cancel = threading.Event()
    cancel.set()  # already pressed: the first graph node polls it
    tokens = model.tokenize(FOX * 10, add_special=True, parse_special=False)
    with LlamaContext(model, n_ctx=256, n_threads=2, n_threads_batch=2, cancel=cancel) as ctx:
        ctx.watch_for_abort(True)
        with pytest.raises(DriverCancelled):
            ctx.decode(tokens)
        assert ctx.n_tokens == 0  # llama.cpp rolled the aborted batch back
        ctx.watch_for_abort(False)  # the generation phase: the flag is the caller's to check
        ctx.decode(tokens)
        assert ctx.n_tokens == len(tokens)


def test_sampling_without_logits_is_refused_instead_of_aborting(model: LlamaModel, ctx: LlamaContext) -> None:
    ctx.clear()
    with SamplerChain(model, GREEDY, 1) as chain, pytest.raises(DriverError, match="Nothing to sample"):
        chain.sample(ctx)
    ctx.decode(model.tokenize(PROMPT, add_special=True, parse_special=False))
    assert ctx.logits_ready


def test_closed_objects_refuse_use_instead_of_crashing(model: LlamaModel, demo_model: str) -> None:
    ctx = LlamaContext(model, n_ctx=256, n_threads=2, n_threads_batch=2)
    chain = SamplerChain(model, GREEDY, 1)
    ctx.close()
    ctx.close()
    chain.close()
    chain.close()
    with pytest.raises(DriverError, match="unloaded"):
        ctx.decode_one(1)
    with pytest.raises(DriverError, match="freed"):
        chain.reset()
    vocab = LlamaModel(demo_model, vocab_only=True)
    vocab.close()
    vocab.close()
    assert vocab.closed
    with pytest.raises(DriverError, match="unloaded"):
        vocab.tokenize("hello", add_special=False, parse_special=False)


# ---- vocabulary and text ---------------------------------------------------------------------------
def test_vocabulary_facts(model: LlamaModel) -> None:
    assert model.n_vocab == 49152
    assert model.n_ctx_train == 8192
    assert model.is_eog(model.eos)
    assert model.token_text(model.eos) == "<|im_end|>"
    assert model.token_text(-1) == ""
    assert not model.is_eog(model.tokenize("Hello", add_special=False, parse_special=False)[0])
    assert model.metadata("general.architecture") == "llama"
    assert model.metadata("no.such.key") is None
    template = model.chat_template
    assert template is not None and "<|im_start|>" in template
    assert model.metadata("tokenizer.chat_template") == template  # longer than the first buffer


def test_tokenize_and_detokenize(model: LlamaModel) -> None:
    text = "Tokens and back again."
    ids = model.tokenize(text, add_special=False, parse_special=False)
    assert model.detokenize(ids, special=False) == text
    special = model.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    assert len(special) == 2 and model.token_text(special[0]) == "<|im_start|>"
    assert len(model.tokenize("<|im_start|>", add_special=False, parse_special=False)) > 1  # spelled out
    assert model.detokenize(special, special=True) == "<|im_start|>user"
    assert model.detokenize(special, special=False) == "user"
    assert model.token_to_piece(special[0], special=True) == b"<|im_start|>"
    assert model.token_to_piece(special[0], special=False) == b""
    long_text = "word " * 3000
    long_ids = model.tokenize(long_text, add_special=False, parse_special=False)
    assert model.detokenize(long_ids, special=False) == long_text


def test_text_stream_joins_a_character_split_over_tokens(model: LlamaModel) -> None:
    ids = model.tokenize("😀", add_special=False, parse_special=False)
    assert len(ids) > 1  # its four bytes come in several tokens
    stream = TextStream(model)
    pieces = [stream.feed(t) for t in ids]
    assert pieces == [""] * (len(ids) - 1) + ["😀"]  # whole, with the token that completes it
    assert stream.flush() == ""
    unfinished = TextStream(model)
    assert unfinished.feed(ids[0]) == ""  # the emoji's first bytes only
    assert unfinished.flush() == "\ufffd"


def test_chat_template_renders_and_tokenizes_as_before(model: LlamaModel) -> None:
    chat = apply_chat_template(model, [{"role": "user", "content": "What is 2+2?"}])
    assert chat.text.startswith("<|im_start|>system\n")  # the template's default system prompt
    assert chat.text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert len(chat.tokens) == 37  # as the old Engine counted it (GREEDY_REFERENCE in test_engine.py)
    assert chat.stops == ["<|im_end|>"]


# ---- stop strings ------------------------------------------------------------------------------
def test_stop_matcher_holds_back_only_a_possible_start() -> None:
    stops = StopMatcher(["END", "\n\n"])
    assert stops.feed("Hello E") == ("Hello ", False)  # "E" may start "END"
    assert stops.feed("ND of it") == ("", True)
    stops = StopMatcher(["END"])
    assert stops.feed("Hello EN") == ("Hello ", False)
    assert stops.feed("ough") == ("ENough", False)  # it was not the stop string after all
    assert stops.feed("trailing E") == ("trailing ", False)
    assert stops.flush() == "E"
    assert StopMatcher([]).feed("anything") == ("anything", False)


def test_typical_p_from_the_settings_is_applied(model: LlamaModel, ctx: LlamaContext) -> None:
    from_settings = generate(model, ctx, dataclasses.replace(SAMPLED, typical_p=0.2), seed=7)
    assert from_settings == generate(model, ctx, SAMPLED, seed=7, typical_p=0.2)
    assert from_settings != generate(model, ctx, SAMPLED, seed=7)
