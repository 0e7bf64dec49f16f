"""What a tuning session is asked and what it answers: its budgets, its trials, its progress, its result.

Plain frozen dataclasses (and one enum) with no Optuna in them: the GUI, the command line and the
engine host pass them around, pickle them across the host's pipe and render them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.model.settings import LoadSettings
from app.tune.export import llama_cpp_flags, llama_kwargs_named
from app.tune.gain import GainEstimate
from app.tune.space import Objective, SearchSpace, TuneError


@dataclass(frozen=True)
class TuneConfig:
    """Budgets and measurement rules of one tuning session."""

    n_trials: int | None = 20  # measured trials this session; None: until the time budget or Stop
    time_budget_s: float | None = None  # warm-up + search, keeping time for the final comparison
    repetitions: int = 3  # per trial; the trial's score is their median
    trial_timeout_s: float | None = 300.0  # checked between repetitions, like cancel
    warmup_s: float = 10.0  # run the baseline this long before trial 1 so clocks and temperatures settle
    prune_fraction: float = 0.7  # prune when the running median falls below this share of the best
    prune_min_repetitions: int = 2  # ... but not on a single repetition: one noisy sample is common
    compare_rounds: int = 3  # default/best measured alternately this many times each
    compare_repetitions: int | None = None  # per round (None: `repetitions`)
    numeric_share: float = 0.35  # share of the planned budget for the first numeric search
    confidence: float = 0.95  # of the gain's interval
    alpha: float = 0.05  # significance level of Welch's test
    seed: int | None = None
    resume: bool = True  # False: delete this model's study for this objective and space first
    override_memory: bool = False  # measure configurations the memory check says will not fit

    def __post_init__(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise TuneError("n_trials must be at least 1 (or None for no trial limit)")
        if self.n_trials is None and self.time_budget_s is None:
            raise TuneError("give a trial budget, a time budget or both")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise TuneError("time_budget_s must be positive")
        if self.repetitions < 1 or self.compare_rounds < 1:
            raise TuneError("repetitions and compare_rounds must be at least 1")
        if self.compare_repetitions is not None and self.compare_repetitions < 1:
            raise TuneError("compare_repetitions must be at least 1")
        if self.trial_timeout_s is not None and self.trial_timeout_s <= 0:
            raise TuneError("trial_timeout_s must be positive (or None)")
        if not 0.0 < self.prune_fraction <= 1.0:
            raise TuneError("prune_fraction must be in (0, 1]")
        if not 0.0 < self.numeric_share <= 1.0:
            raise TuneError("numeric_share must be in (0, 1]")
        if not 0.0 < self.confidence < 1.0 or not 0.0 < self.alpha < 1.0:
            raise TuneError("confidence and alpha must be in (0, 1)")
        if self.warmup_s < 0:
            raise TuneError("warmup_s must not be negative")


class TrialStatus(enum.Enum):
    """How a trial ended."""

    COMPLETE = "complete"  # measured; score = median of its repetitions
    PRUNED = "pruned"  # stopped early: clearly worse than the best so far (score: median so far)
    FAILED = "failed"  # raised, timed out or finished no repetition; scores 0, reason says why
    SKIPPED = "skipped"  # not tried: refused by the memory check (or not allowed); the reason says which
    DUPLICATE = "duplicate"  # same effective settings as an earlier trial; that trial's score reused
    INTERRUPTED = "interrupted"  # Stop, or the process ended during it; not scored

    @property
    def measured(self) -> bool:
        return self in (TrialStatus.COMPLETE, TrialStatus.PRUNED, TrialStatus.FAILED)


@dataclass(frozen=True)
class TrialRecord:
    """One trial, for the trials table: what was chosen, what ran, what it scored."""

    number: int
    phase: str  # baseline, numeric, grid, refine
    params: Mapping[str, Any]  # the tuned parameters as the search chose them
    settings: LoadSettings | None  # what ran (n_ubatch clamped to n_batch); None if unknown
    score: float  # objective tokens/s; 0 for failed trials
    state: TrialStatus
    reason: str = ""
    repetitions: tuple[float, ...] = ()  # scores of the finished repetitions
    duplicate_of: int | None = None
    duration_s: float = 0.0

    @property
    def label(self) -> int:
        """The trial's number as people count and every view shows it (table, chart, CLI, JSON "trial"):
        from 1. `number` stays Optuna's (from 0), the key of the trial in its stored study."""
        return self.number + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "phase": self.phase,
            "params": dict(self.params),
            "settings": self.settings.to_dict() if self.settings is not None else None,
            "score": self.score,
            "state": self.state.value,
            "reason": self.reason,
            "repetitions": list(self.repetitions),
            "duplicate_of": self.duplicate_of,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        settings = data.get("settings")
        return cls(
            number=int(data["number"]),
            phase=str(data.get("phase", "")),
            params=dict(data.get("params", {})),
            settings=LoadSettings.from_dict(settings) if settings else None,
            score=float(data.get("score", 0.0)),
            state=TrialStatus(data.get("state", TrialStatus.INTERRUPTED.value)),
            reason=str(data.get("reason", "")),
            repetitions=tuple(float(v) for v in data.get("repetitions", ())),
            duplicate_of=data.get("duplicate_of"),
            duration_s=float(data.get("duration_s", 0.0)),
        )


@dataclass(frozen=True)
class TuneProgress:
    """What the session is doing, for a status line."""

    stage: str  # preparing, warm-up, search, compare, done
    message: str
    trials_done: int  # measured trials this session
    trial_budget: int | None
    elapsed_s: float


@dataclass(frozen=True)
class TuneResult:
    """The outcome of a session; `trials` covers every session of the study."""

    model_path: str
    objective: Objective
    study_name: str
    storage_path: str
    space: SearchSpace
    best: LoadSettings  # the default when no trial completed
    best_trial: int | None
    best_score: float | None  # in its search trial (biased upward: it won); see `gain` for the proof
    default: LoadSettings
    gain: GainEstimate | None  # None when stopped before or during the final comparison
    importances: Mapping[str, float]  # PED-ANOVA, sums to 1; empty with fewer than 2 measured trials
    trials: tuple[TrialRecord, ...]
    stop_reason: str  # trial budget, time budget, cancelled, search space exhausted, ...
    notes: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def proven(self) -> bool:
        """The best settings were significantly faster than the default in the final comparison."""
        return self.gain is not None and self.gain.significant and self.gain.gain_percent > 0

    @property
    def recommended(self) -> LoadSettings:
        """The best settings when the final comparison proved them faster, else the default: on a noisy
        machine the search's winner can be a lucky measurement of an equally fast configuration."""
        return self.best if self.proven else self.default

    @property
    def measured_trials(self) -> tuple[TrialRecord, ...]:
        return tuple(t for t in self.trials if t.state.measured)

    @property
    def best_label(self) -> int | None:
        """The best trial's number as shown (from 1, see TrialRecord.label)."""
        return self.best_trial + 1 if self.best_trial is not None else None

    def trials_summary(self, requested: int | None) -> str:
        """How many trials were measured against how many were asked for, and when fewer, why in words.

        A session stops before its trial budget when the search space runs out (a few switches have
        only a handful of distinct configurations; the same settings are never measured twice), when
        the time budget is spent (time for the final comparison is kept back), when nothing untried
        fits in memory, or on Stop."""
        measured = len(self.measured_trials)
        if requested is None:
            return f"{measured} trials measured (stopped: {self.stop_reason})"
        head = f"{measured} of {requested} trials measured"
        if measured >= requested:
            return head
        skipped = sum(1 for t in self.trials if t.state is TrialStatus.SKIPPED)
        exhausted = f"the search space has only {self.space.count()} distinct configurations"
        if skipped:
            exhausted += f", {skipped} of them skipped (not allowed or would not fit)"
        why = {
            "search space exhausted": exhausted + ", and none is measured twice",
            "time budget": "stopped by the time budget (time for the final comparison is kept back)",
            "cancelled": "stopped by the user",
            "no untried configuration fits": "no untried configuration fits in memory",
        }.get(self.stop_reason, f"stopped: {self.stop_reason}")
        return f"{head}: {why}"

    def to_profile(self) -> LoadSettings:
        """The settings to store with app.model.profiles.ProfileStore.save(name, load, sampling)."""
        return self.best

    def flags(self, *, include_ctx: bool = True) -> str:
        """llama-server / llama-cli flags for the best settings."""
        return llama_cpp_flags(self.best, include_ctx=include_ctx)

    def llama_kwargs(self) -> dict[str, Any]:
        """llama-cpp-python keyword arguments, cache types by name (see llama_python_snippet)."""
        return llama_kwargs_named(self.best)


def best_completed(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The highest-scoring completed trial (the earlier one on a tie); None when none scored above 0.

    Only COMPLETE trials: a pruned trial's score is a median of its first repetitions, and a duplicate
    repeats the score of the trial it copies.
    """
    done = [r for r in records if r.state is TrialStatus.COMPLETE and r.score > 0]
    return max(done, key=lambda r: (r.score, -r.number)) if done else None
