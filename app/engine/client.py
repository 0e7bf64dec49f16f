"""The engine: owns one llama.cpp model and runs every call to it on a single worker thread.

Two layers. `EngineCore` does the work on the caller's thread through app.llama.driver (llama.cpp's
C API): load, unload, tokenize, detokenize, clear the KV cache, generate. It has no threads and no
futures, and takes and returns plain picklable data apart from its callbacks, so that it can later
run in a child process. `Engine` is the front the app uses: one worker thread, futures, busy
refusal and cancel.

llama.cpp contexts are not safe for concurrent use, so the engine runs one operation at a time:
a request made while another runs is refused at once with `EngineBusyError`, never queued
behind it. Requests return a `concurrent.futures.Future`; the CLI waits on it, the GUI turns its
completion into a Qt signal. Streaming callbacks (`on_token`, `on_progress`) are called on the
worker thread and must not touch widgets.
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.common.formatting import fmt
from app.engine.crash_registry import CrashRegistry
from app.engine.host import CANCEL_GRACE_S, HostCancelled, HostClient, HostContext, HostCrashed, HostError
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.driver import (
    CancelFlag,
    DriverCancelled,
    DriverError,
    LlamaContext,
    LlamaModel,
    SamplerChain,
    StopMatcher,
    TextStream,
    apply_chat_template,
    init_numa,
)
from app.llama.runtime import LlamaMemoryReport
from app.model.gguf_info import ModelFileError, inspect_model
from app.model.memory import MemoryEstimate, check_fits, estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LLAMA_DEFAULT_SEED, LoadSettings, SamplingSettings

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


class EngineCore:
    """Owns one loaded model and its context, and runs operations on them on the caller's thread.

    No threads, no futures, no busy check: the caller runs one operation at a time (Engine does,
    and so will the engine host process). Everything it takes and returns is plain picklable data
    (dataclasses, lists, str) except the callbacks. `cancel` is polled between tokens, inside
    prompt evaluation and during a load; the caller sets and clears it.
    """

    def __init__(self, cancel: CancelFlag) -> None:
        self._cancel = cancel
        self._model: LlamaModel | None = None
        self._ctx: LlamaContext | None = None
        self._loaded: LoadResult | None = None
        self._seed = LLAMA_DEFAULT_SEED

    @property
    def loaded(self) -> LoadResult | None:
        return self._loaded

    # ---- model ----------------------------------------------------------------------------------
    def load(
        self,
        path: str,
        settings: LoadSettings,
        *,
        override_memory: bool = False,
        on_progress: Callable[[LoadProgress], None] | None = None,
    ) -> LoadResult:
        """Inspect, check and load a model, replacing any loaded one."""
        model_info = inspect_model(path)  # raises ModelFileError with a readable message
        settings.validate(model_info)
        estimate = estimate_memory(model_info, settings)
        check_fits(estimate, override=override_memory)
        require_working_build(EngineError)  # before the old model is freed: a refusal keeps it
        self.unload()
        if self._cancel.is_set():
            raise OperationCancelled("Loading was cancelled.")
        if settings.numa:
            init_numa()

        def progress(fraction: float) -> bool:
            if on_progress is not None:
                try:
                    on_progress(LoadProgress(min(1.0, max(0.0, fraction))))
                except Exception:  # a listener's bug must not fail the load
                    log.exception("load progress listener failed")
            return not self._cancel.is_set()  # False makes llama.cpp abort the load

        mark = llama_runtime.log_mark()
        t0 = time.perf_counter()
        try:
            model = LlamaModel(
                path,
                n_gpu_layers=settings.n_gpu_layers,
                use_mmap=settings.use_mmap,
                use_mlock=settings.use_mlock,
                progress=progress,
            )
        except DriverCancelled:
            raise OperationCancelled("Loading was cancelled.") from None
        except DriverError as exc:
            if self._cancel.is_set():
                raise OperationCancelled("Loading was cancelled.") from None
            raise EngineError(str(exc)) from None
        try:
            ctx = LlamaContext.for_settings(model, settings, cancel=self._cancel)
        except DriverError as exc:
            model.close()
            raise EngineError(str(exc)) from None
        load_time_s = time.perf_counter() - t0
        self._model, self._ctx = model, ctx
        # Seed 0 meant random under llama-cpp-python (`seed or LLAMA_DEFAULT_SEED`), and the
        # settings still warn so; keep that meaning rather than let old profiles change behaviour.
        self._seed = LLAMA_DEFAULT_SEED if settings.seed in (-1, 0) else settings.seed
        self._loaded = LoadResult(
            model=model_info,
            settings=settings,
            n_ctx=ctx.n_ctx,
            load_time_s=load_time_s,
            estimate=estimate,
            memory=llama_runtime.parse_memory_report(llama_runtime.log_since(mark)),
        )
        return self._loaded

    def unload(self) -> None:
        """Free the model, its context and their buffers now. Safe to call when nothing is loaded."""
        ctx, model = self._ctx, self._model
        self._ctx = self._model = None
        self._loaded = None
        if ctx is not None:
            ctx.close()
        if model is not None:
            model.close()

    close = unload

    def _require(self) -> tuple[LlamaModel, LlamaContext]:
        if self._model is None or self._ctx is None:
            raise NoModelLoadedError("No model is loaded. Load a model first.")
        return self._model, self._ctx

    # ---- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[TokenPiece]:
        model, _ = self._require()
        ids = model.tokenize(text, add_special=add_bos, parse_special=special)
        return [
            TokenPiece(t, model.token_to_piece(t, special=True).decode("utf-8", errors="backslashreplace"))
            for t in ids
        ]

    def detokenize(self, token_ids: Sequence[int], *, special: bool = True) -> str:
        model, _ = self._require()
        bad = [t for t in token_ids if not 0 <= t < model.n_vocab]
        if bad:
            raise PromptError(f"Token ids must be between 0 and {model.n_vocab - 1}; got {bad[:5]}.")
        return model.detokenize(list(token_ids), special=special)

    def clear_kv_cache(self) -> None:
        _, ctx = self._require()
        ctx.clear(data=True)

    # ---- generation -----------------------------------------------------------------------------
    def _prompt_tokens(self, model: LlamaModel, request: GenerationRequest) -> tuple[list[int], list[str]]:
        """Tokens to evaluate and extra stop strings the chat template asks for."""
        if not request.prompt.strip():
            raise PromptError("The prompt is empty: type something to send to the model.")
        if not request.chat:
            return model.tokenize(request.prompt, add_special=True, parse_special=False), []
        messages = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        try:
            chat = apply_chat_template(model, messages)
        except DriverError as exc:
            raise PromptError(str(exc)) from None
        return chat.tokens, chat.stops

    def generate(
        self,
        request: GenerationRequest,
        on_token: Callable[[TokenEvent], None] | None = None,
        *,
        t_start_ns: int | None = None,
    ) -> RunStats:
        """Evaluate the prompt from an empty cache and generate until EOS, max_tokens, a full
        context, a stop string or the cancel flag. Failures after the prompt was accepted come
        back as a RunStats with stop_reason ERROR, keeping the text generated so far.

        `t_start_ns` (time.monotonic_ns, a clock all processes share) is when the request was
        made, if earlier than this call: the time to the first token counts from there."""
        model, ctx = self._require()
        request.sampling.validate()
        t_start_ns = time.monotonic_ns() if t_start_ns is None else t_start_ns
        tokens, template_stops = self._prompt_tokens(model, request)
        if not tokens:
            raise PromptError("The prompt gave no tokens to evaluate: type some text.")
        n_ctx = ctx.n_ctx
        if len(tokens) >= n_ctx:
            raise PromptError(
                f"The prompt is {len(tokens)} tokens but the context holds {n_ctx}: "
                "shorten the prompt or raise n_ctx and reload."
            )
        max_new = min(request.sampling.max_tokens, n_ctx - len(tokens))
        stops = StopMatcher([*request.sampling.stop, *template_stops])
        text = TextStream(model)
        cancel = self._cancel
        text_parts: list[str] = []
        stamps: list[int] = []
        stop_reason = StopReason.LENGTH
        error: str | None = None
        # A fresh evaluation every run: prompt statistics then always mean the whole prompt.
        ctx.clear(data=False)
        with SamplerChain(model, request.sampling, self._seed) as sampler:
            try:
                ctx.watch_for_abort(True)
                try:
                    ctx.decode(tokens)
                finally:
                    ctx.watch_for_abort(False)
                while True:
                    token = sampler.sample(ctx)
                    now = time.monotonic_ns()
                    if cancel.is_set():
                        stop_reason = StopReason.CANCELLED
                        break
                    if model.is_eog(token):
                        stop_reason = StopReason.EOS
                        break
                    stamps.append(now)
                    emitted, hit = stops.feed(text.feed(token))
                    if emitted:
                        text_parts.append(emitted)
                    if on_token is not None:
                        on_token(TokenEvent(len(stamps) - 1, token, emitted, now))
                    if hit:
                        stop_reason = StopReason.STOP_STRING
                        break
                    if len(stamps) >= max_new:
                        stop_reason = StopReason.LENGTH
                        break
                    if cancel.is_set():  # set by a listener, or meanwhile: skip the next evaluation
                        stop_reason = StopReason.CANCELLED
                        break
                    ctx.decode_one(token)
            except DriverError as exc:
                if isinstance(exc, DriverCancelled) or cancel.is_set():
                    stop_reason = StopReason.CANCELLED
                else:
                    stop_reason, error = StopReason.ERROR, str(exc)
        if stop_reason is not StopReason.STOP_STRING:
            text_parts.append(stops.flush() + text.flush())
        t_end_ns = time.monotonic_ns()
        return _stats(
            request.chat,
            len(tokens),
            stamps,
            t_start_ns,
            t_end_ns,
            stop_reason,
            "".join(text_parts),
            ctx.n_tokens,
            error,
        )


def _return_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it for reuse otherwise).

    llama.cpp frees the model and its buffers on unload, but glibc's malloc keeps freed blocks
    below its mmap threshold, which it raises each time a large block is freed; without this the
    host kept about 40 MB after the first unloads of the demo model.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        pass


JOB_CANCEL_GRACE_S = 0.5


class EngineService:
    """The engine host's side (app.engine.host): an EngineCore whose callbacks become events.

    Load progress goes out when it moved by a per cent; tokens go out in batches, the first at
    once (so the time to the first token shows) and then at most every TOKEN_BATCH_S, so the
    client is never woken per token.
    """

    TOKEN_BATCH_S = 0.05

    def __init__(self, context: HostContext) -> None:
        self._cancel = context.cancel
        self._core = EngineCore(context.cancel)
        self._emit = context.emit

    def load(self, path: str, settings: LoadSettings, override_memory: bool) -> LoadResult:
        last = [-1.0]

        def on_progress(progress: LoadProgress) -> None:
            if progress.fraction - last[0] >= 0.01 or progress.fraction >= 1.0:
                last[0] = progress.fraction
                self._emit("load_progress", progress)

        return self._core.load(path, settings, override_memory=override_memory, on_progress=on_progress)

    def unload(self) -> None:
        self._core.unload()
        _return_free_memory()

    def is_loaded(self) -> bool:
        return self._core.loaded is not None

    def run_job(self, job: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `job` ("module:function", one of LlamaScope's own) here in the host: a benchmark,
        an evaluation, a tuning session. It is called as `function(*args, cancel=..., emit=...,
        **kwargs)`: `cancel` is the host's cancel flag, `emit(kind, payload)` sends an event."""
        module_name, _, function_name = job.partition(":")
        if not module_name.startswith("app."):
            raise EngineError(f"not a LlamaScope job: {job}")
        function = getattr(importlib.import_module(module_name), function_name)
        return function(*args, cancel=self._cancel, emit=self._emit, **kwargs)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[TokenPiece]:
        return self._core.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, token_ids: list[int], special: bool) -> str:
        return self._core.detokenize(token_ids, special=special)

    def clear_kv_cache(self) -> None:
        self._core.clear_kv_cache()

    def generate(self, request: GenerationRequest, t_start_ns: int | None = None) -> RunStats:
        batch: list[TokenEvent] = []
        sent_ns = [0]

        def on_token(event: TokenEvent) -> None:
            batch.append(event)
            if event.index == 0 or event.t_ns - sent_ns[0] >= self.TOKEN_BATCH_S * 1e9:
                self._emit("tokens", batch.copy())
                batch.clear()
                sent_ns[0] = event.t_ns

        stats = self._core.generate(request, on_token, t_start_ns=t_start_ns)
        if batch:
            self._emit("tokens", batch)
        return stats

    def close(self) -> None:
        self._core.close()


class Engine:
    """The app's engine: one worker thread with futures, busy refusal and cancel, in front of an
    engine host process (app.engine.host) where an EngineCore does the llama.cpp work.

    A native crash of the host fails the running request with a message (and, at load, records
    the model in the crash registry); the next request starts a fresh host with nothing loaded.
    """

    def __init__(self, crashes: CrashRegistry | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-engine")
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._cancel = threading.Event()  # for run_exclusive jobs, which run in this process
        self._host = HostClient("app.engine.client:EngineService")
        self._crashes = crashes
        self._loaded: LoadResult | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def loaded(self) -> LoadResult | None:
        return self._loaded

    @property
    def host_pid(self) -> int | None:
        """The engine host's process id while it runs (tests, diagnostics)."""
        return self._host.pid

    def start_host(self) -> None:
        """Start the host process in the background, so the first load does not wait for it."""
        with self._lock:
            if not self._closed:
                self._executor.submit(self._host.start)

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
        return self._submit(self._call, "tokenize", text, add_bos, special)

    def detokenize(self, token_ids: Sequence[int], *, special: bool = True) -> Future[str]:
        return self._submit(self._call, "detokenize", [int(t) for t in token_ids], special)

    def clear_kv_cache(self) -> Future[None]:
        return self._submit(self._call, "clear_kv_cache")

    def run_exclusive(self, job: Callable[[threading.Event], T]) -> Future[T]:
        """Run a piece of work (a benchmark, an evaluation) on the engine thread.

        It takes its turn like any request: refused while something else runs, and nothing else
        runs beside it, so measurements are not disturbed. `job` receives the cancel event that
        `cancel()` sets. Its llama.cpp work goes to the host through `call_job_here`
        (app.engine.jobs), never into this process.
        """
        return self._submit(job, self._cancel)

    def run_job(
        self, job: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run llama.cpp work other than generation (a benchmark, an evaluation, a tuning session)
        in the engine host, taking its turn like any request.

        `job` names a function "app.module:function" that takes `cancel` and `emit` keywords (see
        EngineService.run_job); its events reach `on_event(kind, payload)` on the worker thread.
        The host's loaded model stays loaded: a job loads what it measures itself.
        """
        return self._submit(self._call_job, job, args, kwargs, on_event)

    def _call_job(
        self,
        job: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_event: Callable[[str, Any], None] | None,
    ) -> Any:
        # A job stops cooperatively (llama.cpp's abort callback, then its own wrap-up: a tuning
        # session still reports its best trial), so it gets the whole 0.5 s before the host is ended.
        self._host.grace_s = JOB_CANCEL_GRACE_S
        try:
            return self._call("run_job", job, args, kwargs, on_event=on_event)
        finally:
            self._host.grace_s = CANCEL_GRACE_S

    def call_job_here(
        self, job: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Any:
        """`run_job` for code already on the worker thread (a `run_exclusive` job): runs the host
        job and returns its result. A crash becomes EngineCrashedError, a forced stop
        OperationCancelled."""
        if threading.current_thread().name.split("_")[0] != "llamascope-engine":
            raise EngineError("call_job_here is for the engine's worker thread; use run_job")
        return self._call_job(job, args, kwargs, on_event)

    def cancel(self) -> None:
        """Stop the running operation: cooperatively between tokens, inside prompt evaluation and
        mid-load; a host that does not stop within its grace period is ended."""
        self._cancel.set()
        self._host.cancel()

    def shutdown(self) -> None:
        """Cancel what runs, end the host, wait for the worker. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cancel.set()
        self._host.cancel()
        self._host.shutdown()  # ends a call in progress too: the worker then returns at once
        self._executor.shutdown(wait=True)
        self._loaded = None  # it went with the host

    # ---- on the worker thread ----------------------------------------------------------------
    def _call(self, operation: str, *args: Any, on_event: Callable[[str, Any], None] | None = None) -> Any:
        """One host call; a crash or a forced stop becomes an EngineError for the user."""
        try:
            return self._host.call(operation, *args, on_event=on_event)
        except HostCancelled:
            self._loaded = None  # the host was ended: its model is gone
            raise OperationCancelled(
                "Stopped; the engine had to be restarted, so no model is loaded."
            ) from None
        except HostCrashed as exc:
            self._loaded = None
            raise EngineCrashedError(str(exc), exc.signal_text, exc.log_tail) from None
        except HostError as exc:
            raise EngineError(str(exc)) from None

    def _do_load(
        self,
        path: str,
        settings: LoadSettings,
        override_memory: bool,
        on_progress: Callable[[LoadProgress], None] | None,
    ) -> LoadResult:
        require_working_build(EngineError)  # checked here first: a crashing build never starts the host

        def on_event(kind: str, payload: Any) -> None:
            if kind == "load_progress" and on_progress is not None:
                on_progress(payload)

        crashes = self._crash_registry()
        try:
            result: LoadResult = self._call("load", path, settings, override_memory, on_event=on_event)
        except OperationCancelled:
            raise OperationCancelled("Loading was cancelled.") from None
        except EngineCrashedError as exc:
            crashes.record(path, exc.signal_text or "a crash", exc.log_tail)
            raise
        except Exception:
            # A load that failed after the old model was freed leaves nothing loaded: ask the host.
            if self._loaded is not None:
                try:
                    still = self._host.call("is_loaded") if self._host.alive() else False
                except Exception:  # noqa: BLE001 (cannot tell: assume the worst)
                    still = False
                if not still:
                    self._loaded = None
            raise
        self._loaded = result
        crashes.forget(path)  # it loads now: a repaired llama.cpp, or a crash that had another cause
        return result

    def _do_unload(self) -> None:
        self._call("unload")
        self._loaded = None

    def _do_generate(
        self, request: GenerationRequest, on_token: Callable[[TokenEvent], None] | None
    ) -> RunStats:
        t_start_ns = time.monotonic_ns()  # TTFT counts from here: the trip to the host included
        seen: list[TokenEvent] = []

        def on_event(kind: str, payload: Any) -> None:
            if kind != "tokens":
                return
            for event in payload:
                if seen:
                    # A stop waits one token for the host to notice (a slow model's token can take
                    # longer than the default grace) before the host is ended.
                    gap_s = (event.t_ns - seen[-1].t_ns) / 1e9
                    self._host.grace_s = max(self._host.grace_s, min(2 * gap_s, 10.0))
                seen.append(event)
                if on_token is not None:
                    on_token(event)

        self._host.grace_s = CANCEL_GRACE_S
        try:
            return self._call("generate", request, t_start_ns, on_event=on_event)  # type: ignore[no-any-return]
        except OperationCancelled:
            stamps = [e.t_ns for e in seen]
            return _stats(
                request.chat,
                0,
                stamps,
                t_start_ns,
                time.monotonic_ns(),
                StopReason.CANCELLED,
                "".join(e.text for e in seen),
                0,
                None,
            )
        finally:
            self._host.grace_s = CANCEL_GRACE_S

    def _crash_registry(self) -> CrashRegistry:
        if self._crashes is None:
            self._crashes = CrashRegistry()
        return self._crashes

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise EngineError("The engine has been shut down.")
            if self._busy:
                raise EngineBusyError("The engine is busy with another operation; wait or press Stop.")
            self._busy = True
            self._cancel.clear()
            self._host.clear_cancel()

        def run() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy = False

        return self._executor.submit(run)


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


__all__ = [
    "Engine",
    "EngineCore",
    "EngineBusyError",
    "EngineCrashedError",
    "EngineService",
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


def stats_line(stats: RunStats) -> str:
    """The one-line summary shown under a generation."""
    ttft_ms = None if stats.ttft_s is None else stats.ttft_s * 1000
    return (
        f"TTFT {fmt(ttft_ms, '.0f', ' ms')} · "
        f"prompt {fmt(stats.prompt_tokens_per_s, '.1f', ' t/s')} ({stats.prompt_tokens} tok) · "
        f"generation {fmt(stats.gen_tokens_per_s, '.1f', ' t/s')} ({stats.generated_tokens} tok) · "
        f"stop: {stats.stop_reason.value}"
    )
