"""llama.cpp's C API, driven directly: model, context, sampler chain (text handling: app.llama.text).

The one place that calls llama-cpp-python's low-level bindings to run a model for generation.
Not `llama_cpp.Llama`: that class evaluates through its own token and logits copies and wraps
every sampler in Python objects, which costs 10-20 % of llama.cpp's speed on a small model. Here a
generated token costs one `llama_decode` of a prebuilt one-token batch and one
`llama_sampler_sample` of a chain of llama.cpp's own samplers.

Every call was checked against the llama.h vendored with the installed llama-cpp-python
(0.3.36): its bindings agree with that header for every function used here (argument lists,
return types, and the layouts of llama_model_params, llama_context_params, llama_batch,
llama_sampler_chain_params). Note that in this llama.cpp `llama_sampler_init_penalties` takes
n_vocab before the four penalty arguments (some llama.cpp versions take only the four), and
that the model parameters choose mmap/mlock through `load_mode`, not the older booleans.

The objects here are not thread-safe: use each from one thread at a time, and close a
LlamaContext (and SamplerChain) before the LlamaModel it was made from."""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol

from app.llama import runtime as llama_runtime
from app.model.fields import GGML_TYPE_IDS, LLAMA_DEFAULT_SEED
from app.model.settings import LoadSettings, SamplingSettings

log = logging.getLogger(__name__)

# The sampler chain keeps this many recent tokens for the repeat, frequency and presence
# penalties: llama.cpp's default (common_params_sampling.penalty_last_n) and Llama's.
PENALTY_LAST_N = 64

# Mirostat 1.0's m (tokens used to estimate the Zipf exponent), as llama.cpp's common sampler.
MIROSTAT_M = 100

# Older llama.cpp builds read a negative layer count as zero; INT32_MAX means "all" in every one.
_ALL_LAYERS = 0x7FFFFFFF


class DriverError(Exception):
    """llama.cpp refused or failed an operation; the message is meant for the user."""


class DriverCancelled(DriverError):
    """The caller's cancel flag stopped the operation (a load, or a prompt evaluation)."""


class CancelFlag(Protocol):
    """What the driver needs of a cancel flag: threading.Event, multiprocessing.Event, ..."""

    def is_set(self) -> bool: ...


_backend_lock = threading.Lock()
_backend_ready = False
_numa_ready = False


def _lc() -> ModuleType:
    """The llama_cpp bindings with LlamaScope's log routing, and llama.cpp's backend initialised."""
    global _backend_ready
    lc = llama_runtime.llama()
    if not _backend_ready:
        with _backend_lock:
            if not _backend_ready:
                lc.llama_backend_init()
                _backend_ready = True
    return lc


def init_numa() -> None:
    """Spread llama.cpp's threads and memory over the NUMA nodes. Process-wide, so only once."""
    global _numa_ready
    lc = _lc()
    with _backend_lock:
        if not _numa_ready:
            lc.llama_numa_init(lc.GGML_NUMA_STRATEGY_DISTRIBUTE)
            _numa_ready = True


_RE_LOG_ORIGIN = re.compile(r"^\w+:\s+")  # the C function that logged the line ("gguf_init_from_file: ")

# The ring buffer keeps no log levels, so error lines are told by their words.
_RE_FAILURE_WORDS = re.compile(r"error|fail|invalid|unable|cannot|could not|out of memory", re.IGNORECASE)


def last_log_error(lines: Sequence[str]) -> str | None:
    """llama.cpp's own reason for a failure, from the log lines written while it failed.

    A failure is logged from the inside out ("failed to open GGUF file 'x' (No such file or
    directory)", then "error loading model: failed to load model from x", then "failed to load
    model"), so the last line that says more than "failed to load model" is the reason.
    """
    marker = "error loading model:"
    reasons: list[str] = []
    for line in lines:
        if marker in line:
            reasons.append(line.split(marker, 1)[1].strip())
        elif _RE_FAILURE_WORDS.search(line):
            reasons.append(_RE_LOG_ORIGIN.sub("", line.strip()))
    specific = [r for r in reasons if "failed to load model" not in r]
    return (specific or reasons)[-1] if reasons else None


def explain_load_failure(path: str, log_lines: Sequence[str]) -> str:
    """Turn llama.cpp's load failure into a sentence a user can act on, quoting its own reason."""
    reason = last_log_error(log_lines)
    if reason is None:
        return f"llama.cpp could not load {path}; it logged no reason (is the file a complete GGUF model?)."
    if "architecture" in reason:
        version = llama_runtime.build_info().llama_cpp_python_version
        return (
            f"llama.cpp cannot load {path}: {reason}. This build (llama-cpp-python {version}) does "
            "not support that model architecture; a newer llama-cpp-python may."
        )
    return f"llama.cpp could not load {path}: {reason}"


# ---- model --------------------------------------------------------------------------------------
class LlamaModel:
    """A GGUF model loaded by llama.cpp: its weights and its vocabulary."""

    def __init__(
        self,
        path: str,
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        progress: Callable[[float], bool] | None = None,
    ) -> None:
        """Load `path`. `progress(fraction)` is called while tensors are read; False aborts the
        load with DriverCancelled. Any other failure raises DriverError with llama.cpp's reason."""
        lc = self._lc = _lc()
        self.path = path
        self._handle: Any = None  # llama_model *, an int address (c_void_p restype)
        self._aborted = False
        params = lc.llama_model_default_params()
        params.n_gpu_layers = _ALL_LAYERS if n_gpu_layers < 0 else n_gpu_layers
        params.vocab_only = vocab_only
        if use_mmap and use_mlock:
            params.load_mode = lc.LLAMA_LOAD_MODE_MMAP_MLOCK
        elif use_mlock:
            params.load_mode = lc.LLAMA_LOAD_MODE_MLOCK
        elif use_mmap:
            params.load_mode = lc.LLAMA_LOAD_MODE_MMAP
        else:
            params.load_mode = lc.LLAMA_LOAD_MODE_NONE
        # Held until close(): the model keeps a copy of its parameters, pointer included.
        self._progress_cb: Any = None
        if progress is not None:

            def on_progress(fraction: float, _data: Any) -> bool:
                try:
                    keep_going = bool(progress(float(fraction)))
                except Exception:  # an exception must not unwind through native code
                    log.exception("load progress callback failed")
                    keep_going = True
                self._aborted = self._aborted or not keep_going
                return keep_going

            self._progress_cb = lc.llama_progress_callback(on_progress)
            params.progress_callback = self._progress_cb
        mark = llama_runtime.log_mark()
        handle = lc.llama_model_load_from_file(path.encode("utf-8"), params)
        if not handle:
            if self._aborted:
                raise DriverCancelled("Loading was cancelled.")
            raise DriverError(explain_load_failure(path, llama_runtime.log_since(mark)))
        self._handle = handle
        self._vocab: Any = lc.llama_model_get_vocab(handle)
        self.n_vocab: int = int(lc.llama_vocab_n_tokens(self._vocab))
        self.bos: int = int(lc.llama_vocab_bos(self._vocab))  # -1 (LLAMA_TOKEN_NULL) if none
        self.eos: int = int(lc.llama_vocab_eos(self._vocab))
        self.add_bos: bool = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.n_ctx_train: int = int(lc.llama_model_n_ctx_train(handle))
        self._piece = ctypes.create_string_buffer(64)

    @property
    def handle(self) -> Any:
        """The `llama_model *`; raises DriverError once closed."""
        self._require_open()
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Free the weights now. Safe to call twice."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lc.llama_model_free(handle)
        self._progress_cb = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- vocabulary ------------------------------------------------------------------------------
    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT, <|im_end|> and whatever else the vocabulary marks so."""
        return bool(self._lc.llama_vocab_is_eog(self._vocab_checked(), token))

    def token_text(self, token: int) -> str:
        """The vocabulary's text of a token ("<|im_start|>", "Ġthe"), "" for -1 (no such token)."""
        if token < 0:
            return ""
        self._require_open()  # a freed model's vocabulary is freed memory
        return (self._lc.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template (GGUF tokenizer.chat_template), None if it has none."""
        raw = self._lc.llama_model_chat_template(self.handle, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, None if the model has no such key."""
        lc = self._lc
        size = 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = int(lc.llama_model_meta_val_str(self.handle, key.encode("utf-8"), buf, size))
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1  # like snprintf: n is the full length; retry with room for it
        return None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """llama_tokenize: `add_special` adds BOS/EOS as the vocabulary asks, `parse_special`
        turns "<|im_start|>" into its one special token instead of spelling it out."""
        lc = self._lc
        data = text.encode("utf-8")
        capacity = len(data) + 8  # at most one token per byte, plus BOS/EOS and a space prefix
        for _ in range(2):
            buf = (lc.llama_token * capacity)()
            vocab = self._vocab_checked()
            n = int(lc.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special))
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise DriverError("llama.cpp could not tokenize the text.")

    def token_to_piece(self, token: int, *, special: bool) -> bytes:
        """The bytes a token stands for; may be part of a UTF-8 character."""
        lc = self._lc
        vocab = self._vocab_checked()
        n = int(lc.llama_token_to_piece(vocab, token, self._piece, len(self._piece), 0, special))
        if n < 0:  # -n is the size it needs
            self._piece = ctypes.create_string_buffer(-n)
            n = int(lc.llama_token_to_piece(vocab, token, self._piece, len(self._piece), 0, special))
        return self._piece.raw[: max(n, 0)]

    def detokenize(self, tokens: Sequence[int], *, special: bool) -> str:
        """llama_detokenize: the text of `tokens`, as llama.cpp renders it (special tokens shown
        if `special`; invalid UTF-8 replaced)."""
        lc = self._lc
        ids = (lc.llama_token * len(tokens))(*tokens)
        size = max(64, 8 * len(tokens))
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = int(lc.llama_detokenize(self._vocab_checked(), ids, len(tokens), buf, size, False, special))
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise DriverError("llama.cpp could not detokenize the tokens.")

    def _require_open(self) -> None:
        if self._handle is None:
            raise DriverError("The model has been unloaded.")

    def _vocab_checked(self) -> Any:
        self._require_open()  # the vocabulary lives inside the model
        return self._vocab


# ---- context ------------------------------------------------------------------------------------
def _auto_flash_attn(log_lines: Sequence[str]) -> bool | None:
    """What flash attention "auto" resolved to, from llama.cpp's log of the context's creation."""
    for line in reversed(log_lines):
        if "Flash Attention" in line:
            if "not supported" in line or "disabled" in line:
                return False
            if "enabled" in line:
                return True
    return None


class LlamaContext:
    """A llama.cpp context (KV cache and compute buffers) on a loaded model, for one sequence."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int,
        n_threads_batch: int,
        flash_attn: bool | None = False,  # None: llama.cpp chooses (LLAMA_FLASH_ATTN_TYPE_AUTO)
        type_k: int = 1,  # ggml_type ids (app.model.fields.GGML_TYPE_IDS); 1 = f16
        type_v: int = 1,
        offload_kqv: bool = True,
        cancel: CancelFlag | None = None,
    ) -> None:
        lc = self._lc = _lc()
        self._model = model
        self._handle: Any = None
        self._cancel = cancel
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        # llama.cpp clamps these the same way; doing it here keeps the chunking in decode() right.
        params.n_batch = min(n_ctx, n_batch)
        params.n_ubatch = min(params.n_batch, n_ubatch)
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash_attn is None
            else lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k = type_k
        params.type_v = type_v
        params.offload_kqv = offload_kqv
        # Created once and held by self: llama.cpp keeps the pointer for the context's lifetime.
        self._abort_cb = lc.ggml_abort_callback(self._should_abort)
        self._no_abort_cb = lc.ggml_abort_callback()  # a NULL function pointer: "no callback"
        mark = llama_runtime.log_mark()
        handle = lc.llama_init_from_model(model.handle, params)
        if not handle:
            reason = last_log_error(llama_runtime.log_since(mark)) or "it logged no reason"
            raise DriverError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}: {reason}. "
                "A smaller context (n_ctx), batch or a quantized KV cache needs less memory."
            )
        self._handle = handle
        # Whether flash attention runs: as asked, or, for auto, what llama.cpp's resolve_fused_ops
        # logged ("Flash Attention enabled" / "Flash Attention not supported, set to disabled");
        # None when auto left no such line.
        self.flash_attn_used: bool | None = (
            bool(flash_attn) if flash_attn is not None else _auto_flash_attn(llama_runtime.log_since(mark))
        )
        self._memory: Any = lc.llama_get_memory(handle)
        self.n_ctx: int = int(lc.llama_n_ctx(handle))
        self.n_batch: int = int(lc.llama_n_batch(handle))
        # One prebuilt batch for generation: a token costs a store and a llama_decode, no allocation.
        self._one = (lc.llama_token * 1)()
        self._one_batch = lc.llama_batch_get_one(self._one, 1)
        self._logits_ready = False

    @property
    def handle(self) -> Any:
        """The `llama_context *`; raises DriverError once closed."""
        if self._handle is None:
            raise DriverError("The model has been unloaded.")
        return self._handle

    @property
    def model(self) -> LlamaModel:
        return self._model

    @classmethod
    def for_settings(
        cls,
        model: LlamaModel,
        settings: LoadSettings,
        *,
        n_ctx: int | None = None,
        cancel: CancelFlag | None = None,
        flash_attn_type: int | None = None,
    ) -> LlamaContext:
        """A context shaped by the Model Config's load settings (`n_ctx` overrides theirs;
        `flash_attn_type`, llama.cpp's -1 auto / 0 off / 1 on, overrides their flash_attn)."""
        flash_attn: bool | None = settings.flash_attn
        if flash_attn_type is not None:
            flash_attn = None if flash_attn_type < 0 else bool(flash_attn_type)
        return cls(
            model,
            n_ctx=settings.n_ctx if n_ctx is None else n_ctx,
            n_batch=settings.n_batch,
            n_ubatch=settings.n_ubatch,
            n_threads=settings.n_threads,
            n_threads_batch=settings.n_threads_batch,
            flash_attn=flash_attn,
            type_k=GGML_TYPE_IDS[settings.type_k],
            type_v=GGML_TYPE_IDS[settings.type_v],
            offload_kqv=settings.offload_kqv,
            cancel=cancel,
        )

    def close(self) -> None:
        """Free the KV cache and buffers now. Safe to call twice."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lc.llama_free(handle)

    def __enter__(self) -> LlamaContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _should_abort(self, _data: Any) -> bool:
        try:
            return self._cancel is not None and bool(self._cancel.is_set())
        except Exception:  # e.g. a multiprocessing flag whose manager went away; never unwind into C
            return False

    def watch_for_abort(self, enabled: bool) -> None:
        """Let llama.cpp poll the cancel flag inside llama_decode, or stop it polling.

        ggml calls the abort callback once per graph node (hundreds per token) and each call
        takes the GIL. That is what makes a long prompt evaluation cancellable, but during token
        generation it would cost a few per cent of speed, and there the caller checks the flag
        between tokens anyway. So switch it on for prompts only.
        """
        callback = self._abort_cb if enabled and self._cancel is not None else self._no_abort_cb
        self._lc.llama_set_abort_callback(self.handle, callback, None)

    @property
    def logits_ready(self) -> bool:
        """Whether the last decode succeeded, so there are logits to sample from. (Sampling without
        them fails an assertion inside llama.cpp, which aborts the whole process.)"""
        return self._logits_ready and self._handle is not None

    @property
    def n_tokens(self) -> int:
        """Tokens held in the KV cache for sequence 0 (what llama.cpp kept, even after an abort)."""
        return int(self._lc.llama_memory_seq_pos_max(self._memory_checked(), 0)) + 1

    def clear(self, *, data: bool = True) -> None:
        """Empty the KV cache. `data=False` forgets the cells without zeroing the buffers, which is
        all a fresh evaluation needs and costs nothing even for a multi-GiB cache."""
        self._logits_ready = False
        self._lc.llama_memory_clear(self._memory_checked(), data)

    def keep_first(self, n: int) -> bool:
        """Remove every token from position `n` on from sequence 0 (llama_memory_seq_rm), keeping
        the first `n` for the next decode to continue from. False when this memory cannot cut a
        sequence in the middle (a recurrent model's state): the caller then clears it instead."""
        self._logits_ready = False  # the logits belong to a token that may be gone
        return bool(self._lc.llama_memory_seq_rm(self._memory_checked(), 0, n, -1))

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate `tokens` after what the cache holds, in n_batch chunks; logits of the last one
        are then ready for sampling. Raises DriverCancelled if the abort callback stopped it."""
        lc = self._lc
        for start in range(0, len(tokens), self.n_batch):
            self._logits_ready = False
            chunk = tokens[start : start + self.n_batch]
            ids = (lc.llama_token * len(chunk))(*chunk)
            self._check(int(lc.llama_decode(self.handle, lc.llama_batch_get_one(ids, len(chunk)))))
            self._logits_ready = True

    def decode_one(self, token: int) -> None:
        """Evaluate one generated token (the per-token path: no allocation)."""
        self._logits_ready = False
        self._one[0] = token
        self._check(int(self._lc.llama_decode(self.handle, self._one_batch)))
        self._logits_ready = True

    def _check(self, rc: int) -> None:
        if rc == 0:
            return
        if rc == 2:
            raise DriverCancelled("Cancelled while llama.cpp was evaluating.")
        if rc == 1:
            raise DriverError(
                f"The context is full ({self.n_ctx} tokens): raise n_ctx and reload, or shorten the prompt."
            )
        raise DriverError(f"llama.cpp failed to evaluate the tokens (llama_decode returned {rc}).")

    def _memory_checked(self) -> Any:
        if self._handle is None:  # the memory module lives inside the context
            raise DriverError("The model has been unloaded.")
        return self._memory


# ---- sampling -----------------------------------------------------------------------------------
class SamplerChain:
    """llama.cpp's own samplers, chained in the order of its common sampler (common/sampling.cpp):
    penalties, top-k, typical, top-p, min-p, temperature, then a draw from the distribution;
    mirostat replaces top-k … min-p; temperature <= 0 means greedy.

    Two choices keep today's outputs: the penalties see only generated tokens (sample() accepts
    each one), not the prompt, as llama-cpp-python's Llama did; and they apply in mirostat mode
    too, where llama.cpp's common sampler drops them (the settings promise mirostat replaces
    top-k, top-p and min-p only).
    """

    def __init__(
        self,
        model: LlamaModel,
        sampling: SamplingSettings,
        seed: int,
        *,
        typical_p: float | None = None,  # overrides sampling.typical_p (tests)
        penalty_last_n: int = PENALTY_LAST_N,
    ) -> None:
        """`seed` is a uint32; LLAMA_DEFAULT_SEED (0xFFFFFFFF) draws a random one."""
        if not 0 <= seed <= LLAMA_DEFAULT_SEED:
            raise DriverError(f"The seed must be between 0 and {LLAMA_DEFAULT_SEED}; got {seed}.")
        lc = self._lc = _lc()
        s = sampling
        params = lc.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lc.llama_sampler_chain_init(params)
        self._chain: Any = chain
        n_vocab = model.n_vocab
        stages = [
            lc.llama_sampler_init_penalties(
                n_vocab, penalty_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            )
        ]
        if s.temperature <= 0:
            stages.append(lc.llama_sampler_init_greedy())
        elif s.mirostat_mode == 1:
            stages.append(lc.llama_sampler_init_temp(s.temperature))
            stages.append(
                lc.llama_sampler_init_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, MIROSTAT_M)
            )
        elif s.mirostat_mode == 2:
            stages.append(lc.llama_sampler_init_temp(s.temperature))
            stages.append(lc.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
        else:
            min_keep = 1
            stages.append(lc.llama_sampler_init_top_k(s.top_k))  # k <= 0 is a no-op in llama.cpp
            typical = s.typical_p if typical_p is None else typical_p
            stages.append(lc.llama_sampler_init_typical(typical, min_keep))
            stages.append(lc.llama_sampler_init_top_p(s.top_p, min_keep))
            stages.append(lc.llama_sampler_init_min_p(s.min_p, min_keep))
            stages.append(lc.llama_sampler_init_temp(s.temperature))
            stages.append(lc.llama_sampler_init_dist(seed))
        for stage in stages:  # the chain owns them from here and frees them with itself
            lc.llama_sampler_chain_add(chain, stage)

    def sample(self, ctx: LlamaContext, idx: int = -1) -> int:
        """A token from the logits of output `idx` (-1: the last decoded), accepted into the
        chain's state (penalty history, mirostat's mu)."""
        if not ctx.logits_ready:
            raise DriverError("Nothing to sample from: no evaluation succeeded since the cache was cleared.")
        return int(self._lc.llama_sampler_sample(self._chain_checked(), ctx.handle, idx))

    def accept(self, token: int) -> None:
        """Tell the chain about a token it did not sample (e.g. to penalise prompt tokens)."""
        self._lc.llama_sampler_accept(self._chain_checked(), token)

    def reset(self) -> None:
        """Forget the penalty history and mirostat state."""
        self._lc.llama_sampler_reset(self._chain_checked())

    def close(self) -> None:
        chain, self._chain = self._chain, None
        if chain is not None:
            self._lc.llama_sampler_free(chain)

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chain_checked(self) -> Any:
        if self._chain is None:
            raise DriverError("The sampler has been freed.")
        return self._chain
