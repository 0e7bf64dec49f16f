"""Small statistics for benchmark samples: mean, standard deviation, Welch's t-test and interval.

Kept dependency-free (no SciPy, ~40 MB) because only Student's t distribution is needed; its
CDF comes from the regularized incomplete beta function, evaluated with Lentz's continued
fraction as in Numerical Recipes (§6.4). Tests check it against published table values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n − 1), 0 for fewer than two values — as llama-bench reports it."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p_two_sided: float, dof: float) -> float:
    """t such that P(|T| >= t) = p_two_sided for Student's t, by bisection on the exact CDF above."""
    if not 0.0 < p_two_sided < 1.0 or dof <= 0:
        raise ValueError("need 0 < p < 1 and dof > 0")
    lo, hi = 0.0, 1.0
    while student_t_two_sided_p(hi, dof) > p_two_sided and hi < 1e12:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if student_t_two_sided_p(mid, dof) > p_two_sided:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Comparison:
    """B relative to A: difference of means in percent, with Welch's t-test over the samples."""

    mean_a: float
    mean_b: float
    diff_percent: float  # (mean_b − mean_a) / mean_a × 100
    t_statistic: float | None  # None when the test cannot be run (fewer than 2 samples each)
    dof: float | None
    p_value: float | None
    significant: bool  # p < alpha
    # Why significance is not judged although the test ran (app.bench.trust: too few repetitions),
    # and how many repetitions a side it would take; None when judged.
    refused: str | None = None
    repetitions_needed: int | None = None

    def verdict(self, alpha: float = 0.05) -> str:
        if self.refused is not None:
            return self.refused
        if self.p_value is None:
            return "not testable (needs 2+ repetitions each)"
        if self.p_value < alpha:
            return f"significant (p = {self.p_value:.3g})"
        return f"within noise (p = {self.p_value:.3g})"


def welch(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> Comparison:
    """Welch's unequal-variance t-test of B against A, two-sided."""
    mean_a, mean_b = mean(a), mean(b)
    diff = (mean_b - mean_a) / mean_a * 100.0 if mean_a else math.inf
    if len(a) < 2 or len(b) < 2:
        return Comparison(mean_a, mean_b, diff, None, None, None, False)
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    se2 = va + vb
    if se2 == 0.0:
        # No spread at all: any difference is exact, none is no difference.
        p = 1.0 if mean_a == mean_b else 0.0
        t = 0.0 if mean_a == mean_b else math.copysign(math.inf, mean_b - mean_a)
        return Comparison(mean_a, mean_b, diff, t, float(len(a) + len(b) - 2), p, p < alpha)
    t = (mean_b - mean_a) / math.sqrt(se2)
    dof = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = student_t_two_sided_p(t, dof)
    return Comparison(mean_a, mean_b, diff, t, dof, p, p < alpha)


def welch_interval(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Welch's confidence interval of mean(b) − mean(a); None with fewer than 2 samples on either side.

    The same standard error and Welch–Satterthwaite degrees of freedom as `welch`, so the interval
    excludes 0 exactly when welch(a, b).p_value < 1 − confidence.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    if len(a) < 2 or len(b) < 2:
        return None
    diff = mean(b) - mean(a)
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return diff, diff  # no spread at all: the difference is exact
    dof = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(1.0 - confidence, dof) * math.sqrt(se2)
    return diff - half, diff + half
