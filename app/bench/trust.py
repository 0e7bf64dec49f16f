"""How far to trust a benchmark result: its spread, what else the machine did meanwhile, the clock.

A result is flagged *noisy* when any of these held over its timed repetitions, and each flag says
why in words:

- **CV over 5 %**: the repetitions disagree. The coefficient of variation is the sample standard
  deviation of the t/s samples over their mean (the ± llama-bench prints, relative to the mean).
- **steal over 2 %**: a virtual machine's host gave the CPUs to someone else (/proc/stat's steal
  time, app.telemetry.cpu_load).
- **other load over 10 %**: other processes used more than a tenth of all CPUs' time (the busy
  time of the whole machine minus LlamaScope's own processes). On a 2-CPU machine, one busy loop
  is about 50 %; a desktop's background is a few per cent.
- **throttled**: the telemetry saw throttling (CPU throttle counters, a clock far below its
  maximum under load, a GPU's clock-event reasons; app.telemetry.snapshot).
- **warm-up not steady**: `--warmup-until-steady` reached its cap before the runs agreed.

A figure that could not be measured is n/a and flags nothing; the CPU clock's range during the
run is shown beside the flags, since a clock that moved explains a spread.

**Warm-up until steady** (`SteadyRule`): instead of llama-bench's one warm-up run, full
repetitions of the test run, untimed for the result, until the last 3 agree: their spread
(max − min) is at most 3 % of their median. Caps: 10 runs or 60 s, whichever comes first; a test
that hits a cap is flagged. Three runs because two can agree by chance and a fourth costs time;
3 % because llama.cpp PR #21282 saw pp512 settle from ±40 % to ±0.6 % within 4 warm-up runs,
while a run that is still warming (caches, clocks, the page cache of an mmapped model) moves by
more than that from one run to the next.

**Comparisons** need at least 3 repetitions a side before a difference is called significant
(with 2, a t-test's variance estimate rests on one degree of freedom a side and "significant"
is mostly luck); below that the comparison says how many repetitions it would take
(`repetitions_needed`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.common.stats import Comparison, mean, stdev, welch

CV_LIMIT_PERCENT = 5.0
STEAL_LIMIT_PERCENT = 2.0
OTHER_LOAD_LIMIT_PERCENT = 10.0
MIN_REPETITIONS = 3  # a side, before a comparison may be called significant


def coefficient_of_variation(samples: Sequence[float]) -> float | None:
    """Sample standard deviation over mean, in per cent; None for fewer than 2 samples or a mean of 0."""
    if len(samples) < 2:
        return None
    m = mean(samples)
    return stdev(samples) / m * 100.0 if m > 0 else None


@dataclass(frozen=True)
class Trust:
    """The verdict on one result: flagged or not, why, and every figure in words."""

    noisy: bool
    flags: tuple[str, ...]  # short: "CV 12.3 % > 5 %"
    reasons: tuple[str, ...]  # the same flags as sentences
    details: tuple[str, ...]  # every trust figure, measured or n/a with why

    @property
    def cell(self) -> str:
        """One table cell: "⚠ CV 12.3 % > 5 %; throttled", or "ok" when nothing is flagged."""
        return "⚠ " + "; ".join(self.flags) if self.noisy else "ok"

    @property
    def text(self) -> str:
        """Several lines for a tooltip: the verdict, the reasons, then every figure."""
        head = (
            "Noisy: " + "; ".join(self.reasons) + "."
            if self.noisy
            else "Nothing flagged: the repetitions agree and nothing else held the machine."
        )
        return "\n".join([head, "", *self.details])


def _pct(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else f"{value:{spec}} %"


def clock_text(result: Any) -> str:
    """The CPU clock during the run in words ("2,100–3,500 MHz of 3,500"), or "n/a"."""
    low, high, limit = result.cpu_freq_min_mhz, result.cpu_freq_max_mhz, result.cpu_freq_limit_mhz
    if low is None or high is None:
        return "n/a"
    text = f"{low:,.0f} MHz" if round(low) == round(high) else f"{low:,.0f}–{high:,.0f} MHz"
    return text + (f" (maximum {limit:,.0f} MHz)" if limit else "")


def assess(result: Any) -> Trust:
    """Judge a BenchResult (anything with its fields) by the module's rules."""
    flags: list[str] = []
    reasons: list[str] = []
    cv = coefficient_of_variation(result.samples_ts)
    n = len(result.samples_ns)
    if cv is not None and cv > CV_LIMIT_PERCENT:
        flags.append(f"CV {cv:.1f} % > {CV_LIMIT_PERCENT:g} %")
        reasons.append(f"the {n} repetitions disagree: CV {cv:.1f} % (over {CV_LIMIT_PERCENT:g} %)")
    steal = result.steal_percent
    if steal is not None and steal > STEAL_LIMIT_PERCENT:
        flags.append(f"steal {steal:.1f} % > {STEAL_LIMIT_PERCENT:g} %")
        reasons.append(
            f"the virtual machine's host took {steal:.1f} % of the CPU time (steal, over "
            f"{STEAL_LIMIT_PERCENT:g} %)"
        )
    other = result.other_cpu_percent
    if other is not None and other > OTHER_LOAD_LIMIT_PERCENT:
        flags.append(f"other load {other:.0f} % > {OTHER_LOAD_LIMIT_PERCENT:g} %")
        worth = f"{result.other_cpus:.2f} CPUs' worth, " if result.other_cpus is not None else ""
        reasons.append(
            f"other processes used {worth}{other:.0f} % of all CPU time (over {OTHER_LOAD_LIMIT_PERCENT:g} %)"
        )
    if result.throttled:
        detail = result.throttle_detail or f"{result.throttle_events or 0} throttle events"
        flags.append("throttled")
        reasons.append(f"the hardware throttled ({detail})")
    if result.warmup_steady is False:
        flags.append("warm-up not steady")
        reasons.append(
            f"the warm-up did not settle: {result.warmup_runs} runs without the last "
            f"{STEADY_RULE.window} within {STEADY_RULE.tolerance_percent:g} % of each other"
        )
    note = f" ({result.cpu_load_note})" if result.cpu_load_note else ""
    details = [
        f"CV: {_pct(cv)}" + (" (needs 2+ repetitions)" if cv is None and n < 2 else ""),
        f"steal: {_pct(steal)}" + (note if steal is None else ""),
        "other load: "
        + (
            f"{_pct(other, '.0f')} of all CPU time"
            + (f" ({result.other_cpus:.2f} CPUs)" if result.other_cpus is not None else "")
            if other is not None
            else "n/a" + note
        ),
        "throttling: "
        + (
            "yes" + (f": {result.throttle_detail}" if result.throttle_detail else "")
            if result.throttled
            else ("no" if result.throttle_events is not None else "n/a (no telemetry)")
        ),
        f"CPU clock: {clock_text(result)}",
        "warm-up: " + warmup_text(result),
    ]
    return Trust(bool(flags), tuple(flags), tuple(reasons), tuple(details))


def warmup_text(result: Any) -> str:
    runs, steady = result.warmup_runs, result.warmup_steady
    if runs is None:
        return "n/a"
    if runs == 0:
        return "none"
    if steady is None:
        return f"{runs} run" + ("s" if runs != 1 else "")
    return f"{runs} runs, " + ("steady" if steady else "not steady (cap reached)")


def trust_fields(result: Any) -> dict[str, Any]:
    """The derived trust figures a record carries beside the measured ones."""
    verdict = assess(result)
    return {
        "cv_percent": coefficient_of_variation(result.samples_ts),
        "noisy": verdict.noisy,
        "noise_reasons": "; ".join(verdict.reasons),
    }


# ---- warm-up until steady --------------------------------------------------------------------------


@dataclass(frozen=True)
class SteadyRule:
    """Warm-up runs until the last `window` runs are within `tolerance_percent` of their median
    (max − min), at most `max_runs` runs or `max_seconds` (see the module's notes)."""

    window: int = 3
    tolerance_percent: float = 3.0
    max_runs: int = 10
    max_seconds: float = 60.0

    def spread_percent(self, rates: Sequence[float]) -> float | None:
        """(max − min) / median of the last `window` rates, in per cent; None before there are enough."""
        if len(rates) < self.window:
            return None
        last = list(rates[-self.window :])
        median = statistics.median(last)
        return (max(last) - min(last)) / median * 100.0 if median > 0 else None

    def steady(self, rates: Sequence[float]) -> bool:
        spread = self.spread_percent(rates)
        return spread is not None and spread <= self.tolerance_percent

    def over(self, runs: int, seconds: float) -> bool:
        """A cap is reached: stop warming up, steady or not."""
        return runs >= self.max_runs or seconds >= self.max_seconds


STEADY_RULE = SteadyRule()


# ---- comparisons ------------------------------------------------------------------------------------

_ALPHA = 0.05
_POWER = 0.8


def repetitions_needed(a: Sequence[float], b: Sequence[float]) -> int | None:
    """Repetitions a side for a two-sided test at 5 % to find a difference this large with 80 %
    power, given this spread: 2 (z₀.₉₇₅ + z₀.₈)² s² / δ², s² the pooled variance and δ the difference
    of the means (at least MIN_REPETITIONS). None when it cannot be said: fewer than 2 samples on a
    side (no spread to go by) or no difference at all."""
    if len(a) < 2 or len(b) < 2:
        return None
    delta = abs(mean(b) - mean(a))
    if delta == 0:
        return None
    pooled = ((len(a) - 1) * stdev(a) ** 2 + (len(b) - 1) * stdev(b) ** 2) / (len(a) + len(b) - 2)
    z = statistics.NormalDist()
    k = (z.inv_cdf(1 - _ALPHA / 2) + z.inv_cdf(_POWER)) ** 2
    return max(MIN_REPETITIONS, math.ceil(2 * k * pooled / delta**2))


def compare_repetitions(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's t-test of B against A that refuses to call anything significant with fewer than
    MIN_REPETITIONS a side, and then says how many it would need."""
    comparison = welch(a, b, alpha=_ALPHA)
    if min(len(a), len(b)) >= MIN_REPETITIONS:
        return comparison
    needed = repetitions_needed(a, b)
    need = (
        f"; about {needed:,} a side would tell a difference of {comparison.diff_percent:+.1f} % "
        "from this spread"
        if needed is not None and needed > MIN_REPETITIONS
        else ""
    )
    refusal = (
        f"not judged: {len(a)} and {len(b)} repetitions; significance needs at least "
        f"{MIN_REPETITIONS} a side (-r {max(MIN_REPETITIONS, needed or 0)}){need}"
    )
    return replace(comparison, significant=False, refused=refusal, repetitions_needed=needed)
