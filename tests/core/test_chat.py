"""Multi-turn chat with the KV cache kept between turns: the real demo model through real llama.cpp.

Each turn must evaluate only what follows the longest prefix the cache already holds, and must
answer exactly what a fresh context evaluating the whole conversation answers (greedy sampling):
the cache is correct, not only fast.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.client import Engine
from app.engine.core import EngineCore
from app.engine.types import GenerationRequest, PromptError, RunStats, StopReason, TokenEvent, stats_line
from app.llama.chat import (
    CHAT_FILE_VERSION,
    ChatFileError,
    ChatTurn,
    Conversation,
    chat_messages,
    common_prefix_len,
    fit_history,
)
from app.llama.driver import LlamaModel
from app.llama.text import apply_chat_template
from app.model.settings import LoadSettings, SamplingSettings

GREEDY = SamplingSettings(temperature=0.0, max_tokens=48)
SETTINGS = LoadSettings(n_ctx=1024, n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, seed=1)
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS = (
    "What is the capital of France?",
    "What language do people speak there?",
    "Name a famous museum there.",
)
WAIT_S = 120


@pytest.fixture(scope="module")
def core(demo_model: str) -> Iterator[EngineCore]:
    c = EngineCore(threading.Event())
    c.load(demo_model, SETTINGS)
    yield c
    c.close()


@pytest.fixture(scope="module")
def vocab(demo_model: str) -> Iterator[LlamaModel]:
    """The model's vocabulary alone, to render and tokenize conversations independently of the engine."""
    with LlamaModel(demo_model, vocab_only=True) as model:
        yield model


def _tokens(
    vocab: LlamaModel, history: tuple[ChatTurn, ...], prompt: str, system: str | None = SYSTEM
) -> list[int]:
    return apply_chat_template(vocab, chat_messages(system, history, prompt)).tokens


def _turn(
    core: EngineCore,
    prompt: str,
    history: tuple[ChatTurn, ...],
    *,
    reuse: bool = True,
    sampling: SamplingSettings = GREEDY,
    on_token: object = None,
) -> tuple[RunStats, list[int]]:
    ids: list[int] = []

    def collect(event: TokenEvent) -> None:
        ids.append(event.token_id)
        if callable(on_token):
            on_token(event)

    request = GenerationRequest(
        prompt, sampling, chat=True, system_prompt=SYSTEM, history=history, reuse_cache=reuse
    )
    return core.generate(request, collect), ids


def _cached_after(prompt: list[int], stats: RunStats, ids: list[int]) -> list[int]:
    """What the cache must hold after a turn: the prompt and every generated token that was fed back
    (the end-of-generation token never is; the last token of a run cut by max_tokens or a stop neither)."""
    return prompt + (ids if stats.stop_reason is StopReason.EOS else ids[:-1])


def test_three_turns_evaluate_only_the_new_tokens_and_answer_as_a_fresh_context(
    core: EngineCore, vocab: LlamaModel
) -> None:
    core.clear_kv_cache()
    history: tuple[ChatTurn, ...] = ()
    for n, question in enumerate(QUESTIONS, 1):
        full = _tokens(vocab, history, question)
        before = list(core.cached_tokens)
        stats, ids = _turn(core, question, history)
        assert stats.stop_reason in (StopReason.EOS, StopReason.LENGTH) and stats.text.strip()
        reused = common_prefix_len(before, full)
        assert stats.prompt_tokens_reused == reused
        assert stats.prompt_tokens == len(full) - reused
        if n > 1:
            # The earlier turns come from the cache: only the new user message (and the template's
            # closing of the previous reply) is evaluated.
            assert reused > len(_tokens(vocab, (), QUESTIONS[0])) - 8
            assert stats.prompt_tokens < len(full)
            assert "reused" in stats_line(stats) and f"{stats.prompt_tokens} new tokens" in stats_line(stats)
        # The cache holds exactly what was evaluated, and llama.cpp agrees on its length.
        assert list(core.cached_tokens) == _cached_after(full, stats, ids)
        assert stats.context_tokens == len(core.cached_tokens)
        history += (ChatTurn("user", question), ChatTurn("assistant", stats.text))

    # The same conversation from an empty cache, turn by turn: the same replies, every token evaluated.
    for n, question in enumerate(QUESTIONS):
        earlier = history[: 2 * n]
        fresh, _ = _turn(core, question, earlier, reuse=False)
        assert fresh.prompt_tokens == len(_tokens(vocab, earlier, question))
        assert fresh.prompt_tokens_reused is None
        assert fresh.text == history[2 * n + 1].content


def test_a_reply_that_renders_differently_keeps_only_the_common_prefix(
    core: EngineCore, vocab: LlamaModel
) -> None:
    """What the template renders of an earlier turn need not be what the cache holds (a template
    that drops old reasoning, an edited reply): the prefix shortens, the answer stays right."""
    core.clear_kv_cache()
    first, _ = _turn(core, QUESTIONS[0], ())
    cached = list(core.cached_tokens)
    edited = (ChatTurn("user", QUESTIONS[0]), ChatTurn("assistant", "Paris, of course. " + first.text))
    full = _tokens(vocab, edited, QUESTIONS[1])
    stats, _ = _turn(core, QUESTIONS[1], edited)
    assert stats.prompt_tokens_reused == common_prefix_len(cached, full) < len(cached)
    fresh, _ = _turn(core, QUESTIONS[1], edited, reuse=False)
    assert stats.text == fresh.text


def test_a_stop_mid_reply_keeps_the_partial_reply_and_a_consistent_cache(
    core: EngineCore, vocab: LlamaModel
) -> None:
    core.clear_kv_cache()
    cancel = core._cancel
    assert isinstance(cancel, threading.Event)

    def stop_at_third(event: TokenEvent) -> None:
        if event.index == 2:
            cancel.set()  # the user presses Stop while the third token arrives

    long_answer = SamplingSettings(temperature=0.0, max_tokens=200)
    prompt = "Tell me a long story about a dragon."
    try:
        stats, ids = _turn(core, prompt, (), sampling=long_answer, on_token=stop_at_third)
    finally:
        cancel.clear()
    assert stats.stop_reason is StopReason.CANCELLED
    assert stats.generated_tokens == 3 and stats.text
    full = _tokens(vocab, (), prompt)
    assert list(core.cached_tokens) == full + ids[:-1]
    assert stats.context_tokens == len(core.cached_tokens)

    # The partial reply is the turn; the next turn reuses the cache and answers as a fresh context.
    history = (ChatTurn("user", prompt), ChatTurn("assistant", stats.text))
    nxt, _ = _turn(core, QUESTIONS[0], history)
    assert nxt.prompt_tokens_reused == common_prefix_len(
        full + ids[:-1], _tokens(vocab, history, QUESTIONS[0])
    )
    assert nxt.prompt_tokens_reused > len(full) - 1
    fresh, _ = _turn(core, QUESTIONS[0], history, reuse=False)
    assert nxt.text == fresh.text


def test_a_stop_during_the_prompt_leaves_only_the_kept_prefix(core: EngineCore, vocab: LlamaModel) -> None:
    core.clear_kv_cache()
    first, _ = _turn(core, QUESTIONS[0], ())
    kept_before = list(core.cached_tokens)
    history = (ChatTurn("user", QUESTIONS[0]), ChatTurn("assistant", first.text))
    long_question = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 40
    cancel = core._cancel
    assert isinstance(cancel, threading.Event)
    cancel.set()  # llama.cpp's abort callback sees it inside the prompt's evaluation
    try:
        stats, ids = _turn(core, long_question, history)
    finally:
        cancel.clear()
    assert stats.stop_reason is StopReason.CANCELLED and ids == []
    full = _tokens(vocab, history, long_question)
    # Whatever llama.cpp had stored of the stopped evaluation was removed again.
    assert list(core.cached_tokens) == full[: common_prefix_len(kept_before, full)]
    assert stats.context_tokens == len(core.cached_tokens)
    again, _ = _turn(core, QUESTIONS[1], history)
    fresh, _ = _turn(core, QUESTIONS[1], history, reuse=False)
    assert again.prompt_tokens_reused and again.text == fresh.text


def test_overflow_leaves_out_the_oldest_turns_in_pairs(demo_model: str, vocab: LlamaModel) -> None:
    small = EngineCore(threading.Event())
    small.load(demo_model, LoadSettings(n_ctx=256, n_threads=2, n_threads_batch=2, n_batch=256, n_ubatch=256))
    try:
        filler = "Llamas live in the Andes and carry loads over the mountains. " * 3
        history: tuple[ChatTurn, ...] = ()
        for i in range(4):
            history += (ChatTurn("user", f"Fact {i}: {filler}"), ChatTurn("assistant", f"Noted fact {i}."))
        assert len(_tokens(vocab, history, QUESTIONS[0])) > 256
        sampling = SamplingSettings(temperature=0.0, max_tokens=32)
        request = GenerationRequest(
            QUESTIONS[0], sampling, chat=True, system_prompt=SYSTEM, history=history, reuse_cache=True
        )
        stats = small.generate(request)
        assert stats.dropped_turns > 0 and stats.dropped_turns % 2 == 0
        assert "oldest turns left out" in stats_line(stats)
        kept = history[stats.dropped_turns :]
        # What was sent is the conversation without those turns, and leaves room for the reply.
        assert stats.prompt_tokens + stats.prompt_tokens_reused == len(_tokens(vocab, kept, QUESTIONS[0]))
        assert stats.prompt_tokens + (stats.prompt_tokens_reused or 0) + 32 <= 256
        assert (
            fit_history(history, lambda h: _tokens(vocab, h, QUESTIONS[0]), 256, 32)[1] == stats.dropped_turns
        )

        # A single message longer than the whole context is refused with a message.
        with pytest.raises(PromptError, match="every earlier turn of the chat left out.*raise n_ctx"):
            small.generate(
                GenerationRequest(filler * 6, sampling, chat=True, history=history, reuse_cache=True)
            )
    finally:
        small.close()


def test_a_reload_invalidates_the_cache(demo_model: str) -> None:
    c = EngineCore(threading.Event())
    try:
        c.load(demo_model, SETTINGS)
        first, _ = _turn(c, QUESTIONS[0], ())
        assert c.cached_tokens
        c.load(demo_model, SETTINGS)
        assert c.cached_tokens == ()
        history = (ChatTurn("user", QUESTIONS[0]), ChatTurn("assistant", first.text))
        stats, _ = _turn(c, QUESTIONS[1], history)
        assert stats.prompt_tokens_reused == 0
    finally:
        c.close()


def test_the_engine_host_reuses_the_cache_between_turns(demo_model: str) -> None:
    engine = Engine()
    try:
        engine.load(demo_model, SETTINGS).result(WAIT_S)
        one = GenerationRequest(QUESTIONS[0], GREEDY, chat=True, system_prompt=SYSTEM, reuse_cache=True)
        first = engine.generate(one).result(WAIT_S)
        history = (ChatTurn("user", QUESTIONS[0]), ChatTurn("assistant", first.text))
        two = GenerationRequest(
            QUESTIONS[1], GREEDY, chat=True, system_prompt=SYSTEM, history=history, reuse_cache=True
        )
        second = engine.generate(two).result(WAIT_S)
        assert (
            second.prompt_tokens_reused is not None and second.prompt_tokens_reused > first.prompt_tokens - 2
        )
        # A completion in between starts from an empty cache, so the chat's next turn reuses nothing.
        engine.generate(GenerationRequest("The capital of France is", GREEDY)).result(WAIT_S)
        third = engine.generate(two).result(WAIT_S)
        assert third.prompt_tokens_reused == 0 and third.text == second.text
    finally:
        engine.shutdown()


# ---- the conversation file ------------------------------------------------------------------------
def test_conversation_file_round_trip(tmp_path: Path) -> None:
    conv = Conversation(
        "Be brief.",
        (
            ChatTurn("user", "Hi — ünïcode ✓"),
            ChatTurn("assistant", "Hello!", "prompt 3 new tokens (0 reused)"),
        ),
        "model.gguf",
        {"load": {"n_ctx": 1024}, "sampling": {"temperature": 0.0}},
    )
    path = str(tmp_path / "chat.json")
    conv.save(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    assert data["format"] == "llamascope-chat" and data["version"] == CHAT_FILE_VERSION
    assert Conversation.load(path) == conv


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"messages": []}', "not a LlamaScope conversation"),
        ("[1, 2]", "not a LlamaScope conversation"),
        ('{"format": "llamascope-chat"}', "no version"),
        ('{"format": "llamascope-chat", "version": 99, "turns": []}', "newer LlamaScope"),
        ('{"format": "llamascope-chat", "version": 1}', "no list of turns"),
        (
            '{"format": "llamascope-chat", "version": 1, "turns": [{"role": "tool", "content": "x"}]}',
            "role 'tool'",
        ),
        ('{"format": "llamascope-chat", "version": 1, "turns": [{"role": "user", "content": 3}]}', "no text"),
        ('{"format": "llamascope-chat", "version": 1, "turns": ["hi"]}', "turn 1 is not an object"),
    ],
)
def test_a_bad_conversation_file_is_refused_with_a_reason(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ChatFileError, match=says):
        Conversation.load(str(path))


def test_an_unreadable_conversation_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ChatFileError, match="could not be read"):
        Conversation.load(str(tmp_path / "missing.json"))
    binary = tmp_path / "model.gguf"
    binary.write_bytes(b"GGUF\xff\xfe\x00\x81")
    with pytest.raises(ChatFileError, match="not a text file|not valid JSON"):
        Conversation.load(str(binary))
