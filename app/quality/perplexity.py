"""Perplexity and KL divergence, computed the way llama.cpp's llama-perplexity computes them.

Perplexity (tools/perplexity/perplexity.cpp, `perplexity()`):

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

KL divergence (`kl_divergence()`, llama-perplexity --kl-divergence-base / --kl-divergence): the
base model's log-probabilities are saved in llama.cpp's own file format ("_logits_", n_ctx,
n_vocab, n_chunk, the tokens, then per scored position two floats and n_vocab uint16 values; see
`quantize_log_probs`), so files are interchangeable with llama-perplexity's. LlamaScope appends a
trailer llama.cpp ignores, with the base model's fingerprint, a hash of its vocabulary, a hash of
the tokens and a CRC per chunk, so a file from another vocabulary, another text or a damaged disk
is refused instead of producing numbers. The statistics (mean KLD ± uncertainty, percentiles,
Δp, RMS Δp, same top p, ln(PPL(Q)/PPL(base))) follow `kl_divergence()` line by line, except that
an uncertainty llama.cpp prints as 0 because there are too few values (<= 10) is None here.

Why in-process (not a child process like quantization): scoring reads llama.cpp's logits buffer
directly into numpy, chunk after chunk; a child would have to ship ~25 MB of logits per chunk
back or duplicate the statistics. Unlike `llama_model_quantize`, `llama_decode` can be stopped
from outside (the abort callback), so Cancel works in-process: the cancel event is checked
between chunks and polled by llama.cpp inside a decode. The evaluation loads its own model and
context (not the GUI's Engine): it needs a context shaped for scoring (n_ctx = n_batch = the
chunk size) and must not disturb a chat in progress. `EvalJob` runs it on a named thread.
The model and context come from app.llama.driver. Settings, progress and results are plain
frozen data and the cancel flag anything with is_set(), so a whole evaluation, statistics
included, can run in another process without changing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from app import __version__
from app.common.formatting import format_bytes
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.driver import CancelFlag, DriverCancelled, DriverError, LlamaContext, LlamaModel
from app.model.gguf_info import ModelFileError, inspect_model
from app.model.settings import count_logical_cores, count_physical_cores
from app.quality.eval_text import EvalText

log = logging.getLogger(__name__)

T = TypeVar("T")

LOGITS_MAGIC = b"_logits_"
TRAILER_MAGIC = b"LSTRAIL1"
TRAILER_FORMAT = "llamascope-logits-trailer"
LOG_PROB_FLOOR = -16.0  # llama.cpp ignores base probabilities below e^-16 in the KLD sum
_ROW_BLOCK = 16  # rows of logits processed together: keeps the float temporaries in cache


# ---- errors ------------------------------------------------------------------------------------
class EvalError(Exception):
    """An evaluation that cannot run or did not finish; the message is meant for the user."""


class EvalCancelled(EvalError):
    """The user stopped the evaluation; no result (and no logits file) was produced."""


class TextTooShortError(EvalError):
    """The evaluation text has fewer than 2 x n_ctx tokens."""


class LogitsFileError(EvalError):
    """A logits file that cannot be used: corrupt, truncated, or from an incompatible model/text."""


class IncompatibleBaseError(LogitsFileError):
    """The KLD base was computed with another vocabulary or on other tokens."""


# ---- settings and data types ------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """How to run a perplexity / KLD evaluation (llama-perplexity's -c, --chunks, -t, -ngl)."""

    n_ctx: int = 512
    n_chunks: int | None = None  # None: every chunk of the text
    n_threads: int | None = None  # None: every logical core for the batch (prompt) work
    n_gpu_layers: int = 0
    flash_attn: bool | None = None  # None: llama.cpp decides ("auto", llama-perplexity's default)

    def validate(self) -> None:
        if self.n_ctx < 8 or self.n_ctx % 2:
            raise EvalError(
                f"The context size must be an even number of at least 8 tokens, not {self.n_ctx}."
            )
        if self.n_chunks is not None and self.n_chunks < 1:
            raise EvalError(f"The chunk limit must be 1 or more, not {self.n_chunks}.")
        if self.n_threads is not None and self.n_threads < 1:
            raise EvalError(f"The thread count must be 1 or more, not {self.n_threads}.")

    @property
    def first(self) -> int:
        """Index of the first position whose logits are scored (llama.cpp: n_ctx/2)."""
        return self.n_ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - self.first - 1


@dataclass(frozen=True)
class ChunkProgress:
    """One more chunk evaluated; running figures over the chunks so far."""

    phase: str  # "perplexity", "base logits" or "kl divergence"
    chunk: int  # chunks done, 1-based
    n_chunks: int
    ppl: float
    ppl_uncertainty: float | None
    mean_kld: float | None  # KLD phase only
    same_top_p: float | None  # KLD phase only, 0..1
    tokens_per_s: float  # tokens evaluated (n_ctx per chunk) per second so far
    elapsed_s: float
    model_path: str = ""  # the model being evaluated

    @property
    def fraction(self) -> float:
        return self.chunk / self.n_chunks if self.n_chunks else 0.0


@dataclass(frozen=True)
class PerplexityPlan:
    """What an evaluation will do, known before it runs (tokenizing only)."""

    n_tokens: int
    n_ctx: int
    n_chunks: int
    n_chunks_available: int
    n_vocab: int
    logits_file_bytes: int  # size of a base-logits file for these chunks (llama.cpp format)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on one text, as llama-perplexity's "Final estimate" reports it."""

    model_path: str
    text_name: str
    text_sha256: str
    n_ctx: int
    n_chunks: int
    n_tokens_text: int
    n_scored: int
    ppl: float
    ppl_uncertainty: float | None
    mean_nll: float
    running_ppl: tuple[float, ...]  # PPL over chunks 1..i, for a progress plot
    chunk_ppl: tuple[float, ...]  # PPL of chunk i alone
    tokens_per_s: float  # tokens evaluated (n_ctx per chunk, scoring included) per second
    elapsed_s: float
    add_bos: bool
    logits_file: str | None  # base log-probs written by this run


@dataclass(frozen=True)
class KLDivergenceResult:
    """A model against saved base log-probabilities, as llama-perplexity --kl-divergence reports it."""

    model_path: str
    base_model: str  # the base's name/path from the logits file ("unknown" for llama.cpp files)
    logits_file: str
    n_ctx: int
    n_chunks: int
    n_scored: int
    ppl: float  # Mean PPL(Q)
    ppl_uncertainty: float | None
    ppl_base: float  # Mean PPL(base), from the saved (uint16) log-probabilities
    ppl_base_uncertainty: float | None
    ln_ppl_ratio: float  # Mean ln(PPL(Q)/PPL(base))
    ln_ppl_ratio_uncertainty: float | None
    ppl_correlation: float | None  # Cor(ln(PPL(Q)), ln(PPL(base)))
    kld_mean: float
    kld_uncertainty: float | None
    kld_max: float
    kld_p99_9: float
    kld_p99: float
    kld_p95: float
    kld_p90: float
    kld_median: float
    kld_p10: float
    kld_p5: float
    kld_p1: float
    kld_p0_1: float
    kld_min: float
    delta_p_mean: float  # mean of p(Q) - p(base) for the actual next token, 0..1 scale
    delta_p_uncertainty: float | None
    delta_p_rms: float
    delta_p_rms_uncertainty: float | None
    delta_p_percentiles: tuple[tuple[float, float], ...]  # (fraction, value): max, 99.9 % … min
    same_top_p: float  # share of positions where both models' most likely token is the same, 0..1
    same_top_p_uncertainty: float | None
    running_kld: tuple[float, ...]  # mean KLD over chunks 1..i
    tokens_per_s: float
    elapsed_s: float

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.ln_ppl_ratio)

    @property
    def delta_ppl_percent(self) -> float:
        """PPL(Q) relative to PPL(base), in per cent (+2.0 = 2 % worse)."""
        return 100.0 * (self.ppl / self.ppl_base - 1.0)


# ---- statistics (pure numpy; llama.cpp's formulas) ---------------------------------------------
def mean_and_uncertainty(total: float, total_sq: float, count: int) -> tuple[float, float | None]:
    """llama.cpp's mean_and_uncertainty: mean and standard error (None when count <= 10)."""
    if count < 1:
        return 0.0, None
    mean = total / count
    var = total_sq / count - mean * mean
    if var > 0 and count > 10:
        return mean, math.sqrt(var / (count - 1))
    return mean, None


def ppl_and_uncertainty(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float | None]:
    """llama-perplexity's final estimate: PPL = exp(mean nll), ± PPL x standard error of nll."""
    if count < 2:
        return (math.exp(nll_sum / count) if count else float("nan")), None
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    if var <= 0:
        return ppl, None
    return ppl, ppl * math.sqrt(var / (count - 1))


def _covariance(sum_a: float, sum_b: float, sum_ab: float, count: int) -> float:
    """llama.cpp's covariance of the two mean log-PPLs (0 under 10 values)."""
    if count < 10:
        return 0.0
    return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation between the two nearest ranks."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * sorted_values[ip] + p * sorted_values[min(ip + 1, len(sorted_values) - 1)])


def _median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2 == 0:
        return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))
    return float(sorted_values[n // 2])


def _rows(n: int) -> Iterator[slice]:
    for start in range(0, n, _ROW_BLOCK):
        yield slice(start, min(n, start + _ROW_BLOCK))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 (llama.cpp's log_softmax + nll)."""
    n = logits.shape[0]
    out = np.empty(n, dtype=np.float64)
    work = np.empty((min(n, _ROW_BLOCK), logits.shape[1]), dtype=np.float32)
    for rows in _rows(n):
        x = logits[rows]
        w = work[: x.shape[0]]
        mx = x.max(axis=1)
        np.subtract(x, mx[:, None], out=w)
        np.exp(w, out=w)
        lse = np.log(w.sum(axis=1, dtype=np.float64))
        picked = x[np.arange(x.shape[0]), targets[rows]]
        out[rows] = mx.astype(np.float64) + lse - picked
    return out


def log_prob_row_width(n_vocab: int) -> int:
    """uint16 values per scored position in a llama.cpp logits file: 2 floats + n_vocab, even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def quantize_log_probs(logits: np.ndarray, targets: np.ndarray, out: np.ndarray) -> np.ndarray:
    """llama.cpp's compressed log-probabilities (perplexity.cpp, `log_softmax(..., uint16_t*, ...)`).

    Per row: min_logit = max(min(logits), max - 16); scale = (max - min_logit) / 65535; the row
    stores scale and min_log_prob = min_logit - max - log-sum-exp as two float32, then
    round((logit - min_logit) / scale) as uint16 (0 for logits at or below min_logit). Writes
    `out` (rows x log_prob_row_width) and returns each row's nll of its target token.
    """
    n, n_vocab = logits.shape
    nll = np.empty(n, dtype=np.float64)
    work = np.empty((min(n, _ROW_BLOCK), n_vocab), dtype=np.float32)
    out[:, 4 + n_vocab :] = 0
    for rows in _rows(n):
        x = logits[rows]
        m = x.shape[0]
        w = work[:m]
        mx = x.max(axis=1)
        mn = np.maximum(x.min(axis=1), mx - np.float32(16))
        np.subtract(x, mx[:, None], out=w)
        np.exp(w, out=w)
        lse = np.log(w.sum(axis=1, dtype=np.float64)).astype(np.float32)
        min_log_prob = (mn - mx - lse).astype(np.float32)
        scale = ((mx - mn) / np.float32(65535.0)).astype(np.float32)
        header = np.stack([scale, min_log_prob], axis=1).astype(np.float32)
        out[rows, :4] = header.view(np.uint16)
        with np.errstate(divide="ignore"):
            inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
        np.subtract(x, mn[:, None], out=w)
        w *= inv[:, None]
        np.rint(w, out=w)
        w[x <= mn[:, None]] = 0
        out[rows, 4 : 4 + n_vocab] = w.astype(np.uint16)
        picked = x[np.arange(m), targets[rows]]
        nll[rows] = mx.astype(np.float64) + lse.astype(np.float64) - picked
    return nll


def dequantize_log_probs(base: np.ndarray, n_vocab: int) -> np.ndarray:
    """The float32 log-probabilities a llama.cpp logits-file row stands for (for tests and tools)."""
    header = np.ascontiguousarray(base[:, :4]).view(np.float32)
    return header[:, 0:1] * base[:, 4 : 4 + n_vocab].astype(np.float32) + header[:, 1:2]


@dataclass
class _KldSums:
    """llama.cpp's kl_divergence_result: running sums over scored positions."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0


def kld_rows(
    logits: np.ndarray, base: np.ndarray, targets: np.ndarray, sums: _KldSums
) -> tuple[np.ndarray, np.ndarray]:
    """KL(base || model) per row, and Δp = p_model(target) - p_base(target); updates `sums`.

    `base` holds llama.cpp-format rows (see quantize_log_probs). As in llama.cpp, base tokens with
    log-probability <= -16 are left out of the sum, and "same top" compares the first maximum.
    """
    n, n_vocab = logits.shape
    kld = np.empty(n, dtype=np.float64)
    p_diff = np.empty(n, dtype=np.float64)
    header = np.ascontiguousarray(base[:, :4]).view(np.float32)
    scale_all, min_lp_all = header[:, 0], header[:, 1]
    work = np.empty((min(n, _ROW_BLOCK), n_vocab), dtype=np.float32)
    work2 = np.empty_like(work)
    for rows in _rows(n):
        x = logits[rows]
        m = x.shape[0]
        w, lp_base = work[:m], work2[:m]
        idx = np.arange(m)
        mx = x.max(axis=1)
        imax = x.argmax(axis=1)
        np.subtract(x, mx[:, None], out=w)
        np.exp(w, out=w)
        lse = np.log(w.sum(axis=1, dtype=np.float64)).astype(np.float32)
        tok = targets[rows]
        q = base[rows, 4 : 4 + n_vocab]
        scale, min_lp = scale_all[rows], min_lp_all[rows]
        np.multiply(q, scale[:, None], out=lp_base, casting="unsafe")
        lp_base += min_lp[:, None]
        imax_base = q.argmax(axis=1)  # scale >= 0: the largest code is the largest log-prob
        # log q_i = x_i - mx - lse; KLD term = p_base * (log p_base - log q)
        np.subtract(lp_base, x, out=w)
        w += (mx + lse)[:, None]
        keep = lp_base > np.float32(LOG_PROB_FLOOR)
        np.exp(lp_base, out=lp_base)
        lp_base *= w
        lp_base[~keep] = 0
        row_kld = lp_base.sum(axis=1, dtype=np.float64)
        nll = (mx + lse - x[idx, tok]).astype(np.float32).astype(np.float64)
        nll_base = (-(scale * q[idx, tok].astype(np.float32) + min_lp)).astype(np.float64)
        p = np.exp(-nll.astype(np.float32)).astype(np.float64)
        p_b = np.exp(-nll_base.astype(np.float32)).astype(np.float64)
        pd = p - p_b
        kld[rows] = row_kld
        p_diff[rows] = pd
        sums.sum_nll += float(nll.sum())
        sums.sum_nll2 += float((nll * nll).sum())
        sums.sum_nll_base += float(nll_base.sum())
        sums.sum_nll_base2 += float((nll_base * nll_base).sum())
        sums.sum_nll_nll_base += float((nll * nll_base).sum())
        sums.sum_kld += float(row_kld.sum())
        sums.sum_kld2 += float((row_kld * row_kld).sum())
        sums.sum_p_diff += float(pd.sum())
        pd2 = pd * pd
        sums.sum_p_diff2 += float(pd2.sum())
        sums.sum_p_diff4 += float((pd2 * pd2).sum())
        sums.n_same_top += int((imax == imax_base).sum())
        sums.count += m
    return kld, p_diff


_DELTA_P_FRACTIONS = (1.0, 0.999, 0.99, 0.95, 0.90, 0.75, 0.5, 0.25, 0.10, 0.05, 0.01, 0.001, 0.0)


def kld_summary(sums: _KldSums, kld_values: np.ndarray, p_diff_values: np.ndarray) -> dict[str, Any]:
    """The figures of llama-perplexity's final KLD report, from the sums and per-position values."""
    count = sums.count
    if count < 2:
        raise EvalError("Too few scored tokens for KL-divergence statistics.")
    kld_sorted = np.sort(kld_values)
    p_sorted = np.sort(p_diff_values)
    log_ppl, log_ppl_unc = mean_and_uncertainty(sums.sum_nll, sums.sum_nll2, count)
    log_base, log_base_unc = mean_and_uncertainty(sums.sum_nll_base, sums.sum_nll_base2, count)
    cov = _covariance(sums.sum_nll, sums.sum_nll_base, sums.sum_nll_nll_base, count)
    ppl = math.exp(log_ppl)
    ppl_base = math.exp(log_base)
    ratio_unc: float | None = None
    correlation: float | None = None
    if log_ppl_unc is not None and log_base_unc is not None:
        ratio_var = log_ppl_unc**2 + log_base_unc**2 - 2.0 * cov
        ratio_unc = math.sqrt(ratio_var) if ratio_var > 0 else 0.0
        correlation = cov / (log_ppl_unc * log_base_unc)
    kld_mean, kld_unc = mean_and_uncertainty(sums.sum_kld, sums.sum_kld2, count)
    dp_mean, dp_unc = mean_and_uncertainty(sums.sum_p_diff, sums.sum_p_diff2, count)
    mse, mse_unc = mean_and_uncertainty(sums.sum_p_diff2, sums.sum_p_diff4, count)
    rms = math.sqrt(mse)
    rms_unc = 0.5 / rms * mse_unc if (mse_unc is not None and rms > 0) else None
    same = sums.n_same_top / count
    same_unc = math.sqrt(same * (1.0 - same) / (count - 1))
    dp_percentiles = tuple(
        (f, _median(p_sorted) if f == 0.5 else percentile(p_sorted, f)) for f in _DELTA_P_FRACTIONS
    )
    return {
        "ppl": ppl,
        "ppl_uncertainty": None if log_ppl_unc is None else ppl * log_ppl_unc,
        "ppl_base": ppl_base,
        "ppl_base_uncertainty": None if log_base_unc is None else ppl_base * log_base_unc,
        "ln_ppl_ratio": log_ppl - log_base,
        "ln_ppl_ratio_uncertainty": ratio_unc,
        "ppl_correlation": correlation,
        "kld_mean": kld_mean,
        "kld_uncertainty": kld_unc,
        "kld_max": float(kld_sorted[-1]),
        "kld_p99_9": percentile(kld_sorted, 0.999),
        "kld_p99": percentile(kld_sorted, 0.99),
        "kld_p95": percentile(kld_sorted, 0.95),
        "kld_p90": percentile(kld_sorted, 0.90),
        "kld_median": _median(kld_sorted),
        "kld_p10": percentile(kld_sorted, 0.10),
        "kld_p5": percentile(kld_sorted, 0.05),
        "kld_p1": percentile(kld_sorted, 0.01),
        "kld_p0_1": percentile(kld_sorted, 0.001),
        "kld_min": float(kld_sorted[0]),
        "delta_p_mean": dp_mean,
        "delta_p_uncertainty": dp_unc,
        "delta_p_rms": rms,
        "delta_p_rms_uncertainty": rms_unc,
        "delta_p_percentiles": dp_percentiles,
        "same_top_p": same,
        "same_top_p_uncertainty": same_unc,
    }


# ---- the model, on app.llama.driver -----------------------------------------------------------
def model_fingerprint(path: str) -> str:
    """A cheap identity for a model file: SHA-256 of its size, first and last MiB (not a full hash)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def tokens_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


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
    ) -> None:
        try:
            self.info = inspect_model(path)
        except ModelFileError as exc:
            raise EvalError(str(exc)) from None
        if not vocab_only:
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
        batch_size = n_batch or n_ctx
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


# ---- the logits file ---------------------------------------------------------------------------
def expected_logits_file_bytes(n_vocab: int, n_ctx: int, n_chunks: int) -> int:
    """Size of a llama.cpp-format base-logits file (the LlamaScope trailer adds a few KiB)."""
    first = n_ctx // 2
    per_chunk = (n_ctx - 1 - first) * log_prob_row_width(n_vocab) * 2
    return 8 + 4 + 4 + 4 + 4 * n_ctx * n_chunks + n_chunks * per_chunk


@dataclass(frozen=True)
class LogitsFileInfo:
    """A base-logits file's header, checked against its size (and its trailer, when present)."""

    path: str
    n_ctx: int
    n_vocab: int
    n_chunks: int
    file_bytes: int
    has_trailer: bool  # written by LlamaScope (else: llama-perplexity --kl-divergence-base)
    base_model: str | None
    model_fingerprint: str | None
    vocab_sha256: str | None
    tokens_sha256: str | None
    text_name: str | None
    text_sha256: str | None
    chunk_crc32: tuple[int, ...]


def _data_offset(n_ctx: int, n_chunks: int) -> int:
    return 20 + 4 * n_ctx * n_chunks


def read_logits_info(path: str) -> LogitsFileInfo:
    """Read and check a logits file's header and trailer; raises LogitsFileError."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:8] != LOGITS_MAGIC:
                raise LogitsFileError(f"{name} is not a logits file (it does not start with '_logits_').")
            n_ctx, n_vocab, n_chunks = struct.unpack("<Iii", head[8:20])
            if not (8 <= n_ctx <= 1 << 22) or not (1 <= n_vocab <= 1 << 24) or not (1 <= n_chunks <= 1 << 24):
                raise LogitsFileError(
                    f"{name} is corrupt: implausible header "
                    f"(n_ctx {n_ctx}, n_vocab {n_vocab}, chunks {n_chunks})."
                )
            core = expected_logits_file_bytes(n_vocab, n_ctx, n_chunks)
            trailer: dict[str, Any] = {}
            if size < core:
                raise LogitsFileError(
                    f"{name} is truncated: {format_bytes(size)} of the {format_bytes(core)} its header "
                    "announces. "
                    "It was probably not written to the end; compute it again."
                )
            if size > core:
                if size < core + 16:
                    raise LogitsFileError(f"{name} is corrupt: unexpected bytes after the data.")
                f.seek(size - 16)
                length_raw, magic = f.read(8), f.read(8)
                (length,) = struct.unpack("<Q", length_raw)
                if magic != TRAILER_MAGIC or core + length + 16 != size:
                    raise LogitsFileError(f"{name} is corrupt: unexpected bytes after the data.")
                f.seek(core)
                try:
                    trailer = json.loads(f.read(length).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise LogitsFileError(
                        f"{name} is corrupt: its LlamaScope trailer is unreadable."
                    ) from None
                if trailer.get("format") != TRAILER_FORMAT or len(trailer.get("chunk_crc32", [])) != n_chunks:
                    raise LogitsFileError(
                        f"{name} is corrupt: its LlamaScope trailer does not match the data."
                    )
    except OSError as exc:
        raise LogitsFileError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    return LogitsFileInfo(
        path=os.path.abspath(path),
        n_ctx=n_ctx,
        n_vocab=n_vocab,
        n_chunks=n_chunks,
        file_bytes=size,
        has_trailer=bool(trailer),
        base_model=trailer.get("model_name") or trailer.get("model_path"),
        model_fingerprint=trailer.get("model_fingerprint"),
        vocab_sha256=trailer.get("vocab_sha256"),
        tokens_sha256=trailer.get("tokens_sha256"),
        text_name=trailer.get("text_name"),
        text_sha256=trailer.get("text_sha256"),
        chunk_crc32=tuple(int(c) for c in trailer.get("chunk_crc32", ())),
    )


class _LogitsReader:
    def __init__(self, info: LogitsFileInfo) -> None:
        self.info = info
        self._f = open(info.path, "rb")
        self._row = log_prob_row_width(info.n_vocab)
        self._per_chunk = info.n_ctx - 1 - info.n_ctx // 2

    def tokens(self) -> np.ndarray:
        count = self.info.n_ctx * self.info.n_chunks
        self._f.seek(20)
        raw = self._f.read(4 * count)
        tokens = np.frombuffer(raw, dtype="<i4").astype(np.int32)
        if self.info.tokens_sha256 and tokens_sha256(tokens) != self.info.tokens_sha256:
            raise LogitsFileError(
                f"{os.path.basename(self.info.path)} is corrupt: its tokens do not match their hash."
            )
        if tokens.min() < 0 or tokens.max() >= self.info.n_vocab:
            raise LogitsFileError(
                f"{os.path.basename(self.info.path)} is corrupt: it holds token ids outside its vocabulary."
            )
        return tokens

    def chunk(self, index: int) -> np.ndarray:
        nbytes = self._per_chunk * self._row * 2
        self._f.seek(_data_offset(self.info.n_ctx, self.info.n_chunks) + index * nbytes)
        raw = self._f.read(nbytes)
        name = os.path.basename(self.info.path)
        if len(raw) != nbytes:
            raise LogitsFileError(f"{name} is truncated at chunk {index + 1}.")
        if self.info.chunk_crc32 and zlib.crc32(raw) != self.info.chunk_crc32[index]:
            raise LogitsFileError(f"{name} is corrupt: chunk {index + 1} fails its checksum.")
        data = np.frombuffer(raw, dtype="<u2").reshape(self._per_chunk, self._row)
        header = np.ascontiguousarray(data[:, :4]).view(np.float32)
        if not np.isfinite(header).all() or (header[:, 0] < 0).any() or (header[:, 1] > 1e-3).any():
            raise LogitsFileError(f"{name} is corrupt: chunk {index + 1} holds impossible values.")
        return data

    def close(self) -> None:
        self._f.close()


class _LogitsWriter:
    """Writes a llama.cpp-format logits file to a temporary name; finish() renames it into place."""

    def __init__(self, path: str, n_ctx: int, n_vocab: int, n_chunks: int, tokens: np.ndarray) -> None:
        self.path = os.path.abspath(path)
        folder, name = os.path.split(self.path)
        self._temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
        try:
            self._f = open(self._temp, "xb")
        except OSError as exc:
            raise EvalError(f"Cannot write the logits file in {folder}: {exc.strerror or exc}.") from None
        self._crcs: list[int] = []
        self._f.write(LOGITS_MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunks))
        self._f.write(np.ascontiguousarray(tokens[: n_ctx * n_chunks], dtype="<i4").tobytes())

    def add_chunk(self, rows: np.ndarray) -> None:
        raw = np.ascontiguousarray(rows, dtype="<u2").tobytes()
        self._crcs.append(zlib.crc32(raw))
        self._f.write(raw)

    def finish(self, meta: dict[str, Any]) -> None:
        trailer = json.dumps({**meta, "format": TRAILER_FORMAT, "chunk_crc32": self._crcs}).encode("utf-8")
        self._f.write(trailer + struct.pack("<Q", len(trailer)) + TRAILER_MAGIC)
        self._f.close()
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        self._f.close()
        try:
            os.remove(self._temp)
        except OSError:
            pass


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


def check_space_for_logits(
    path: str, n_bytes: int, *, free_bytes: Callable[[str], int] | None = None
) -> None:
    """Refuse a logits file that would not fit on its disk."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EvalError(f"The folder for the logits file, {folder}, does not exist.")
    free = (free_bytes or (lambda p: shutil.disk_usage(p).free))(folder)
    if free < n_bytes + (16 << 20):
        raise EvalError(
            f"Not enough disk space for the logits file: it needs {format_bytes(n_bytes)} and "
            f"{format_bytes(free)} is free in {folder}."
        )


# ---- the evaluations ---------------------------------------------------------------------------
def _emit(on_progress: Callable[[ChunkProgress], None] | None, progress: ChunkProgress) -> None:
    if on_progress is None:
        return
    try:
        on_progress(progress)
    except Exception:  # a listener's bug must not abort a long evaluation
        log.exception("evaluation progress listener failed")


def _chunk_tokens(tokens: np.ndarray, i: int, n_ctx: int, add_bos: bool, bos: int) -> np.ndarray:
    chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
    if add_bos:
        chunk[0] = bos  # llama.cpp replaces the chunk's first token by BOS for the evaluation
    return chunk


def evaluate_perplexity(
    model_path: str,
    text: EvalText,
    settings: EvalSettings | None = None,
    *,
    save_logits: str | None = None,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
    free_bytes: Callable[[str], int] | None = None,
) -> PerplexityResult:
    """Perplexity of `model_path` on `text`; with `save_logits`, also write the KLD base file."""
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
    ) as m:
        tokens = m.tokenize(text.text)
        _check_tokens(tokens, n_ctx, text)
        available = len(tokens) // n_ctx
        n_chunks = min(available, settings.n_chunks or available)
        writer: _LogitsWriter | None = None
        log_probs: np.ndarray | None = None
        if save_logits is not None:
            check_space_for_logits(
                save_logits, expected_logits_file_bytes(m.n_vocab, n_ctx, n_chunks), free_bytes=free_bytes
            )
            writer = _LogitsWriter(save_logits, n_ctx, m.n_vocab, n_chunks, tokens)
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
                chunk = _chunk_tokens(tokens, i, n_ctx, m.add_bos, m.bos_id)
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
                _emit(
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
                    {
                        "model_path": m.path,
                        "model_name": m.info.display_name,
                        "model_fingerprint": model_fingerprint(m.path),
                        "vocab_sha256": m.vocab_sha256(),
                        "tokens_sha256": tokens_sha256(tokens[: n_ctx * n_chunks]),
                        "text_name": text.name,
                        "text_sha256": text.sha256,
                        "n_ctx": n_ctx,
                        "llamascope_version": __version__,
                        "created_unix": time.time(),
                    }
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
) -> KLDivergenceResult:
    """KL divergence of `model_path` from the base log-probabilities in `logits_file`.

    The tokens come from the file (as in llama.cpp); n_ctx is the file's. `settings.n_chunks`
    limits the chunks. With `text`, the file's tokens must be that text's tokens.
    """
    settings = settings or EvalSettings()
    settings.validate()
    cancel = cancel or threading.Event()
    info = read_logits_info(logits_file)
    n_ctx = info.n_ctx
    first = n_ctx // 2
    t0 = time.perf_counter()
    reader = _LogitsReader(info)
    try:
        tokens = reader.tokens()
        with EvalModel(
            model_path,
            n_ctx=n_ctx,
            n_threads=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            flash_attn=settings.flash_attn,
            cancel=cancel,
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
            sums = _KldSums()
            # float32, as llama.cpp keeps them: its percentiles interpolate between float values
            kld_values = np.empty(per_chunk * n_chunks, dtype=np.float32)
            p_diff_values = np.empty(per_chunk * n_chunks, dtype=np.float32)
            running: list[float] = []
            t_eval = time.perf_counter()
            for i in range(n_chunks):
                if cancel.is_set():
                    raise EvalCancelled("Evaluation cancelled.")
                base = reader.chunk(i)
                chunk = _chunk_tokens(tokens, i, n_ctx, m.add_bos, m.bos_id)
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
                _emit(
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
@dataclass(frozen=True)
class BaseComparison:
    """The base's perplexity and each variant's KL divergence from it, over the same tokens."""

    base: PerplexityResult
    variants: tuple[KLDivergenceResult, ...]


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
) -> BaseComparison:
    """The base's log-probabilities on `text`, then every variant's KL divergence from them.

    `logits_file`: where to keep the base's log-probabilities (llama.cpp format); None writes
    them to a temporary file that is deleted at the end (also on cancel or error). Vocabularies
    are checked first, before the (long) base pass.
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
        )
        variants = tuple(
            evaluate_kl_divergence(path, logits_file, settings, cancel=cancel, on_progress=on_progress)
            for path in variant_paths
        )
        return BaseComparison(base, variants)
    finally:
        if temp is not None and os.path.exists(temp):
            os.remove(temp)


def start_against_base(
    base_path: str,
    variant_paths: list[str] | tuple[str, ...],
    text: EvalText,
    settings: EvalSettings | None = None,
    *,
    logits_file: str | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
) -> EvalJob[BaseComparison]:
    """evaluate_against_base on a "llamascope-eval-base" thread."""
    return EvalJob(
        "base",
        lambda cancel: evaluate_against_base(
            base_path,
            variant_paths,
            text,
            settings,
            logits_file=logits_file,
            cancel=cancel,
            on_progress=on_progress,
        ),
    ).start()


# ---- running off the caller's thread -----------------------------------------------------------
class EvalJob(Generic[T]):
    """Runs one evaluation on its own named thread; cancel() stops it within a decode.

    `fn` receives the job's cancel event. The result (or the exception) arrives on `future`;
    `wait()` returns it and joins the thread.
    """

    def __init__(self, name: str, fn: Callable[[threading.Event], T]) -> None:
        self._fn = fn
        self._cancel = threading.Event()
        self._future: Future[T] = Future()
        self._thread = threading.Thread(target=self._run, name=f"llamascope-eval-{name}", daemon=True)

    @property
    def future(self) -> Future[T]:
        return self._future

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    def start(self) -> EvalJob[T]:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> T:
        try:
            return self._future.result(timeout)
        finally:
            if self._future.done():
                self._thread.join()

    def _run(self) -> None:
        try:
            result = self._fn(self._cancel)
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)


def start_perplexity(
    model_path: str,
    text: EvalText,
    settings: EvalSettings | None = None,
    *,
    save_logits: str | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
) -> EvalJob[PerplexityResult]:
    """evaluate_perplexity on a "llamascope-eval-ppl" thread."""
    return EvalJob(
        "ppl",
        lambda cancel: evaluate_perplexity(
            model_path, text, settings, save_logits=save_logits, cancel=cancel, on_progress=on_progress
        ),
    ).start()


def start_kl_divergence(
    model_path: str,
    logits_file: str,
    settings: EvalSettings | None = None,
    *,
    text: EvalText | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
) -> EvalJob[KLDivergenceResult]:
    """evaluate_kl_divergence on a "llamascope-eval-kld" thread."""
    return EvalJob(
        "kld",
        lambda cancel: evaluate_kl_divergence(
            model_path, logits_file, settings, text=text, cancel=cancel, on_progress=on_progress
        ),
    ).start()


__all__ = [
    "BaseComparison",
    "ChunkProgress",
    "EvalCancelled",
    "EvalError",
    "EvalJob",
    "EvalModel",
    "EvalSettings",
    "IncompatibleBaseError",
    "KLDivergenceResult",
    "LogitsFileError",
    "LogitsFileInfo",
    "PerplexityPlan",
    "PerplexityResult",
    "TextTooShortError",
    "check_base_compatible",
    "check_same_vocabulary",
    "evaluate_against_base",
    "evaluate_kl_divergence",
    "evaluate_perplexity",
    "expected_logits_file_bytes",
    "plan_perplexity",
    "read_logits_info",
    "start_against_base",
    "start_kl_divergence",
    "start_perplexity",
]
