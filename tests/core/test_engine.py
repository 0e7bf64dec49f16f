"""The engine against the real demo model through real llama.cpp."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import psutil
import pytest
from gguf import GGUFWriter

from app.engine.client import Engine
from app.engine.core import EngineCore
from app.engine.types import (
    EngineBusyError,
    EngineError,
    GenerationRequest,
    LoadProgress,
    NoModelLoadedError,
    OperationCancelled,
    PromptError,
    StopReason,
    TokenEvent,
)
from app.model.file_format import ModelFileError
from app.model.memory import InsufficientMemoryError
from app.model.settings import LoadSettings, SamplingSettings, SettingsError

GREEDY = SamplingSettings(temperature=0.0, max_tokens=16)
SMALL = LoadSettings(n_ctx=512, n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, seed=1)
WAIT_S = 120  # generous: the machine is shared; a hang still fails the test


@dataclasses.dataclass(frozen=True)
class GreedyCase:
    prompt: str
    chat: bool
    system_prompt: str | None
    repeat_penalty: float
    tokens: list[int]
    text: str
    stop_reason: StopReason
    prompt_tokens: int
    context_tokens: int


# What the Engine gave while it still ran llama-cpp-python's `Llama` (Llama.generate with its
# sampler), recorded before app.llama.driver replaced it: loaded with SMALL, each request at
# SamplingSettings(temperature=0.0, max_tokens=64, repeat_penalty=<as given>), the token ids taken
# from its on_token events and the rest from its RunStats. Greedy output must not change.
GREEDY_REFERENCE = [
    GreedyCase(
        "The capital of France is",
        chat=False,
        system_prompt=None,
        repeat_penalty=1.1,
        tokens=[
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
        text=(
            " Paris.\n- The United States has a population of approximately 321 million "
            "people, with over 50% living in urban areas.\n- The United Kingdom has a "
            "population of around 674 million people, while the European Union (EU) has "
            "a population of about 891 million"
        ),
        stop_reason=StopReason.LENGTH,
        prompt_tokens=5,
        context_tokens=68,
    ),
    GreedyCase(
        "Once upon a time, in a land far away,",
        chat=False,
        system_prompt=None,
        repeat_penalty=1.1,
        tokens=[
            665,
            436,
            253,
            10054,
            1217,
            414,
            4298,
            376,
            30,
            378,
            701,
            282,
            414,
            4298,
            376,
            4161,
            281,
            260,
            1666,
            282,
            414,
            318,
            5484,
            28,
            837,
            502,
            592,
            1343,
            347,
            260,
            414,
            541,
            373,
            992,
            1506,
            30,
            198,
            198,
            504,
            1977,
            5634,
            351,
            260,
            10898,
            282,
            253,
            12833,
            284,
            14905,
            414,
            541,
            373,
            992,
            697,
            3365,
            414,
            257,
            2740,
            28,
            617,
            761,
            719,
            5958,
            411,
        ],
        text=(
            " there was a kingdom called Eridus. The people of Eridus lived in the land "
            "of Elyria, where they were known as the Erythronians.\n\nThe story begins "
            "with the arrival of a brave and noble Erythronian named Erebo, who had been "
            "chosen by"
        ),
        stop_reason=StopReason.LENGTH,
        prompt_tokens=11,
        context_tokens=74,
    ),
    GreedyCase(
        "def fibonacci(n):",
        chat=False,
        system_prompt=None,
        repeat_penalty=1.0,
        tokens=[
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
        text=(
            "\n    if n == 0:\n        return 1\n    return max(fibonacci(n - 1) + "
            "fibonacci(n - 2), n)\n\n# Test the function\nprint(fibonacci(10))  # "
            "Output: 33\nprint(fibonacci(2))"
        ),
        stop_reason=StopReason.LENGTH,
        prompt_tokens=6,
        context_tokens=69,
    ),
    GreedyCase(
        "What is 2+2?",
        chat=True,
        system_prompt=None,
        repeat_penalty=1.1,
        tokens=[504, 2988, 288, 451, 8170, 4119, 1732, 314, 216, 36, 30],
        text=("The answer to this classic math problem is 4."),
        stop_reason=StopReason.EOS,
        prompt_tokens=37,
        context_tokens=48,
    ),
    GreedyCase(
        "Name three colours of the rainbow.",
        chat=True,
        system_prompt="You are a concise assistant.",
        repeat_penalty=1.1,
        tokens=[
            504,
            24594,
            314,
            1129,
            2188,
            351,
            1296,
            14797,
            42,
            4461,
            28,
            2382,
            28,
            284,
            5724,
            30,
            1423,
            28,
            281,
            4174,
            28,
            260,
            3018,
            17714,
            282,
            623,
            4683,
            359,
            441,
            1811,
            253,
            2232,
            6714,
            282,
            14797,
            288,
            582,
            1372,
            30,
        ],
        text=(
            "The rainbow is often associated with three colours: blue, red, and yellow. "
            "However, in reality, the exact proportions of these colors are not always a "
            "simple ratio of colours to one another."
        ),
        stop_reason=StopReason.EOS,
        prompt_tokens=27,
        context_tokens=66,
    ),
]


@pytest.fixture(scope="module")
def engine(demo_model: str) -> Iterator[Engine]:
    eng = Engine()
    eng.load(demo_model, SMALL).result(WAIT_S)
    yield eng
    eng.shutdown()


@pytest.fixture()
def fresh_engine() -> Iterator[Engine]:
    eng = Engine()
    yield eng
    eng.shutdown()


def _failure(future: Future[object]) -> BaseException:
    exc = future.exception(WAIT_S)
    assert exc is not None, "the operation was expected to fail"
    return exc


# ---- loading --------------------------------------------------------------------------------------
def test_load_reports_what_llama_cpp_allocated(engine: Engine, demo_model: str) -> None:
    loaded = engine.loaded
    assert loaded is not None
    assert loaded.model.path == demo_model
    assert loaded.n_ctx == 512
    assert loaded.load_time_s > 0
    # llama.cpp's own KV-cache figure agrees with the estimate made before loading.
    assert loaded.memory.kv_cache_bytes == loaded.estimate.kv_cache_ram_bytes
    assert loaded.memory.model_buffer_bytes is not None
    assert loaded.memory.model_buffer_bytes > 50 * 2**20
    assert loaded.memory.compute_buffer_bytes is not None


def test_load_progress_is_reported_and_cancel_during_load_leaves_nothing_loaded(
    fresh_engine: Engine, demo_model: str
) -> None:
    seen: list[float] = []

    def on_progress(progress: LoadProgress) -> None:
        seen.append(progress.fraction)
        if len(seen) == 1:  # the user presses Cancel as soon as the load shows progress
            fresh_engine.cancel()

    # Read into RAM rather than mapped: the load then takes long enough (tens of ms) for the
    # first progress event to travel from the host and the cancel to travel back.
    reading = dataclasses.replace(SMALL, use_mmap=False)
    exc = _failure(fresh_engine.load(demo_model, reading, on_progress=on_progress))
    assert isinstance(exc, OperationCancelled)
    assert fresh_engine.loaded is None
    assert len(seen) >= 1 and seen[-1] < 1.0
    # The engine is usable afterwards, and a full load reports progress up to 1.0.
    seen.clear()
    fresh_engine.load(demo_model, SMALL, on_progress=lambda p: seen.append(p.fraction)).result(WAIT_S)
    assert seen[-1] == 1.0
    assert seen == sorted(seen)


def test_the_core_works_on_the_callers_thread_with_plain_data(demo_model: str) -> None:
    """EngineCore is what a child process will host: no threads of its own, picklable results."""
    threads_before = set(threading.enumerate())
    core = EngineCore(threading.Event())
    try:
        loaded = core.load(demo_model, SMALL)
        stats = core.generate(GenerationRequest("The capital of France is", GREEDY))
        pieces = core.tokenize("Hello world")
        assert core.detokenize([p.token_id for p in pieces]) == "Hello world"
        assert set(threading.enumerate()) == threads_before
        for value in (loaded, stats, pieces):
            assert pickle.loads(pickle.dumps(value)) == value
        assert stats.text.startswith(" Paris")
        core.clear_kv_cache()
    finally:
        core.close()
    assert core.loaded is None
    with pytest.raises(NoModelLoadedError):
        core.tokenize("Hello")


def _rss_with_host(engine: Engine) -> int:
    """The memory of this process and of the engine host, the way a user's task manager adds them."""
    pids = [os.getpid()] + ([engine.host_pid] if engine.host_pid else [])
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def test_unload_gives_the_memory_back_over_20_cycles(fresh_engine: Engine, demo_model: str) -> None:
    fresh_engine.unload().result(WAIT_S)  # starts the host: its start-up is not the model's memory
    before = _rss_with_host(fresh_engine)
    # Without mmap the weights are read into allocated memory, so freeing them shows in RSS.
    settings = dataclasses.replace(SMALL, use_mmap=False)
    after_each: list[int] = []
    for _ in range(20):
        fresh_engine.load(demo_model, settings).result(WAIT_S)
        loaded = _rss_with_host(fresh_engine)
        assert loaded - before > 50 * 2**20  # the weights are really in memory
        fresh_engine.unload().result(WAIT_S)
        after_each.append(_rss_with_host(fresh_engine) - before)
    assert fresh_engine.loaded is None
    assert max(after_each) < 20 * 2**20, [f"{d / 2**20:.1f} MiB" for d in after_each]
    exc = _failure(fresh_engine.generate(GenerationRequest("Hello", GREEDY)))
    assert isinstance(exc, NoModelLoadedError)


# ---- generation -----------------------------------------------------------------------------------
def test_streaming_completion_events_and_stats(engine: Engine) -> None:
    events: list[TokenEvent] = []
    stats = engine.generate(GenerationRequest("The capital of France is", GREEDY), events.append).result(
        WAIT_S
    )
    assert stats.stop_reason in (StopReason.LENGTH, StopReason.EOS)
    assert stats.generated_tokens == len(events) > 0
    assert [e.index for e in events] == list(range(len(events)))
    stamps = [e.t_ns for e in events]
    assert stamps == sorted(stamps)
    assert "".join(e.text for e in events) == stats.text
    assert "Paris" in stats.text
    assert stats.prompt_tokens > 3
    assert stats.ttft_s is not None and 0 < stats.ttft_s < stats.total_s
    assert stats.prompt_tokens_per_s is not None and stats.prompt_tokens_per_s > 0
    assert stats.gen_tokens_per_s is not None and stats.gen_tokens_per_s > 0
    assert stats.context_tokens == stats.prompt_tokens + stats.generated_tokens - 1


@pytest.mark.parametrize("case", GREEDY_REFERENCE, ids=lambda c: c.prompt[:20])
def test_greedy_output_is_what_the_llama_based_engine_gave(engine: Engine, case: GreedyCase) -> None:
    events: list[TokenEvent] = []
    sampling = SamplingSettings(temperature=0.0, max_tokens=64, repeat_penalty=case.repeat_penalty)
    request = GenerationRequest(case.prompt, sampling, chat=case.chat, system_prompt=case.system_prompt)
    stats = engine.generate(request, events.append).result(WAIT_S)
    assert [e.token_id for e in events] == case.tokens
    assert stats.text == case.text
    assert stats.stop_reason is case.stop_reason
    assert (stats.prompt_tokens, stats.context_tokens) == (case.prompt_tokens, case.context_tokens)


def test_a_fixed_seed_repeats_a_sampled_generation(engine: Engine) -> None:
    assert SMALL.seed == 1
    sampling = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    request = GenerationRequest("Once upon a time", sampling)
    first = engine.generate(request).result(WAIT_S)
    assert first.generated_tokens > 0
    assert engine.generate(request).result(WAIT_S).text == first.text
    greedy = dataclasses.replace(GREEDY, max_tokens=24)
    assert engine.generate(GenerationRequest("Once upon a time", greedy)).result(WAIT_S).text != first.text


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat_generates(engine: Engine, mode: int) -> None:
    sampling = SamplingSettings(temperature=0.8, mirostat_mode=mode, max_tokens=16)
    stats = engine.generate(GenerationRequest("Once upon a time", sampling)).result(WAIT_S)
    assert stats.generated_tokens > 0
    assert stats.stop_reason in (StopReason.LENGTH, StopReason.EOS)
    assert stats.error is None


def test_greedy_generation_is_deterministic(engine: Engine) -> None:
    request = GenerationRequest("Once upon a time", GREEDY)
    first = engine.generate(request).result(WAIT_S)
    second = engine.generate(request).result(WAIT_S)
    assert first.text == second.text != ""


def test_chat_mode_uses_the_models_template(engine: Engine) -> None:
    pieces = engine.tokenize("<|im_start|>").result(WAIT_S)
    assert len(pieces) == 1  # a special token of the template, parsed as one token
    sampling = dataclasses.replace(GREEDY, max_tokens=64)
    stats = engine.generate(GenerationRequest("What is 2+2?", sampling, chat=True)).result(WAIT_S)
    assert stats.chat
    assert stats.stop_reason is StopReason.EOS  # the model ends its turn with <|im_end|>
    assert "4" in stats.text
    assert "<|im_end|>" not in stats.text
    # The template wrapped the prompt: far more tokens than the bare question.
    bare = engine.tokenize("What is 2+2?").result(WAIT_S)
    assert stats.prompt_tokens > len(bare) + 5


def test_stop_string_ends_generation_and_is_not_shown(engine: Engine) -> None:
    request = GenerationRequest("Count: one, two, three,", dataclasses.replace(GREEDY, max_tokens=24))
    full = engine.generate(request).result(WAIT_S).text
    assert len(full) > 12
    stop = full[6:10]
    expected = full[: full.find(stop)]
    sampling = dataclasses.replace(GREEDY, max_tokens=24, stop=(stop,))
    stats = engine.generate(GenerationRequest(request.prompt, sampling)).result(WAIT_S)
    assert stats.stop_reason is StopReason.STOP_STRING
    assert stats.text == expected


def test_stop_between_tokens_keeps_what_was_generated(engine: Engine) -> None:
    events: list[TokenEvent] = []

    def on_token(event: TokenEvent) -> None:
        events.append(event)
        if len(events) == 3:
            engine.cancel()

    sampling = dataclasses.replace(GREEDY, max_tokens=200)
    stats = engine.generate(
        GenerationRequest("Once upon a time, in a land far away,", sampling), on_token
    ).result(WAIT_S)
    assert stats.stop_reason is StopReason.CANCELLED
    # The host notices the stop at its next token; the tokens in flight still arrive.
    assert 3 <= stats.generated_tokens < 100
    assert stats.generated_tokens == len(events)
    assert stats.text == "".join(e.text for e in events)


def test_cancel_aborts_a_long_prompt_evaluation(engine: Engine) -> None:
    long_prompt = "the quick brown fox jumps over the lazy dog " * 45  # ~450 tokens, one batch
    future = engine.generate(GenerationRequest(long_prompt, GREEDY))
    engine.cancel()  # before the worker has finished evaluating the prompt
    stats = future.result(WAIT_S)
    assert stats.stop_reason is StopReason.CANCELLED
    assert stats.generated_tokens == 0
    # llama.cpp's abort callback stopped llama_decode: the prompt never reached the KV cache.
    assert stats.context_tokens < stats.prompt_tokens
    # And the next request runs normally.
    assert engine.generate(GenerationRequest("Hello", GREEDY)).result(WAIT_S).generated_tokens > 0


def test_a_request_while_busy_is_refused(engine: Engine) -> None:
    started = threading.Event()

    def on_token(event: TokenEvent) -> None:
        started.set()

    sampling = dataclasses.replace(GREEDY, max_tokens=400)
    future = engine.generate(GenerationRequest("Once upon a time, in a land far away,", sampling), on_token)
    assert started.wait(WAIT_S)
    assert engine.busy
    with pytest.raises(EngineBusyError, match="busy"):
        engine.generate(GenerationRequest("Hello", GREEDY))
    with pytest.raises(EngineBusyError):
        engine.tokenize("Hello")
    engine.cancel()
    assert future.result(WAIT_S).stop_reason is StopReason.CANCELLED
    assert not engine.busy


def test_empty_prompt_is_refused(engine: Engine) -> None:
    exc = _failure(engine.generate(GenerationRequest("   ", GREEDY)))
    assert isinstance(exc, PromptError)
    assert "empty" in str(exc)


def test_prompt_longer_than_the_context_is_refused(engine: Engine) -> None:
    exc = _failure(engine.generate(GenerationRequest("word " * 2000, GREEDY)))
    assert isinstance(exc, PromptError)
    assert "context holds 512" in str(exc)


def test_generation_stops_when_the_context_is_full(engine: Engine) -> None:
    prompt = "the quick brown fox jumps over the lazy dog " * 49  # close to the 512-token context
    n_prompt = len(engine.tokenize(prompt, add_bos=True, special=False).result(WAIT_S))
    sampling = dataclasses.replace(GREEDY, max_tokens=1000, repeat_penalty=1.0)
    stats = engine.generate(GenerationRequest(prompt, sampling)).result(WAIT_S)
    assert stats.prompt_tokens == n_prompt
    assert stats.generated_tokens <= 512 - n_prompt
    assert stats.stop_reason in (StopReason.LENGTH, StopReason.EOS)


def test_tokenizer_view(engine: Engine) -> None:
    pieces = engine.tokenize("Hello world, hello llamas!").result(WAIT_S)
    assert len(pieces) >= 5
    assert "".join(p.text for p in pieces) == "Hello world, hello llamas!"
    assert all(isinstance(p.token_id, int) and p.token_id >= 0 for p in pieces)


def test_detokenize_round_trip(engine: Engine) -> None:
    text = "Tokens and back again."
    ids = [p.token_id for p in engine.tokenize(text, add_bos=False).result(WAIT_S)]
    assert engine.detokenize(ids).result(WAIT_S) == text
    exc = _failure(engine.detokenize([10**9]))
    assert isinstance(exc, PromptError)


def test_clear_kv_cache(engine: Engine) -> None:
    engine.generate(GenerationRequest("Hello", GREEDY)).result(WAIT_S)
    engine.clear_kv_cache().result(WAIT_S)
    stats = engine.generate(GenerationRequest("Hello", GREEDY)).result(WAIT_S)
    assert stats.generated_tokens > 0


# ---- bad input: a clear message, the engine keeps working -------------------------------------
def _random_gguf(tmp_path: Path) -> str:
    path = tmp_path / "random.gguf"
    path.write_bytes(os.urandom(4096))
    return str(path)


def _truncated(tmp_path: Path, demo_model: str) -> str:
    path = tmp_path / "truncated.gguf"
    with open(demo_model, "rb") as src:
        path.write_bytes(src.read(20 * 2**20))
    return str(path)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp, demo: str(tmp / "missing.gguf"), "not found|does not exist|no such"),
        (lambda tmp, demo: str(tmp), "directory|folder"),
        (lambda tmp, demo: (tmp / "empty.gguf").write_bytes(b"") or str(tmp / "empty.gguf"), "empty"),
        (_truncated, "truncated"),
        (lambda tmp, demo: _random_gguf(tmp), "not a recognised model file"),
    ],
    ids=["missing", "directory", "zero-byte", "truncated", "random-bytes"],
)
def test_bad_model_files_are_refused_with_a_message(
    fresh_engine: Engine,
    demo_model: str,
    tmp_path: Path,
    make,
    expected: str,  # type: ignore[no-untyped-def]
) -> None:
    exc = _failure(fresh_engine.load(make(tmp_path, demo_model), SMALL))
    assert isinstance(exc, ModelFileError)
    assert re.search(expected, str(exc), flags=re.IGNORECASE), str(exc)
    # Nothing was lost: the engine still loads a good model afterwards.
    fresh_engine.load(demo_model, SMALL).result(WAIT_S)


def test_unknown_architecture_is_explained(fresh_engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "alien.gguf"
    writer = GGUFWriter(str(path), "alienformer")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    exc = _failure(fresh_engine.load(str(path), SMALL))
    assert isinstance(exc, EngineError)
    assert "alienformer" in str(exc)
    assert "architecture" in str(exc)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_ctx": 0}, "n_ctx"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_batch": 256, "n_ubatch": 512}, "n_ubatch"),
    ],
)
def test_impossible_settings_are_refused_before_loading(
    fresh_engine: Engine, demo_model: str, change: dict[str, int], field: str
) -> None:
    exc = _failure(fresh_engine.load(demo_model, dataclasses.replace(SMALL, **change)))
    assert isinstance(exc, SettingsError)
    assert exc.field == field
    assert field in str(exc)


def test_a_load_that_will_not_fit_is_refused_with_the_numbers(fresh_engine: Engine, demo_model: str) -> None:
    # A million-token f32 KV cache for this model needs ~46 GiB: more than this machine has.
    huge = dataclasses.replace(SMALL, n_ctx=1_048_576, type_k="f32", type_v="f32")
    exc = _failure(fresh_engine.load(demo_model, huge))
    assert isinstance(exc, InsufficientMemoryError)
    assert "GiB" in str(exc)
    assert fresh_engine.loaded is None
