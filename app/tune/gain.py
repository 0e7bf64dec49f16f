"""The proof of a tuning session: is the best configuration really faster than the default?

`estimate_gain` turns the final comparison's alternating measurements into a `GainEstimate`: the gain
in percent, its Welch interval and Welch's p-value. The statistics themselves (Welch's test and
interval, Student's t quantiles) are generic and live in app.common.stats; this module only states
them as a relative gain, and stays in app.tune because its result and its error are the tuner's types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.common.stats import welch, welch_interval
from app.tune.space import TuneError

_GAIN_METHOD = (
    "Welch's t interval of the difference of the means (best − default), divided by the default's mean; "
    "the default's own uncertainty in that divisor is not propagated"
)


@dataclass(frozen=True)
class GainEstimate:
    """The best settings against the default, both measured again in the same session."""

    default_scores: tuple[float, ...]
    best_scores: tuple[float, ...]
    default_mean: float
    best_mean: float
    gain_percent: float  # (best_mean − default_mean) / default_mean × 100
    ci_low_percent: float | None  # None with fewer than 2 repetitions each
    ci_high_percent: float | None
    confidence: float
    p_value: float | None  # Welch's two-sided test; None when not testable
    significant: bool  # p < alpha, in either direction
    method: str = _GAIN_METHOD

    @property
    def verdict(self) -> str:
        if self.p_value is None:
            return "not testable (needs 2+ repetitions each)"
        if not self.significant:
            return f"within noise (p = {self.p_value:.3g})"
        direction = "faster" if self.gain_percent > 0 else "slower"
        return f"significantly {direction} (p = {self.p_value:.3g})"

    def text(self) -> str:
        """The gain in one line: +12.3 % (95% CI +8.1 … +16.5 %), significantly faster (p = 0.002)."""
        ci = ""
        if self.ci_low_percent is not None and self.ci_high_percent is not None:
            ci = f" ({self.confidence:.0%} CI {self.ci_low_percent:+.1f} … {self.ci_high_percent:+.1f} %)"
        return f"{self.gain_percent:+.1f} %{ci}, {self.verdict}"


def estimate_gain(
    default_scores: Sequence[float],
    best_scores: Sequence[float],
    *,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> GainEstimate:
    """The gain of `best_scores` over `default_scores` in percent, with a Welch t interval and p-value.

    A Welch interval rather than a bootstrap: a comparison has 6-15 samples per side, too few for a
    bootstrap's percentiles to be trusted, and Welch's test is what app.common.stats and the history's
    compare already use, so the interval and the p-value always agree (the interval excludes 0
    exactly when p < 1 − confidence).
    """
    if not default_scores or not best_scores:
        raise TuneError("a gain needs scores of both configurations")
    comparison = welch(default_scores, best_scores, alpha=alpha)
    mean_a, mean_b = comparison.mean_a, comparison.mean_b
    low = high = None
    interval = welch_interval(default_scores, best_scores, confidence=confidence)
    if interval is not None and mean_a > 0:
        low, high = interval[0] / mean_a * 100.0, interval[1] / mean_a * 100.0
    return GainEstimate(
        default_scores=tuple(default_scores),
        best_scores=tuple(best_scores),
        default_mean=mean_a,
        best_mean=mean_b,
        gain_percent=(mean_b - mean_a) / mean_a * 100.0 if mean_a > 0 else math.inf,
        ci_low_percent=low,
        ci_high_percent=high,
        confidence=confidence,
        p_value=comparison.p_value,
        significant=comparison.significant,
    )
