"""The engine: owns one llama.cpp model and runs every call to it on a single worker thread.

llama.cpp contexts are not safe for concurrent use, so the engine runs one operation at a time:
a request made while another runs is refused at once with `EngineBusyError`, never queued
behind it. Requests return a `concurrent.futures.Future`; the CLI waits on it, the GUI turns its
completion into a Qt signal. Streaming callbacks (`on_token`, `on_progress`) are called on the
worker thread and must not touch widgets.
"""

from __future__ import annotations

import codecs
import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app import llama_runtime
from app.build_check import require_working_build
from app.gguf_info import ModelFileError, inspect_model
from app.llama_runtime import LlamaMemoryReport
from app.memory import MemoryEstimate, check_fits, estimate_memory
from app.model_info import ModelInfo
from app.settings import LoadSettings, SamplingSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


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


_PATCH_LOCK = threading.Lock()


class Engine:
    """Owns one `llama_cpp.Llama` and runs every operation on it on one worker thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-engine")
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._cancel = threading.Event()
        self._llama: Any = None
        self._loaded: LoadResult | None = None
        self._abort_cb: Any = None  # kept alive while the context may call it
        self._progress_cb: Any = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def loaded(self) -> LoadResult | None:
        return self._loaded

    # ---- requests ----------------------------------------------------------------------------
    def load(
        self,
        path: str,
        settings: LoadSettings,
        *,
        override_memory: bool = False,
        on_progress: Callable[[LoadProgress], None] | None = None,
    ) -> Future[LoadResult]:
        """Inspect, check and load a model, replacing any loaded one."""
        return self._submit(self._do_load, path, settings, override_memory, on_progress)

    def unload(self) -> Future[None]:
        return self._submit(self._do_unload)

    def generate(
        self, request: GenerationRequest, on_token: Callable[[TokenEvent], None] | None = None
    ) -> Future[RunStats]:
        return self._submit(self._do_generate, request, on_token)

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> Future[list[TokenPiece]]:
        return self._submit(self._do_tokenize, text, add_bos, special)

    def detokenize(self, token_ids: Sequence[int], *, special: bool = True) -> Future[str]:
        return self._submit(self._do_detokenize, list(token_ids), special)

    def clear_kv_cache(self) -> Future[None]:
        return self._submit(self._do_clear_kv_cache)

    def run_exclusive(self, job: Callable[[threading.Event], T]) -> Future[T]:
        """Run other llama.cpp work (a benchmark, an evaluation) on the engine thread.

        It takes its turn like any request: refused while something else runs, and nothing else
        runs beside it, so measurements are not disturbed. `job` receives the cancel event that
        `cancel()` sets.
        """
        return self._submit(job, self._cancel)

    def cancel(self) -> None:
        """Ask the running operation to stop: between tokens, inside prompt evaluation, or mid-load."""
        self._cancel.set()

    def shutdown(self) -> None:
        """Cancel what runs, wait for the worker, free the model. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cancel.set()
        self._executor.submit(self._free)
        self._executor.shutdown(wait=True)

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise EngineError("The engine has been shut down.")
            if self._busy:
                raise EngineBusyError("The engine is busy with another operation; wait or press Stop.")
            self._busy = True
            self._cancel.clear()

        def run() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy = False

        return self._executor.submit(run)

    # ---- worker-thread operations ------------------------------------------------------------
    def _require_model(self) -> Any:
        if self._llama is None:
            raise NoModelLoadedError("No model is loaded. Load a model first.")
        return self._llama

    def _free(self) -> None:
        if self._llama is not None:
            llama, self._llama = self._llama, None
            self._loaded = None
            # close() frees llama.cpp's model, context and buffers now, whatever else holds the object.
            llama.close()

    def _do_unload(self) -> None:
        self._free()

    def _do_load(
        self,
        path: str,
        settings: LoadSettings,
        override_memory: bool,
        on_progress: Callable[[LoadProgress], None] | None,
    ) -> LoadResult:
        model = inspect_model(path)  # raises ModelFileError with a readable message
        settings.validate(model)
        estimate = estimate_memory(model, settings)
        check_fits(estimate, override=override_memory)
        require_working_build(EngineError)  # before the old model is freed: a refusal keeps it
        self._free()
        if self._cancel.is_set():
            raise OperationCancelled("Loading was cancelled.")

        lc = llama_runtime.llama()
        mark = llama_runtime.log_mark()
        t0 = time.perf_counter()
        llama = self._construct(lc, path, settings, on_progress)
        load_time_s = time.perf_counter() - t0

        self._abort_cb = lc.ggml_abort_callback(lambda _data: self._cancel.is_set())
        self._llama = llama
        memory = llama_runtime.parse_memory_report(llama_runtime.log_since(mark))
        self._loaded = LoadResult(
            model=model,
            settings=settings,
            n_ctx=int(llama.n_ctx()),
            load_time_s=load_time_s,
            estimate=estimate,
            memory=memory,
        )
        return self._loaded

    def _construct(
        self,
        lc: Any,
        path: str,
        settings: LoadSettings,
        on_progress: Callable[[LoadProgress], None] | None,
    ) -> Any:
        import llama_cpp.llama as llama_module

        def progress(fraction: float, _data: Any) -> bool:
            if on_progress is not None:
                try:
                    on_progress(LoadProgress(min(1.0, max(0.0, float(fraction)))))
                except Exception:  # a listener's bug must not crash native code
                    log.exception("load progress listener failed")
            return not self._cancel.is_set()  # False makes llama.cpp abort the load

        self._progress_cb = lc.llama_progress_callback(progress)
        bindings = llama_module.llama_cpp
        original = bindings.llama_model_default_params

        def params_with_progress() -> Any:
            params = original()
            params.progress_callback = self._progress_cb
            return params

        # Llama() takes no progress callback, but it builds its model parameters from this one
        # function; wrapping it for the duration of the constructor is the narrowest hook.
        mark = llama_runtime.log_mark()
        with _PATCH_LOCK:
            bindings.llama_model_default_params = params_with_progress
            try:
                return llama_module.Llama(model_path=path, verbose=False, **settings.to_llama_kwargs())
            except Exception as exc:
                if self._cancel.is_set():
                    raise OperationCancelled("Loading was cancelled.") from None
                raise EngineError(_explain_load_failure(path, llama_runtime.log_since(mark), exc)) from exc
            finally:
                bindings.llama_model_default_params = original

    def _watch_for_abort(self, llama: Any, enabled: bool) -> None:
        """Let llama.cpp poll the cancel flag inside llama_decode, or stop it polling.

        ggml calls the abort callback once per graph node (hundreds per token) and each call
        takes the GIL. That is what makes a long prompt evaluation cancellable, but during token
        generation it would cost a few per cent of speed, and there the cancel flag is checked
        between tokens anyway. So it is on for the prompt only.
        """
        lc = llama_runtime.llama()
        # Calling the callback type with no function gives the NULL pointer llama.cpp expects for "none".
        callback = self._abort_cb if enabled else lc.ggml_abort_callback()
        lc.llama_set_abort_callback(llama.ctx, callback, None)

    def _do_tokenize(self, text: str, add_bos: bool, special: bool) -> list[TokenPiece]:
        llama = self._require_model()
        ids = llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
        return [
            TokenPiece(int(t), llama.detokenize([t], special=True).decode("utf-8", errors="backslashreplace"))
            for t in ids
        ]

    def _do_detokenize(self, token_ids: list[int], special: bool) -> str:
        llama = self._require_model()
        n_vocab = int(llama.n_vocab())
        bad = [t for t in token_ids if not 0 <= t < n_vocab]
        if bad:
            raise PromptError(f"Token ids must be between 0 and {n_vocab - 1}; got {bad[:5]}.")
        return llama.detokenize(token_ids, special=special).decode("utf-8", errors="replace")

    def _do_clear_kv_cache(self) -> None:
        llama = self._require_model()
        llama.reset()
        llama._ctx.kv_cache_clear()

    def _prompt_tokens(self, llama: Any, request: GenerationRequest) -> tuple[list[int], list[str]]:
        """Tokens to evaluate and extra stop strings the chat template asks for."""
        if not request.prompt.strip():
            raise PromptError("The prompt is empty: type something to send to the model.")
        if not request.chat:
            return llama.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False), []
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise PromptError("This model has no chat template; switch to completion mode.")
        from llama_cpp import llama_chat_format

        def token_text(token_id: int) -> str:
            return llama._model.token_get_text(token_id) if token_id != -1 else ""

        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(llama.token_eos()),
            bos_token=token_text(llama.token_bos()),
            stop_token_ids=[llama.token_eos()],
        )
        messages = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        result = formatter(messages=messages)
        tokens = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return tokens, stops

    def _do_generate(
        self, request: GenerationRequest, on_token: Callable[[TokenEvent], None] | None
    ) -> RunStats:
        llama = self._require_model()
        request.sampling.validate()
        t_start_ns = time.monotonic_ns()
        tokens, template_stops = self._prompt_tokens(llama, request)
        n_ctx = int(llama.n_ctx())
        if len(tokens) >= n_ctx:
            raise PromptError(
                f"The prompt is {len(tokens)} tokens but the context holds {n_ctx}: "
                "shorten the prompt or raise n_ctx and reload."
            )
        max_new = min(request.sampling.max_tokens, n_ctx - len(tokens))
        stops = _StopMatcher([*request.sampling.stop, *template_stops])
        vocab = llama_runtime.llama().llama_model_get_vocab(llama.model)
        is_eog = llama_runtime.llama().llama_vocab_is_eog
        s = request.sampling
        # A fresh evaluation every run: prompt statistics then always mean the whole prompt.
        llama.reset()
        token_iter = llama.generate(
            tokens,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            mirostat_mode=s.mirostat_mode,
            mirostat_tau=s.mirostat_tau,
            mirostat_eta=s.mirostat_eta,
            reset=False,
        )
        self._watch_for_abort(llama, True)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text_parts: list[str] = []
        stamps: list[int] = []
        stop_reason = StopReason.LENGTH
        error: str | None = None
        try:
            for token in token_iter:
                now = time.monotonic_ns()
                if not stamps:
                    self._watch_for_abort(llama, False)  # the prompt is evaluated
                if self._cancel.is_set():
                    stop_reason = StopReason.CANCELLED
                    break
                if is_eog(vocab, token):
                    stop_reason = StopReason.EOS
                    break
                stamps.append(now)
                piece = decoder.decode(llama.detokenize([token], special=False))
                emitted, hit = stops.feed(piece)
                if emitted:
                    text_parts.append(emitted)
                if on_token is not None:
                    on_token(TokenEvent(len(stamps) - 1, int(token), emitted, now))
                if hit:
                    stop_reason = StopReason.STOP_STRING
                    break
                if len(stamps) >= max_new:
                    stop_reason = StopReason.LENGTH
                    break
        except RuntimeError as exc:
            if self._cancel.is_set():  # llama_decode returned 2: our abort callback fired
                stop_reason = StopReason.CANCELLED
            else:
                stop_reason, error = StopReason.ERROR, str(exc)
        finally:
            token_iter.close()
            self._watch_for_abort(llama, False)
        if stop_reason is not StopReason.STOP_STRING:
            text_parts.append(stops.flush() + decoder.decode(b"", final=True))
        t_end_ns = time.monotonic_ns()
        return _stats(
            request.chat,
            len(tokens),
            stamps,
            t_start_ns,
            t_end_ns,
            stop_reason,
            "".join(text_parts),
            int(llama.n_tokens),
            error,
        )


def _stats(
    chat: bool,
    n_prompt: int,
    stamps: Sequence[int],
    t_start_ns: int,
    t_end_ns: int,
    stop_reason: StopReason,
    text: str,
    context_tokens: int,
    error: str | None,
) -> RunStats:
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
    )


class _StopMatcher:
    """Finds stop strings in streamed text, holding back only what could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to show, whether a stop string was hit)."""
        text = self._pending + piece
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest


def _explain_load_failure(path: str, log_lines: list[str], exc: Exception) -> str:
    """Turn llama.cpp's load failure into a sentence a user can act on, quoting its own reason."""
    marker = "error loading model:"
    reasons = [line.split(marker, 1)[1].strip() for line in log_lines if marker in line]
    if not reasons:  # other llama.cpp versions word it differently; take its last error line
        reasons = [line.strip() for line in log_lines if "error" in line.lower()][-1:]
    reason = reasons[-1] if reasons else str(exc)
    if "architecture" in reason:
        version = llama_runtime.build_info().llama_cpp_python_version
        return (
            f"llama.cpp cannot load {path}: {reason}. This build (llama-cpp-python {version}) does "
            "not support that model architecture; a newer llama-cpp-python may."
        )
    return f"llama.cpp could not load {path}: {reason}"


__all__ = [
    "Engine",
    "EngineBusyError",
    "EngineError",
    "GenerationRequest",
    "LoadProgress",
    "LoadResult",
    "ModelFileError",
    "NoModelLoadedError",
    "OperationCancelled",
    "PromptError",
    "RunStats",
    "StopReason",
    "TokenEvent",
    "TokenPiece",
]
