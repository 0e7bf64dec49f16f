"""What crosses between the engine's client and its host: requests, events, results and errors.

All of it is plain picklable data (frozen dataclasses and enums), so it can go through the pipe
to the host and back, and over threads to the GUI.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.common.formatting import fmt
from app.llama.chat import ChatTurn
from app.llama.runtime import LlamaMemoryReport
from app.model.memory import MemoryEstimate
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, SamplingSettings


class EngineError(Exception):
    """An engine operation failed; the message is meant for the user."""


class EngineBusyError(EngineError):
    """Another operation is running; llama.cpp allows one at a time."""


class NoModelLoadedError(EngineError):
    """The operation needs a loaded model."""


class PromptError(EngineError):
    """The prompt cannot be run as given (empty, too long, no chat template)."""


class OperationCancelled(EngineError):
    """The user cancelled the operation before it finished."""


class EngineCrashedError(EngineError):
    """llama.cpp crashed the engine host; the message names the signal and its last log lines."""

    def __init__(self, message: str, signal_text: str | None = None, log_tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.signal_text = signal_text
        self.log_tail = log_tail


class StopReason(enum.Enum):
    EOS = "eos"
    LENGTH = "length"  # max_tokens reached, or the context is full
    STOP_STRING = "stop string"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, with the text it added (may be empty while a stop string is pending)."""

    index: int  # 0-based position among generated tokens
    token_id: int
    text: str
    t_ns: int  # time.monotonic_ns() when the token was sampled
    # On the first token only (None on the others): the time to it and the prompt tokens evaluated
    # before it, so the live view shows the TTFT and the prompt speed at once, not at the end. They
    # are the figures RunStats reports (run_stats' definitions).
    ttft_s: float | None = None
    prompt_tokens: int | None = None


class TokenStream:
    """The tokens of one generation: appended by the engine thread, read by others at their own pace.

    A reader (a GUI panel) asks for `since(n)` a few times a second instead of being called per
    token, so a fast model does not wake it 100+ times a second; on a small machine every wake-up
    is CPU taken from llama.cpp's threads. `list.append` and slicing are atomic under the GIL, so
    no lock is needed for one writer and any number of readers.
    """

    def __init__(self) -> None:
        self._events: list[TokenEvent] = []

    def append(self, event: TokenEvent) -> None:
        self._events.append(event)

    def since(self, start: int) -> list[TokenEvent]:
        """The events from index `start` on (empty if none arrived yet)."""
        return self._events[start:]

    def __len__(self) -> int:
        return len(self._events)


@dataclass(frozen=True)
class TokenPiece:
    token_id: int
    text: str


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    chat: bool = False
    system_prompt: str | None = None
    # A multi-turn chat (chat mode only): the earlier turns, rendered before `prompt` by the template.
    history: tuple[ChatTurn, ...] = ()
    # Keep what the KV cache holds of the previous turn and evaluate only the new tokens. Off, every
    # run evaluates its whole prompt from an empty cache (completion mode, the CLI, the self-test).
    reuse_cache: bool = False


@dataclass(frozen=True)
class RunStats:
    """Wall-clock statistics of one interactive generation (sampling and detokenizing included)."""

    chat: bool
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float | None  # request start to first token sampled; None if no token came
    prompt_tokens_per_s: float | None  # prompt tokens / time to first token
    gen_tokens_per_s: float | None  # (generated - 1) / (last token time - first token time)
    total_s: float
    stop_reason: StopReason
    text: str
    context_tokens: int  # tokens held in the KV cache when the run ended (prompt + generated)
    error: str | None = None
    # With reuse_cache: prompt tokens taken from the KV cache, not evaluated (prompt_tokens counts
    # only the evaluated ones, which is what the prompt speed and the TTFT measure). None: no reuse asked.
    prompt_tokens_reused: int | None = None
    dropped_turns: int = 0  # earlier turns left out so that the conversation fits n_ctx


@dataclass(frozen=True)
class LoadProgress:
    fraction: float  # 0.0 … 1.0, as llama.cpp reports it


@dataclass(frozen=True)
class LoadResult:
    """A model that finished loading, with what llama.cpp reported about it."""

    model: ModelInfo
    settings: LoadSettings
    n_ctx: int
    load_time_s: float
    estimate: MemoryEstimate
    memory: LlamaMemoryReport


def run_stats(
    chat: bool,
    n_prompt: int,
    stamps: Sequence[int],
    t_start_ns: int,
    t_end_ns: int,
    stop_reason: StopReason,
    text: str,
    context_tokens: int,
    error: str | None,
    prompt_tokens_reused: int | None = None,
    dropped_turns: int = 0,
) -> RunStats:
    """The figures of one generation from its token timestamps (llama-bench's definitions: prompt
    speed from the time to the first token, generation speed between the first and the last)."""
    ttft_s = (stamps[0] - t_start_ns) / 1e9 if stamps else None
    gen_tps = None
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        gen_tps = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)
    return RunStats(
        chat=chat,
        prompt_tokens=n_prompt,
        generated_tokens=len(stamps),
        ttft_s=ttft_s,
        prompt_tokens_per_s=n_prompt / ttft_s if ttft_s else None,
        gen_tokens_per_s=gen_tps,
        total_s=(t_end_ns - t_start_ns) / 1e9,
        stop_reason=stop_reason,
        text=text,
        context_tokens=context_tokens,
        error=error,
        prompt_tokens_reused=prompt_tokens_reused,
        dropped_turns=dropped_turns,
    )


def stats_line(stats: RunStats) -> str:
    """The one-line summary shown under a generation; a run that ended in an error says which."""
    ttft_ms = None if stats.ttft_s is None else stats.ttft_s * 1000
    error = f" — {stats.error}" if stats.error else ""
    if stats.prompt_tokens_reused is not None:
        dropped = (
            f" · {stats.dropped_turns} oldest turns left out to fit n_ctx" if stats.dropped_turns else ""
        )
        return (
            f"prompt {stats.prompt_tokens} new tokens ({stats.prompt_tokens_reused} reused) · "
            f"TTFT {fmt(ttft_ms, '.0f', ' ms')} · "
            f"generation {fmt(stats.gen_tokens_per_s, '.1f', ' t/s')} ({stats.generated_tokens} tok) · "
            f"stop: {stats.stop_reason.value}{dropped}{error}"
        )
    return (
        f"TTFT {fmt(ttft_ms, '.0f', ' ms')} · "
        f"prompt {fmt(stats.prompt_tokens_per_s, '.1f', ' t/s')} ({stats.prompt_tokens} tok) · "
        f"generation {fmt(stats.gen_tokens_per_s, '.1f', ' t/s')} ({stats.generated_tokens} tok) · "
        f"stop: {stats.stop_reason.value}{error}"
    )
