"""KL divergence of a model from a base, as llama-perplexity --kl-divergence computes it.

`evaluate_kl_divergence` (llama.cpp's `kl_divergence()`) scores a model on the tokens of a saved
base-logits file (app.quality.logits_file; llama-perplexity --kl-divergence-base writes the same
format), chunk by chunk as perplexity does, and compares its next-token distribution with the
base's at every scored position. The statistics (mean KLD ± uncertainty, percentiles, Δp, RMS
Δp, same top p, ln(PPL(Q)/PPL(base))) follow llama.cpp line by line (app.quality.metrics),
except that an uncertainty llama.cpp prints as 0 because there are too few values (<= 10) is
None here. A base from another vocabulary or other tokens is refused: llama.cpp only warns, and
the figures would be noise.

`evaluate_against_base` is the whole comparison in one go: the base's perplexity and
log-probabilities on a text, then every variant's KL divergence from them.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable

import numpy as np

from app.llama.driver import CancelFlag
from app.quality.eval_model import EvalModel
from app.quality.eval_text import EvalText
from app.quality.eval_types import (
    BaseComparison,
    ChunkProgress,
    EvalCancelled,
    EvalSettings,
    IncompatibleBaseError,
    KLDivergenceResult,
)
from app.quality.logits_file import LogitsFileInfo, LogitsReader, read_logits_info
from app.quality.metrics import KldSums, kld_rows, kld_summary, mean_and_uncertainty
from app.quality.perplexity import chunk_tokens, emit_progress, evaluate_perplexity


def check_base_compatible(info: LogitsFileInfo, model: EvalModel, *, vocab_sha256: str | None = None) -> None:
    """Refuse a base computed with another vocabulary (llama.cpp only warns; the figures would be noise)."""
    name = os.path.basename(info.path)
    if info.n_vocab != model.n_vocab:
        raise IncompatibleBaseError(
            f"The KLD base {name} was computed with a vocabulary of {info.n_vocab} tokens and "
            f"{os.path.basename(model.path)} has {model.n_vocab}: the models do not share a tokenizer, so "
            "their probabilities cannot be compared."
        )
    if info.vocab_sha256 and (vocab_sha256 or model.vocab_sha256()) != info.vocab_sha256:
        raise IncompatibleBaseError(
            f"The KLD base {name} was computed with a different vocabulary than "
            f"{os.path.basename(model.path)} "
            "(same size, different tokens): their probabilities cannot be compared."
        )


def evaluate_kl_divergence(
    model_path: str,
    logits_file: str,
    settings: EvalSettings | None = None,
    *,
    text: EvalText | None = None,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
    override_memory: bool = False,
) -> KLDivergenceResult:
    """KL divergence of `model_path` from the base log-probabilities in `logits_file`.

    The tokens come from the file (as in llama.cpp); n_ctx is the file's. `settings.n_chunks`
    limits the chunks. With `text`, the file's tokens must be that text's tokens. Refused with the
    numbers (InsufficientMemoryError) before loading when it will not fit, unless `override_memory`.
    """
    settings = settings or EvalSettings()
    settings.validate()
    cancel = cancel or threading.Event()
    info = read_logits_info(logits_file)
    n_ctx = info.n_ctx
    first = n_ctx // 2
    t0 = time.perf_counter()
    reader = LogitsReader(info)
    try:
        tokens = reader.tokens()
        with EvalModel(
            model_path,
            n_ctx=n_ctx,
            n_threads=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            flash_attn=settings.flash_attn,
            cancel=cancel,
            override_memory=override_memory,
        ) as m:
            check_base_compatible(info, m)
            if text is not None:
                own = m.tokenize(text.text)[: len(tokens)]
                if len(own) != len(tokens) or not np.array_equal(own, tokens):
                    raise IncompatibleBaseError(
                        f"The KLD base {os.path.basename(info.path)} was computed on other tokens than "
                        f"'{text.name}' gives with this model (another text, or another tokenizer)."
                    )
            n_chunks = min(info.n_chunks, settings.n_chunks or info.n_chunks)
            per_chunk = n_ctx - 1 - first
            want = np.zeros(n_ctx, dtype=np.int8)
            want[first : n_ctx - 1] = 1
            sums = KldSums()
            # float32, as llama.cpp keeps them: its percentiles interpolate between float values
            kld_values = np.empty(per_chunk * n_chunks, dtype=np.float32)
            p_diff_values = np.empty(per_chunk * n_chunks, dtype=np.float32)
            running: list[float] = []
            t_eval = time.perf_counter()
            for i in range(n_chunks):
                if cancel.is_set():
                    raise EvalCancelled("Evaluation cancelled.")
                base = reader.chunk(i)
                chunk = chunk_tokens(tokens, i, n_ctx, m.add_bos, m.bos_id)
                m.clear()
                logits = m.decode(chunk, 0, want)
                targets = tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx]
                kld, p_diff = kld_rows(logits, base, targets, sums)
                kld_values[i * per_chunk : (i + 1) * per_chunk] = kld
                p_diff_values[i * per_chunk : (i + 1) * per_chunk] = p_diff
                kld_mean = sums.sum_kld / sums.count
                running.append(kld_mean)
                log_ppl, log_unc = mean_and_uncertainty(sums.sum_nll, sums.sum_nll2, sums.count)
                elapsed = time.perf_counter() - t_eval
                emit_progress(
                    on_progress,
                    ChunkProgress(
                        "kl divergence",
                        i + 1,
                        n_chunks,
                        math.exp(log_ppl),
                        None if log_unc is None else math.exp(log_ppl) * log_unc,
                        kld_mean,
                        sums.n_same_top / sums.count,
                        (i + 1) * n_ctx / elapsed if elapsed > 0 else 0.0,
                        time.perf_counter() - t0,
                        m.path,
                    ),
                )
            eval_s = time.perf_counter() - t_eval
            summary = kld_summary(sums, kld_values, p_diff_values)
            return KLDivergenceResult(
                model_path=m.path,
                base_model=info.base_model or "unknown (llama.cpp logits file)",
                logits_file=info.path,
                n_ctx=n_ctx,
                n_chunks=n_chunks,
                n_scored=sums.count,
                running_kld=tuple(running),
                tokens_per_s=n_chunks * n_ctx / eval_s if eval_s > 0 else 0.0,
                elapsed_s=time.perf_counter() - t0,
                **summary,
            )
    finally:
        reader.close()


# ---- a base and its variants in one go ----------------------------------------------------------
def check_same_vocabulary(base_path: str, variant_paths: list[str] | tuple[str, ...]) -> None:
    """Refuse variants whose vocabulary differs from the base's (vocabularies only: no weights)."""
    with EvalModel(base_path, n_ctx=512, vocab_only=True) as base:
        base_hash = base.vocab_sha256()
        for path in variant_paths:
            with EvalModel(path, n_ctx=512, vocab_only=True) as v:
                if v.n_vocab != base.n_vocab or v.vocab_sha256() != base_hash:
                    raise IncompatibleBaseError(
                        f"{os.path.basename(base_path)} ({base.n_vocab} tokens) and {os.path.basename(path)} "
                        f"({v.n_vocab} tokens) do not share a vocabulary: KL divergence between them means "
                        "nothing."
                    )


def evaluate_against_base(
    base_path: str,
    variant_paths: list[str] | tuple[str, ...],
    text: EvalText,
    settings: EvalSettings | None = None,
    *,
    logits_file: str | None = None,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
    free_bytes: Callable[[str], int] | None = None,
    override_memory: bool = False,
) -> BaseComparison:
    """The base's log-probabilities on `text`, then every variant's KL divergence from them.

    `logits_file`: where to keep the base's log-probabilities (llama.cpp format); None writes
    them to a temporary file that is deleted at the end (also on cancel or error). Vocabularies
    are checked first, before the (long) base pass. Each model passes the memory check as it loads
    (one at a time: the base is closed before the variants load), unless `override_memory`.
    """
    settings = settings or EvalSettings()
    cancel = cancel or threading.Event()
    check_same_vocabulary(base_path, variant_paths)
    temp: str | None = None
    if logits_file is None:
        import tempfile

        folder = tempfile.gettempdir()
        temp = logits_file = os.path.join(folder, f"llamascope-base-{secrets.token_hex(6)}.logits")
    try:
        base = evaluate_perplexity(
            base_path,
            text,
            settings,
            save_logits=logits_file,
            cancel=cancel,
            on_progress=on_progress,
            free_bytes=free_bytes,
            override_memory=override_memory,
        )
        variants = tuple(
            evaluate_kl_divergence(
                path,
                logits_file,
                settings,
                cancel=cancel,
                on_progress=on_progress,
                override_memory=override_memory,
            )
            for path in variant_paths
        )
        return BaseComparison(base, variants)
    finally:
        if temp is not None and os.path.exists(temp):
            os.remove(temp)


__all__ = [
    "check_base_compatible",
    "check_same_vocabulary",
    "evaluate_against_base",
    "evaluate_kl_divergence",
]
