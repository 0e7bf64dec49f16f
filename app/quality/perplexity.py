"""Perplexity, computed the way llama.cpp's llama-perplexity computes it.

tools/perplexity/perplexity.cpp, `perplexity()`:

- the whole text is tokenized once, with the vocabulary's special tokens (BOS when the model's
  tokenizer adds one, exactly as `common_tokenize(ctx, text, true)`);
- it is cut into `n_chunk = n_tokens // n_ctx` chunks of n_ctx tokens (fewer with a chunk limit);
  a text shorter than 2 x n_ctx tokens is refused, as llama.cpp refuses it;
- each chunk is evaluated from an empty KV cache; when the vocabulary adds BOS, the chunk's first
  token is replaced by BOS for the evaluation;
- only the second half is scored: the logits at positions first = n_ctx/2 … n_ctx-2 predict the
  tokens at first+1 … n_ctx-1, so each chunk scores n_ctx - first - 1 tokens;
- nll = log-sum-exp(logits) - logit[target], summed as nll and nll²; PPL = exp(nll/count) and its
  uncertainty is PPL x sqrt((nll²/count - (nll/count)²) / (count - 1)).

LlamaScope evaluates one chunk per llama_decode (llama.cpp packs n_batch/n_ctx chunks into one
batch as separate sequences; the sequences do not see each other, so the scores are the same up
to floating-point summation order) and asks llama.cpp for logits only at the scored positions.
With `save_logits`, the same pass writes the base log-probabilities a KL-divergence evaluation
(app.quality.kl_divergence) compares other models with (app.quality.logits_file).

Why in-process (not a child process like quantization): scoring reads llama.cpp's logits buffer
directly into numpy, chunk after chunk; a child would have to ship ~25 MB of logits per chunk
back or duplicate the statistics. Unlike `llama_model_quantize`, `llama_decode` can be stopped
from outside (the abort callback), so Cancel works in-process: the cancel event is checked
between chunks and polled by llama.cpp inside a decode. The chunking helpers here
(`chunk_tokens`, `emit_progress`) serve the KL-divergence evaluation too, which walks the same
chunks.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from app import __version__
from app.llama.driver import CancelFlag
from app.quality.eval_model import EvalModel
from app.quality.eval_text import EvalText
from app.quality.eval_types import (
    ChunkProgress,
    EvalCancelled,
    EvalSettings,
    PerplexityPlan,
    PerplexityResult,
    TextTooShortError,
)
from app.quality.logits_file import (
    LogitsWriter,
    check_space_for_logits,
    expected_logits_file_bytes,
    tokens_sha256,
)
from app.quality.metrics import log_prob_row_width, ppl_and_uncertainty, quantize_log_probs, token_nll

log = logging.getLogger(__name__)


# ---- chunks and progress ----------------------------------------------------------------------
def emit_progress(on_progress: Callable[[ChunkProgress], None] | None, progress: ChunkProgress) -> None:
    """Tell the listener, if any; its exception is logged, not raised."""
    if on_progress is None:
        return
    try:
        on_progress(progress)
    except Exception:  # a listener's bug must not abort a long evaluation
        log.exception("evaluation progress listener failed")


def chunk_tokens(tokens: np.ndarray, i: int, n_ctx: int, add_bos: bool, bos: int) -> np.ndarray:
    """Chunk `i` of the text's tokens, as llama-perplexity evaluates it."""
    chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
    if add_bos:
        chunk[0] = bos  # llama.cpp replaces the chunk's first token by BOS for the evaluation
    return chunk


# ---- planning ----------------------------------------------------------------------------------
def _check_tokens(tokens: np.ndarray, n_ctx: int, text: EvalText) -> None:
    if not text.text.strip() or len(tokens) == 0:
        raise TextTooShortError("The evaluation text is empty.")
    if len(tokens) < 2 * n_ctx:
        raise TextTooShortError(
            f"The evaluation text '{text.name}' is only {len(tokens)} tokens; perplexity with a context of "
            f"{n_ctx} needs at least {2 * n_ctx} tokens (2 x n_ctx, as llama-perplexity requires). "
            "Use a longer "
            f"text or a smaller context."
        )


def plan_perplexity(model_path: str, text: EvalText, settings: EvalSettings) -> PerplexityPlan:
    """Tokenize (vocabulary only, no weights) and say how many chunks and how big a logits file."""
    settings.validate()
    with EvalModel(model_path, n_ctx=settings.n_ctx, vocab_only=True) as m:
        tokens = m.tokenize(text.text)
        n_vocab = m.n_vocab
    _check_tokens(tokens, settings.n_ctx, text)
    available = len(tokens) // settings.n_ctx
    n_chunks = min(available, settings.n_chunks or available)
    return PerplexityPlan(
        n_tokens=len(tokens),
        n_ctx=settings.n_ctx,
        n_chunks=n_chunks,
        n_chunks_available=available,
        n_vocab=n_vocab,
        logits_file_bytes=expected_logits_file_bytes(n_vocab, settings.n_ctx, n_chunks),
    )


# ---- the evaluation ----------------------------------------------------------------------------
def evaluate_perplexity(
    model_path: str,
    text: EvalText,
    settings: EvalSettings | None = None,
    *,
    save_logits: str | None = None,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
    free_bytes: Callable[[str], int] | None = None,
    override_memory: bool = False,
) -> PerplexityResult:
    """Perplexity of `model_path` on `text`; with `save_logits`, also write the KLD base file.

    Refused with the numbers (InsufficientMemoryError) before loading when the model and a context of
    n_ctx will not fit in memory, unless `override_memory`."""
    settings = settings or EvalSettings()
    settings.validate()
    cancel = cancel or threading.Event()
    n_ctx, first = settings.n_ctx, settings.first
    t0 = time.perf_counter()
    with EvalModel(
        model_path,
        n_ctx=n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        cancel=cancel,
        override_memory=override_memory,
    ) as m:
        tokens = m.tokenize(text.text)
        _check_tokens(tokens, n_ctx, text)
        available = len(tokens) // n_ctx
        n_chunks = min(available, settings.n_chunks or available)
        writer: LogitsWriter | None = None
        log_probs: np.ndarray | None = None
        if save_logits is not None:
            check_space_for_logits(
                save_logits, expected_logits_file_bytes(m.n_vocab, n_ctx, n_chunks), free_bytes=free_bytes
            )
            writer = LogitsWriter(save_logits, n_ctx, m.n_vocab, n_chunks, tokens)
            log_probs = np.empty((settings.scored_per_chunk, log_prob_row_width(m.n_vocab)), dtype=np.uint16)
        want = np.zeros(n_ctx, dtype=np.int8)
        want[first : n_ctx - 1] = 1  # the logits at n_ctx-1 would predict a token outside the chunk
        nll_sum = nll2_sum = 0.0
        count = 0
        running: list[float] = []
        per_chunk: list[float] = []
        t_eval = time.perf_counter()
        try:
            for i in range(n_chunks):
                if cancel.is_set():
                    raise EvalCancelled("Evaluation cancelled.")
                chunk = chunk_tokens(tokens, i, n_ctx, m.add_bos, m.bos_id)
                m.clear()
                logits = m.decode(chunk, 0, want)
                targets = tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx]
                if writer is not None and log_probs is not None:
                    nll = quantize_log_probs(logits, targets, log_probs)
                    writer.add_chunk(log_probs)
                else:
                    nll = token_nll(logits, targets)
                nll_sum += float(nll.sum())
                nll2_sum += float((nll * nll).sum())
                count += len(nll)
                per_chunk.append(math.exp(float(nll.mean())))
                ppl, unc = ppl_and_uncertainty(nll_sum, nll2_sum, count)
                running.append(ppl)
                elapsed = time.perf_counter() - t_eval
                emit_progress(
                    on_progress,
                    ChunkProgress(
                        "base logits" if writer else "perplexity",
                        i + 1,
                        n_chunks,
                        ppl,
                        unc,
                        None,
                        None,
                        (i + 1) * n_ctx / elapsed if elapsed > 0 else 0.0,
                        time.perf_counter() - t0,
                        m.path,
                    ),
                )
            eval_s = time.perf_counter() - t_eval
            if writer is not None:
                writer.finish(
                    m.path,
                    {
                        "model_name": m.info.display_name,
                        "vocab_sha256": m.vocab_sha256(),
                        "tokens_sha256": tokens_sha256(tokens[: n_ctx * n_chunks]),
                        "text_name": text.name,
                        "text_sha256": text.sha256,
                        "n_ctx": n_ctx,
                        "llamascope_version": __version__,
                        "created_unix": time.time(),
                    },
                )
                writer = None
        finally:
            if writer is not None:
                writer.abort()
        ppl, unc = ppl_and_uncertainty(nll_sum, nll2_sum, count)
        return PerplexityResult(
            model_path=m.path,
            text_name=text.name,
            text_sha256=text.sha256,
            n_ctx=n_ctx,
            n_chunks=n_chunks,
            n_tokens_text=len(tokens),
            n_scored=count,
            ppl=ppl,
            ppl_uncertainty=unc,
            mean_nll=nll_sum / count,
            running_ppl=tuple(running),
            chunk_ppl=tuple(per_chunk),
            tokens_per_s=n_chunks * n_ctx / eval_s if eval_s > 0 else 0.0,
            elapsed_s=time.perf_counter() - t0,
            add_bos=m.add_bos,
            logits_file=os.path.abspath(save_logits) if save_logits else None,
        )


__all__ = ["chunk_tokens", "emit_progress", "evaluate_perplexity", "plan_perplexity"]
