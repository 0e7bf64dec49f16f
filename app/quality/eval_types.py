"""What the quality evaluations take, report and raise: exceptions and plain frozen data.

Settings, progress and results are frozen dataclasses of numbers and strings, so an evaluation can
run in the engine host (another process) and its progress and result cross back unchanged. The
exceptions carry a message meant for the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


# ---- settings, progress and results -----------------------------------------------------------
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


@dataclass(frozen=True)
class BaseComparison:
    """The base's perplexity and each variant's KL divergence from it, over the same tokens."""

    base: PerplexityResult
    variants: tuple[KLDivergenceResult, ...]


__all__ = [
    "BaseComparison",
    "ChunkProgress",
    "EvalCancelled",
    "EvalError",
    "EvalSettings",
    "IncompatibleBaseError",
    "KLDivergenceResult",
    "LogitsFileError",
    "PerplexityPlan",
    "PerplexityResult",
    "TextTooShortError",
]
