"""The engine's work, on the caller's thread: load, unload, tokenize, generate with llama.cpp.

`EngineCore` drives llama.cpp through app.llama.driver (its C API and its sampler chain). It
has no threads and no futures and takes and returns plain picklable data apart from its
callbacks: the engine host runs it (app.engine.service), and benchmarks and tests can run it in
their own process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from app.engine.types import (
    EngineError,
    GenerationRequest,
    LoadProgress,
    LoadResult,
    NoModelLoadedError,
    OperationCancelled,
    PromptError,
    RunStats,
    StopReason,
    TokenEvent,
    TokenPiece,
    run_stats,
)
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.chat import ChatTurn, chat_messages, fit_history, reply_reserve, reusable_prefix
from app.llama.driver import (
    CancelFlag,
    DriverCancelled,
    DriverError,
    LlamaContext,
    LlamaModel,
    SamplerChain,
    init_numa,
)
from app.llama.text import StopMatcher, TextStream, apply_chat_template
from app.model.fields import LLAMA_DEFAULT_SEED
from app.model.gguf_info import inspect_model
from app.model.memory import check_memory, forget_loaded_model, note_loaded_model
from app.model.settings import LoadSettings

log = logging.getLogger(__name__)


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
        # The tokens the context's KV cache holds for sequence 0, in order: what a chat's next turn
        # may keep (GenerationRequest.reuse_cache). Empty whenever the cache was cleared or the
        # context replaced, and cut back to what is certain after a failed or stopped evaluation.
        self._cached: list[int] = []

    @property
    def loaded(self) -> LoadResult | None:
        return self._loaded

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        """The tokens the KV cache holds now (tests, benchmarks)."""
        return tuple(self._cached)

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
        # The model loaded now is freed before this one loads: its mapped weights are not taken off.
        estimate = check_memory(
            model_info,
            settings,
            override=override_memory,
            purpose=f"load {model_info.display_name} with n_ctx {settings.n_ctx}",
            replacing=self,
        )
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
        note_loaded_model(self, path, settings, estimate)
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
        self._cached = []  # a reload brings a new context: nothing of the old cache is valid
        forget_loaded_model(self)
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
        self._cached = []
        ctx.clear(data=True)

    # ---- generation -----------------------------------------------------------------------------
    def _prompt_tokens(
        self, model: LlamaModel, n_ctx: int, request: GenerationRequest
    ) -> tuple[list[int], list[str], int]:
        """Tokens to evaluate, extra stop strings the chat template asks for, and how many of the
        earlier chat turns were left out so that the conversation fits the context."""
        if not request.prompt.strip():
            raise PromptError("The prompt is empty: type something to send to the model.")
        if not request.chat:
            return model.tokenize(request.prompt, add_special=True, parse_special=False), [], 0
        stops: list[str] = []

        def render(history: Sequence[ChatTurn]) -> list[int]:
            try:
                chat = apply_chat_template(
                    model, chat_messages(request.system_prompt, history, request.prompt)
                )
            except DriverError as exc:
                raise PromptError(str(exc)) from None
            stops[:] = chat.stops
            return chat.tokens

        reserve = reply_reserve(n_ctx, request.sampling.max_tokens)
        tokens, dropped = fit_history(request.history, render, n_ctx, reserve)
        return tokens, stops, dropped

    def _reuse_cache(self, ctx: LlamaContext, tokens: list[int], reuse: bool) -> int:
        """Prepare the KV cache for `tokens`: keep the longest prefix it already holds (when
        `reuse`), remove the rest. Returns how many tokens are kept."""
        keep = reusable_prefix(self._cached, tokens) if reuse else 0
        if keep and ctx.n_tokens != len(self._cached):
            keep = 0  # the cache is not what was recorded (never expected): trust nothing of it
        if keep == 0:
            ctx.clear(data=False)
        elif keep < len(self._cached) and not ctx.keep_first(keep):
            ctx.clear(data=False)  # this memory cannot cut a sequence (recurrent state)
            keep = 0
        self._cached = tokens[:keep]
        return keep

    def _resync_cache(self, ctx: LlamaContext) -> None:
        """After a failed or stopped evaluation: drop whatever llama.cpp stored of it, so the cache
        holds exactly the tokens recorded as evaluated."""
        try:
            if ctx.n_tokens != len(self._cached) and not ctx.keep_first(len(self._cached)):
                ctx.clear(data=False)
                self._cached = []
        except DriverError:
            self._cached = []

    def generate(
        self,
        request: GenerationRequest,
        on_token: Callable[[TokenEvent], None] | None = None,
        *,
        t_start_ns: int | None = None,
    ) -> RunStats:
        """Evaluate the prompt from an empty cache (or, with `request.reuse_cache`, only what
        follows the longest prefix the cache already holds) and generate until EOS, max_tokens, a
        full context, a stop string or the cancel flag. Failures after the prompt was accepted come
        back as a RunStats with stop_reason ERROR, keeping the text generated so far.

        `t_start_ns` (time.monotonic_ns, a clock all processes share) is when the request was
        made, if earlier than this call: the time to the first token counts from there."""
        model, ctx = self._require()
        request.sampling.validate()
        t_start_ns = time.monotonic_ns() if t_start_ns is None else t_start_ns
        n_ctx = ctx.n_ctx
        tokens, template_stops, dropped = self._prompt_tokens(model, n_ctx, request)
        if not tokens:
            raise PromptError("The prompt gave no tokens to evaluate: type some text.")
        if len(tokens) >= n_ctx:
            alone = " with every earlier turn of the chat left out" if request.history else ""
            raise PromptError(
                f"The prompt is {len(tokens)} tokens{alone} but the context holds {n_ctx}: "
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
        # Without reuse a fresh evaluation every run: prompt statistics then mean the whole prompt.
        # With it, only what follows the prefix the cache already holds is evaluated.
        kept = self._reuse_cache(ctx, tokens, request.reuse_cache)
        with SamplerChain(model, request.sampling, self._seed) as sampler:
            try:
                ctx.watch_for_abort(True)
                try:
                    ctx.decode(tokens[kept:])
                finally:
                    ctx.watch_for_abort(False)
                self._cached = list(tokens)
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
                        first = len(stamps) == 1  # TTFT and prompt speed are known from here on
                        on_token(
                            TokenEvent(
                                len(stamps) - 1,
                                token,
                                emitted,
                                now,
                                ttft_s=(now - t_start_ns) / 1e9 if first else None,
                                prompt_tokens=len(tokens) - kept if first else None,
                            )
                        )
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
                    self._cached.append(token)
            except DriverError as exc:
                if isinstance(exc, DriverCancelled) or cancel.is_set():
                    stop_reason = StopReason.CANCELLED
                else:
                    stop_reason, error = StopReason.ERROR, str(exc)
                self._resync_cache(ctx)
        if stop_reason is not StopReason.STOP_STRING:
            text_parts.append(stops.flush() + text.flush())
        t_end_ns = time.monotonic_ns()
        return run_stats(
            request.chat,
            len(tokens) - kept,
            stamps,
            t_start_ns,
            t_end_ns,
            stop_reason,
            "".join(text_parts),
            ctx.n_tokens,
            error,
            prompt_tokens_reused=kept if request.reuse_cache else None,
            dropped_turns=dropped,
        )
