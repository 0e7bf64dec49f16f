"""`EvalModel`: a model and a context shaped for scoring, on app.llama.driver.

The perplexity, KL-divergence, multiple-choice and speed evaluations all score through it: it
tokenizes, hashes the vocabulary (so a KLD base from another tokenizer is refused), and decodes a
batch of tokens at chosen positions, returning the logits rows asked for straight from llama.cpp's
output buffer. It loads its own model and context, not the GUI's engine: scoring needs a context
shaped for it (n_ctx = n_batch = the chunk size) and must not disturb a chat in progress. Before
loading, it passes the memory check (app.model.memory.check_memory) for that model and context: an
evaluation that will not fit is refused with the numbers (InsufficientMemoryError) unless
`override_memory`.
`llama_decode` can be stopped from outside (the abort callback), so the cancel flag is polled
inside a decode as well as between them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import numpy as np

from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.driver import CancelFlag, DriverCancelled, DriverError, LlamaContext, LlamaModel
from app.model.file_format import ModelFileError
from app.model.gguf_info import inspect_model
from app.model.memory import check_memory
from app.model.settings import LoadSettings, count_logical_cores, count_physical_cores
from app.quality.eval_types import EvalCancelled, EvalError


def _flash_attn_choice(requested: bool | None) -> bool:
    """LlamaContext takes no "auto" (llama-perplexity's default, which EvalSettings' None stands
    for), so None is resolved here. llama.cpp's auto turns flash attention on unless the backend
    holding a layer lacks the kernel. The CPU backend has it, so on the CPU True is exactly what
    auto picks (the demo model's scores are bit-identical). A GPU backend without the kernel
    would run that one operation on the CPU instead of auto's plain attention: slower, and the
    scores differ only by rounding."""
    return True if requested is None else requested


class EvalModel:
    """A model and a context shaped for scoring, on app.llama.driver.

    Decoding uses a batch of its own rather than LlamaContext.decode: scoring needs chosen
    positions (to score several continuations after one prefix) and logits at chosen rows, and
    reads them straight from llama.cpp's output buffer (no n_batch x n_vocab copy, unlike
    `llama_cpp.Llama`). One thread at a time; close() frees everything.
    """

    def __init__(
        self,
        path: str,
        *,
        n_ctx: int,
        n_batch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        flash_attn: bool | None = None,
        vocab_only: bool = False,
        cancel: CancelFlag | None = None,
        override_memory: bool = False,
    ) -> None:
        try:
            self.info = inspect_model(path)
        except ModelFileError as exc:
            raise EvalError(str(exc)) from None
        batch_size = n_batch or n_ctx
        if not vocab_only:
            # Before llama.cpp allocates anything: the weights, and the context made below.
            check_memory(
                self.info,
                LoadSettings(
                    n_ctx=n_ctx,
                    n_batch=batch_size,
                    n_ubatch=min(512, batch_size),
                    n_gpu_layers=n_gpu_layers,
                    flash_attn=_flash_attn_choice(flash_attn),
                ),
                override=override_memory,
                purpose=f"evaluate {os.path.basename(path)} with a context of {n_ctx} tokens",
            )
            require_working_build(EvalError)
        self.path = os.path.abspath(path)
        lc = self._lc = llama_runtime.llama()
        self._cancel: CancelFlag = cancel or threading.Event()
        self._ctx: LlamaContext | None = None
        self._batch: Any = None
        self._batch_size = 0
        try:
            self._model = LlamaModel(
                self.path, n_gpu_layers=n_gpu_layers, vocab_only=vocab_only, progress=self._keep_loading
            )
        except DriverCancelled:
            raise EvalCancelled("Evaluation cancelled while loading the model.") from None
        except DriverError as exc:
            raise EvalError(str(exc)) from None
        # The driver has no per-token attributes; vocab_sha256 reads them through the C API.
        self._vocab = lc.llama_model_get_vocab(self._model.handle)
        self.n_vocab = self._model.n_vocab
        self.add_bos = self._model.add_bos
        self.bos_id = self._model.bos
        self.n_ctx = n_ctx
        if vocab_only:
            return
        try:
            self._ctx = LlamaContext(
                self._model,
                n_ctx=n_ctx,
                n_batch=batch_size,
                n_ubatch=min(512, batch_size),
                n_threads=n_threads or count_physical_cores(),
                n_threads_batch=n_threads_batch or n_threads or count_logical_cores(),
                flash_attn=_flash_attn_choice(flash_attn),
                cancel=self._cancel,
            )
        except DriverError as exc:
            self.close()
            raise EvalError(str(exc)) from None
        # Scoring decodes whole chunks, seconds each on a large model: let llama.cpp poll the
        # cancel flag inside them.
        self._ctx.watch_for_abort(True)
        self.n_ctx = self._ctx.n_ctx
        self._batch_size = self._ctx.n_batch
        self._batch = lc.llama_batch_init(self._batch_size, 0, 1)
        b = self._batch
        n = self._batch_size
        self._b_token = np.ctypeslib.as_array(b.token, shape=(n,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(n,))
        self._b_nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(n,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(n,))
        self._b_nseq[:] = 1
        for i in range(n):
            b.seq_id[i][0] = 0

    def _keep_loading(self, _fraction: float) -> bool:
        return not self._cancel.is_set()

    # -- vocabulary --
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> np.ndarray:
        """llama_tokenize over the whole text (llama.cpp's common_tokenize); int32 token ids."""
        try:
            tokens = self._model.tokenize(text, add_special=add_special, parse_special=parse_special)
        except DriverError as exc:
            raise EvalError(str(exc)) from None
        return np.array(tokens, dtype=np.int32)

    def vocab_sha256(self) -> str:
        """Hash of every token's text and attributes: equal for the same vocabulary, not otherwise."""
        lc = self._lc
        if self._model.closed:  # the vocabulary lives inside the model
            raise EvalError("The model has been unloaded.")
        vocab = self._vocab
        h = hashlib.sha256()
        for i in range(self.n_vocab):
            # The raw bytes, not LlamaModel.token_text: files written before hash them so.
            h.update(lc.llama_vocab_get_text(vocab, i) or b"")
            h.update(b"\0" + str(int(lc.llama_vocab_get_attr(vocab, i))).encode() + b"\n")
        return h.hexdigest()

    def token_text(self, token: int) -> str:
        return self._model.token_text(token)

    # -- evaluation --
    def _context(self) -> LlamaContext:
        if self._ctx is None:
            raise EvalError("This model was opened for its vocabulary only, or has been closed.")
        return self._ctx

    def clear(self) -> None:
        """Empty the KV cache, zeroing it as llama-perplexity does between chunks."""
        self._context().clear(data=True)

    def remove_from(self, pos: int) -> None:
        """Drop cached positions >= pos of sequence 0 (to score another continuation)."""
        lc = self._lc
        lc.llama_memory_seq_rm(lc.llama_get_memory(self._context().handle), 0, pos, -1)

    def decode(self, tokens: np.ndarray, start_pos: int, want_logits: np.ndarray | None) -> np.ndarray:
        """Evaluate `tokens` at positions start_pos…; returns the logits rows asked for.

        The returned array is a view of llama.cpp's buffer, valid until the next decode.
        """
        ctx = self._context()
        n = len(tokens)
        if n == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        if n > self._batch_size:
            raise EvalError(f"A batch of {n} tokens exceeds this context's batch size {self._batch_size}.")
        self._b_token[:n] = tokens
        self._b_pos[:n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        if want_logits is None:
            self._b_logits[:n] = 0
            self._b_logits[n - 1] = 1
        else:
            self._b_logits[:n] = want_logits
        self._batch.n_tokens = n
        rc = int(self._lc.llama_decode(ctx.handle, self._batch))
        if rc != 0:
            # llama_decode's codes: 2 = stopped by the abort callback, 1 = no room in the KV cache.
            if rc == 2 or self._cancel.is_set():
                raise EvalCancelled("Evaluation cancelled.")
            if rc == 1:
                raise EvalError(
                    f"The context of {ctx.n_ctx} tokens has no room for {n} more at position {start_pos}."
                )
            raise EvalError(f"llama.cpp failed to evaluate the tokens (llama_decode returned {rc}).")
        n_out = int(self._b_logits[:n].astype(bool).sum())
        ptr = self._lc.llama_get_logits(ctx.handle)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))

    def close(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self._model.close()

    def __enter__(self) -> EvalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EvalModel"]
