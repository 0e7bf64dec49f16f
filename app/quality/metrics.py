"""llama.cpp's scoring formulas, in numpy: what perplexity and KL divergence are computed from.

Everything here follows tools/perplexity/perplexity.cpp: the negative log-likelihood of each target
token (log-softmax in float64 sums), PPL and its uncertainty, the compressed log-probability rows
a logits file stores (`quantize_log_probs`: two float32 and n_vocab uint16 per position), the
KL-divergence sums over scored positions (`kld_rows`) and the final KLD report (`kld_summary`).
Pure functions of arrays: no model, no file, no thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.quality.eval_types import EvalError

LOG_PROB_FLOOR = -16.0  # llama.cpp ignores base probabilities below e^-16 in the KLD sum
_ROW_BLOCK = 16  # rows of logits processed together: keeps the float temporaries in cache


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
class KldSums:
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
    logits: np.ndarray, base: np.ndarray, targets: np.ndarray, sums: KldSums
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


def kld_summary(sums: KldSums, kld_values: np.ndarray, p_diff_values: np.ndarray) -> dict[str, Any]:
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


__all__ = [
    "LOG_PROB_FLOOR",
    "KldSums",
    "dequantize_log_probs",
    "kld_rows",
    "kld_summary",
    "log_prob_row_width",
    "mean_and_uncertainty",
    "percentile",
    "ppl_and_uncertainty",
    "quantize_log_probs",
    "token_nll",
]
