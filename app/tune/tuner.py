"""Auto-tune: find the fastest settings for a model on this machine, prove the gain, apply it.

The search, in one Optuna study kept in SQLite (so a session resumes after a restart):

1. *Baseline*: trial 0 is the model's preset (snapped to the space, moved to the nearest configuration
   that fits in memory if it does not).
2. *Numeric search*: TPE over the ordered parameters (threads, batch sizes, GPU layers) with the
   categorical ones held at the baseline's values.
3. *Categorical grid*: every allowed combination of flash attention, cache types, mmap, mlock and NUMA
   at the best numeric point so far (one group at a time when the full grid would not fit the budget),
   the way llama-optimus scans flash attention and tensor overrides after its numeric pass.
4. *Refine*: TPE over the numeric parameters again, the categoricals held at the best combination.

Each trial is measured with repetitions and scored by their median; a trial whose first repetitions
fall below 70% of the best so far is pruned. A failed or timed-out trial scores 0 and keeps its
reason; a configuration estimate_memory says will not fit is skipped, and one already measured is not
measured again unless it was pruned (both are free: the trial budget counts measurements). Finally the
best and the default settings are measured again, alternately, in the same session, and Welch's t-test
says whether the gain is real. The GUI drives `Tuner.run` from a worker thread: callbacks for each
finished trial and for progress, a cancel Event, and frozen dataclasses out.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import math
import os
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from app.common.stats import stdev, student_t_two_sided_p, welch
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, preset_for_model
from app.tune.export import llama_cpp_args, llama_cpp_flags, llama_kwargs_named, llama_python_snippet
from app.tune.measure import BenchMeasure, KeepGoing, Measure
from app.tune.space import (
    CATEGORICAL_PARAMS,
    MEMORY_PARAMS,
    NUMERIC_PARAMS,
    TUNABLE_PARAMS,
    MachineFacts,
    Objective,
    SearchSpace,
    TuneError,
    config_key,
    default_search_space,
    fits_in_memory,
    prune,
)

__all__ = [
    "CATEGORICAL_PARAMS",
    "NUMERIC_PARAMS",
    "TUNABLE_PARAMS",
    "BenchMeasure",
    "BestFractionPruner",
    "GainEstimate",
    "KeepGoing",
    "MachineFacts",
    "Measure",
    "Objective",
    "SearchSpace",
    "TrialRecord",
    "TrialStatus",
    "TuneConfig",
    "TuneError",
    "TuneProgress",
    "TuneResult",
    "Tuner",
    "default_search_space",
    "default_storage_path",
    "estimate_gain",
    "llama_cpp_args",
    "llama_cpp_flags",
    "llama_kwargs_named",
    "llama_python_snippet",
    "prune",
    "study_name",
    "t_quantile",
]

_FORMAT = 1  # bump when the meaning of stored trials changes: a new format is a new study
_NOMINAL_BUDGET = 30  # trials assumed for planning the phases when only a time budget is given
_FREE_BEFORE_RANDOM = 3  # duplicates/skips in a row before an untried configuration is queued instead
_FREE_LIMIT = 200  # ... and before giving up on finding one
_MAX_WARMUP_RUNS = 50
_ATTR_RECORD = "llamascope"  # trial user attribute: the TrialRecord as a dict
_ATTR_PHASE = "phase"
_ATTR_PLAN = "llamascope_plan"  # study user attributes
_ATTR_GRID = "llamascope_grid_started"
_GAIN_METHOD = (
    "Welch's t interval of the difference of the means (best − default), divided by the default's mean; "
    "the default's own uncertainty in that divisor is not propagated"
)


def default_storage_path() -> str:
    """tuning.sqlite3 in the user data folder, beside the benchmark history."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("LlamaScope", appauthor=False), "tuning.sqlite3")


# ---- configuration and results ----------------------------------------------------------------


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
    SKIPPED = "skipped"  # not tried: would not fit in memory (or not allowed)
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

    def to_profile(self) -> LoadSettings:
        """The settings to store with app.model.profiles.ProfileStore.save(name, load, sampling)."""
        return self.best

    def flags(self, *, include_ctx: bool = True) -> str:
        """llama-server / llama-cli flags for the best settings."""
        return llama_cpp_flags(self.best, include_ctx=include_ctx)

    def llama_kwargs(self) -> dict[str, Any]:
        """llama-cpp-python keyword arguments, cache types by name (see llama_python_snippet)."""
        return llama_kwargs_named(self.best)


# ---- statistics -------------------------------------------------------------------------------


def t_quantile(p_two_sided: float, dof: float) -> float:
    """t such that P(|T| >= t) = p_two_sided for Student's t, by bisection on app.common.stats' exact CDF."""
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
    diff = mean_b - mean_a
    low = high = None
    na, nb = len(default_scores), len(best_scores)
    if na >= 2 and nb >= 2 and mean_a > 0:
        va, vb = stdev(default_scores) ** 2 / na, stdev(best_scores) ** 2 / nb
        se = math.sqrt(va + vb)
        if se == 0.0:
            half = 0.0
        else:
            dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
            half = t_quantile(1.0 - confidence, dof) * se
        low, high = (diff - half) / mean_a * 100.0, (diff + half) / mean_a * 100.0
    return GainEstimate(
        default_scores=tuple(default_scores),
        best_scores=tuple(best_scores),
        default_mean=mean_a,
        best_mean=mean_b,
        gain_percent=diff / mean_a * 100.0 if mean_a > 0 else math.inf,
        ci_low_percent=low,
        ci_high_percent=high,
        confidence=confidence,
        p_value=comparison.p_value,
        significant=comparison.significant,
    )


class BestFractionPruner(optuna.pruners.BasePruner):
    """Prune a trial whose running median falls below `fraction` × the best completed score.

    Rather than Optuna's MedianPruner: a trial here has 3-5 steps (repetitions), not hundreds, and the
    question is not "worse than the typical trial" (half of all trials are) but "clearly unable to win".
    """

    def __init__(self, fraction: float = 0.7, min_steps: int = 2) -> None:
        self.fraction = fraction
        self.min_steps = min_steps

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        values = list(trial.intermediate_values.values())
        if len(values) < self.min_steps:
            return False
        scores = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best = max((s for s in scores if s is not None and s > 0), default=None)
        return best is not None and statistics.median(values) < self.fraction * best


# ---- the study --------------------------------------------------------------------------------


def _model_fingerprint(model: ModelInfo) -> str:
    from app.bench.history import model_fingerprint

    fp = model_fingerprint(model.path)
    if fp is not None:
        return fp
    # A ModelInfo without its file (tests, a moved model): its header facts identify it well enough.
    facts = [model.name, model.architecture, model.n_params, model.file_type, model.tensor_data_bytes]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def study_name(model: ModelInfo, objective: Objective, space: SearchSpace, base: LoadSettings) -> str:
    """<model fingerprint>-<objective>-<hash of space, n_ctx and machine>.

    Results belong to one model file, one workload and one machine; a different search space needs a new
    study too (Optuna cannot change a categorical parameter's choices within a study).
    """
    from app.telemetry.hardware import hardware_fingerprint

    extra = {
        "format": _FORMAT,
        "space": space.to_dict(),
        "n_ctx": base.n_ctx,
        "offload_kqv": base.offload_kqv,
        "machine": hardware_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return f"{_model_fingerprint(model)}-{objective.key}-{digest}"


def _distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Evenly spaced numbers (threads 1..N, GPU layers 0..N) as integer ranges TPE can interpolate;
    other candidate lists (batch sizes 64, 128, 512…, every categorical) as choices."""
    out: dict[str, BaseDistribution] = {}
    for name in space.tuned:
        values = space.values(name)
        if name in NUMERIC_PARAMS and _evenly_spaced(values):
            ordered = sorted(values)
            out[name] = IntDistribution(ordered[0], ordered[-1], step=ordered[1] - ordered[0])
        else:
            out[name] = CategoricalDistribution(values)
    return out


def _evenly_spaced(values: Sequence[int]) -> bool:
    ordered = sorted(values)
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    return len(ordered) >= 2 and len(steps) == 1 and next(iter(steps)) > 0


def _nearest(values: Sequence[Any], wanted: Any) -> Any:
    if wanted in values:
        return wanted
    if isinstance(wanted, bool) or not isinstance(wanted, int | float):
        return values[0]
    return min(values, key=lambda v: (abs(v - wanted), v))


def _describe(params: Mapping[str, Any]) -> str:
    def one(v: Any) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in params.items())


class Tuner:
    """One auto-tuning session over a model; `run` does the work (seconds to hours: use a worker thread).

    `model` is a GGUF path or its ModelInfo; `objective` an Objective or its text ("tg", "pp:512",
    "mix:512,128"); `space` the candidates (default: `default_search_space`, always passed through
    `prune`); `base` the default settings (default: the model's preset), which also give n_ctx;
    `measure` how a configuration is scored (default: BenchMeasure on the model); `storage_path` the
    SQLite file (default: `default_storage_path()`); `machine` the facts pruning uses (default:
    detected); `clock` a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        model: str | ModelInfo,
        objective: Objective | str = "tg",
        *,
        space: SearchSpace | None = None,
        base: LoadSettings | None = None,
        measure: Measure | None = None,
        config: TuneConfig | None = None,
        storage_path: str | None = None,
        machine: MachineFacts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self.objective = Objective.parse(objective) if isinstance(objective, str) else objective
        self._space = space
        self._base = base
        self._measure = measure
        self.config = config or TuneConfig()
        self.storage_path = storage_path or default_storage_path()
        self._machine = machine
        self._clock = clock

    def model_info(self) -> ModelInfo:
        if isinstance(self._model, ModelInfo):
            return self._model
        from app.model.gguf_info import inspect_model

        return inspect_model(self._model)

    def prepare(self) -> tuple[ModelInfo, MachineFacts, LoadSettings, SearchSpace, tuple[str, ...]]:
        """(model, machine, base, pruned space, notes): what `run` will search. Reads the GGUF header and,
        unless `machine` was given, asks llama.cpp and NVML: not on the GUI thread."""
        model = self.model_info()
        machine = self._machine or MachineFacts.detect()
        base = self._base or preset_for_model(model, logical_cores=machine.logical_cores)[0]
        space = self._space or default_search_space(
            model, logical_cores=machine.logical_cores, has_gpu=machine.has_gpu, base=base
        )
        space, notes = prune(space, model, objective=self.objective, base=base, machine=machine)
        return model, machine, base, space, notes

    def run(
        self,
        *,
        cancel: threading.Event | None = None,
        on_trial: Callable[[TrialRecord], None] | None = None,
        on_progress: Callable[[TuneProgress], None] | None = None,
    ) -> TuneResult:
        """Search, compare the best with the default, and return the result; on the calling thread.

        `cancel` (Stop) is checked between trials and between repetitions: the session then returns the
        best so far, without the final comparison (gain None). `on_trial` gets every finished trial,
        `on_progress` the stage; both are called on this thread. Raises TuneError when nothing can run
        (no configuration fits in memory, an unreadable model).
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        session = _Session(self, cancel or threading.Event(), on_trial, on_progress)
        return session.run()


class _Session:
    """The state of one `Tuner.run`."""

    def __init__(
        self,
        tuner: Tuner,
        cancel: threading.Event,
        on_trial: Callable[[TrialRecord], None] | None,
        on_progress: Callable[[TuneProgress], None] | None,
    ) -> None:
        self.tuner = tuner
        self.config = tuner.config
        self.objective = tuner.objective
        self.cancel = cancel
        self.on_trial = on_trial
        self.on_progress = on_progress
        self.clock = tuner._clock
        self.t_start = self.clock()
        self.rng = random.Random(self.config.seed)
        self.records: dict[int, TrialRecord] = {}
        self.known: dict[tuple[Any, ...], TrialRecord] = {}
        self.measured = 0
        self.durations: list[float] = []
        self.notes: list[str] = []

    # ---- small helpers ------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def progress(self, stage: str, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(
                TuneProgress(stage, message, self.measured, self.config.n_trials, self.elapsed())
            )

    def fits(self, load: LoadSettings) -> bool:
        return fits_in_memory(self.model, load, self.machine)

    def keep_going_until(self, deadline: float | None, flags: dict[str, bool]) -> KeepGoing:
        def keep_going(_estimate: float | None) -> bool:
            if self.cancel.is_set():
                return False
            if deadline is not None and self.clock() > deadline:
                flags["timed_out"] = True
                return False
            return True

        return keep_going

    # ---- the session --------------------------------------------------------------------------
    def run(self) -> TuneResult:
        self.progress("preparing", "reading the model and this machine")
        self.model, self.machine, self.base, self.space, notes = self.tuner.prepare()
        if self.machine.available_ram_bytes is None:
            self.machine = dataclasses.replace(self.machine, available_ram_bytes=_available_ram())
        self.notes.extend(notes)
        self.measure: Measure = self.tuner._measure or BenchMeasure(self.model.path, self.objective)
        self.dists = _distributions(self.space)
        self.baseline = self.baseline_params()

        os.makedirs(os.path.dirname(os.path.abspath(self.tuner.storage_path)), exist_ok=True)
        storage = optuna.storages.RDBStorage(
            "sqlite:///" + os.path.abspath(self.tuner.storage_path),
            engine_kwargs={"connect_args": {"timeout": 60, "factory": _WalConnection}},
        )
        try:
            return self.run_study(storage)
        finally:
            storage.engine.dispose()  # release the SQLite file (Windows cannot delete an open one)

    def run_study(self, storage: optuna.storages.RDBStorage) -> TuneResult:
        self.name = study_name(self.model, self.objective, self.space, self.base)
        if not self.config.resume:
            try:
                optuna.delete_study(study_name=self.name, storage=storage)
            except KeyError:
                pass
        self.study = optuna.create_study(
            storage=storage,
            study_name=self.name,
            direction="maximize",
            load_if_exists=True,
            pruner=BestFractionPruner(self.config.prune_fraction, self.config.prune_min_repetitions),
        )
        self.open_plan()
        self.study.sampler = optuna.samplers.TPESampler(
            seed=self.config.seed, n_startup_trials=self.plan["tpe_startup"]
        )
        self.reload_records()

        stop_reason = self.search()
        best = self.best_record()
        default = self.base
        if not self.fits(default):
            # Never run what the estimate says will not fit, not even to prove a gain: compare with
            # trial 0 instead, the nearest configuration that fits.
            default = self.space.configure(self.base, self.baseline) or self.base
            self.notes.append(
                "the final comparison uses trial 0's settings: the default would not fit in memory"
            )
        gain = None
        if stop_reason != "cancelled" and best is not None and best.settings is not None:
            gain = self.compare(default, best.settings)
        importances = self.importances()
        self.reload_records()
        self.progress("done", f"stopped: {stop_reason}")
        return TuneResult(
            model_path=self.model.path,
            objective=self.objective,
            study_name=self.name,
            storage_path=self.tuner.storage_path,
            space=self.space,
            best=best.settings if best is not None and best.settings is not None else self.base,
            best_trial=best.number if best is not None else None,
            best_score=best.score if best is not None else None,
            default=default,
            gain=gain,
            importances=importances,
            trials=tuple(self.records[n] for n in sorted(self.records)),
            stop_reason=stop_reason,
            notes=tuple(dict.fromkeys(self.notes)),
            elapsed_s=self.elapsed(),
        )

    # ---- plan and phases ----------------------------------------------------------------------
    def baseline_params(self) -> dict[str, Any]:
        """The base settings as a point of the space; if that does not fit, the fitting point that
        changes the fewest memory-relevant parameters."""
        params = {
            name: _nearest(self.space.values(name), getattr(self.base, name)) for name in self.space.tuned
        }
        load = self.space.configure(self.base, params)
        if load is not None and self.fits(load):
            return params
        names = [n for n in MEMORY_PARAMS if n in self.space.tuned]
        best: tuple[int, dict[str, Any]] | None = None
        for i, values in enumerate(itertools.product(*(self.space.values(n) for n in names))):
            if i >= 50_000:
                break
            candidate = {**params, **dict(zip(names, values, strict=True))}
            load = self.space.configure(self.base, candidate)
            if load is None or not self.fits(load):
                continue
            changes = sum(candidate[n] != params[n] for n in names)
            if best is None or changes < best[0]:
                best = (changes, candidate)
        if best is None:
            raise TuneError(
                f"no configuration of the search space fits in memory with n_ctx {self.base.n_ctx}: "
                "lower the context size or offload fewer layers"
            )
        self.notes.append(
            f"the default settings would not fit in memory; trial 0 starts from {_describe(best[1])}"
        )
        return best[1]

    def open_plan(self) -> None:
        plan = self.study.user_attrs.get(_ATTR_PLAN)
        if plan is not None:
            self.plan = plan
            return
        budget = self.config.n_trials or _NOMINAL_BUDGET
        categorical = [n for n in CATEGORICAL_PARAMS if n in self.space.tuned]
        full = len(self.space.categorical_combinations()) if categorical else 1
        numeric_first = max(
            1, min(self.space.numeric_point_count(), round(self.config.numeric_share * budget))
        )
        self.plan = {
            "format": _FORMAT,
            "objective": self.objective.spec,
            "model_path": self.model.path,
            "space": self.space.to_dict(),
            "base": self.base.to_dict(),
            "numeric_first": numeric_first if full > 1 else None,
            "grid_mode": None if full <= 1 else ("full" if full - 1 <= max(4, budget // 2) else "grouped"),
            "tpe_startup": max(2, min(10, numeric_first // 2)),
        }
        self.study.set_user_attr(_ATTR_PLAN, self.plan)
        self.study.enqueue_trial(self.baseline, user_attrs={_ATTR_PHASE: "baseline"})

    def prepare_next_trial(self) -> None:
        """Queue what the next trial fixes (its phase); TPE samples the rest at ask()."""
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        if self.plan["grid_mode"] is None:
            self.study.enqueue_trial({}, user_attrs={_ATTR_PHASE: "numeric"})
            return
        categorical = [n for n in CATEGORICAL_PARAMS if n in self.space.tuned]
        if not self.study.user_attrs.get(_ATTR_GRID):
            done = sum(
                1 for r in self.records.values() if r.phase in ("baseline", "numeric") and r.state.measured
            )
            if done < self.plan["numeric_first"]:
                fixed = {n: self.baseline[n] for n in categorical}
                self.study.enqueue_trial(fixed, user_attrs={_ATTR_PHASE: "numeric"})
                return
            if self.start_grid():
                return
        best = self.best_record()
        center = self.params_of(best) if best is not None else self.baseline
        self.study.enqueue_trial({n: center[n] for n in categorical}, user_attrs={_ATTR_PHASE: "refine"})

    def params_of(self, record: TrialRecord) -> dict[str, Any]:
        """The record's tuned parameters as candidates of the space."""
        out = {}
        for name in self.space.tuned:
            value = record.params.get(name, getattr(record.settings, name, None))
            out[name] = _nearest(self.space.values(name), value)
        return out

    def start_grid(self) -> bool:
        """Queue the categorical grid at the best point so far; False when it adds nothing."""
        self.study.set_user_attr(_ATTR_GRID, True)
        best = self.best_record()
        center = self.params_of(best) if best is not None else dict(self.baseline)
        categorical = [n for n in CATEGORICAL_PARAMS if n in self.space.tuned]
        if self.plan["grid_mode"] == "full":
            combos = self.space.categorical_combinations()
        else:
            combos = self.grouped_combinations({n: center[n] for n in categorical})
        queued = 0
        for combo in combos:
            if all(center[n] == v for n, v in combo.items()):
                continue
            self.study.enqueue_trial({**center, **combo}, user_attrs={_ATTR_PHASE: "grid"})
            queued += 1
        return queued > 0

    def grouped_combinations(self, center: dict[str, Any]) -> list[dict[str, Any]]:
        """The full grid of the coupled attention settings, then each remaining switch on its own."""
        attention = [n for n in ("flash_attn", "type_k", "type_v") if n in center]
        combos = []
        for values in itertools.product(*(self.space.values(n) for n in attention)):
            combo = {**center, **dict(zip(attention, values, strict=True))}
            if self.space.configure(self.base, combo) is not None:
                combos.append(combo)
        for name in ("use_mmap", "use_mlock", "numa"):
            if name in center:
                combos += [{**center, name: v} for v in self.space.values(name) if v != center[name]]
        return combos

    def queue_untried(self, phase: str) -> bool:
        """Queue a random configuration not tried yet that fits; prefer the phase's categoricals."""
        categorical = [n for n in CATEGORICAL_PARAMS if n in self.space.tuned]
        best = self.best_record()
        center = self.params_of(best) if best is not None else self.baseline
        for attempt in range(600):
            params = {n: self.rng.choice(self.space.values(n)) for n in self.space.tuned}
            if attempt < 300:
                params.update({n: center[n] for n in categorical})
            load = self.space.configure(self.base, params)
            if load is None or config_key(load) in self.known or not self.fits(load):
                continue
            self.study.enqueue_trial(params, user_attrs={_ATTR_PHASE: phase})
            return True
        return False

    # ---- records ------------------------------------------------------------------------------
    def reload_records(self) -> None:
        """Every finished trial of the study, previous sessions included; fail stale RUNNING ones."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in self.records:
                try:  # a previous session ended during this trial
                    self.study.tell(trial.number, state=TrialState.FAIL)
                except (ValueError, RuntimeError):
                    pass
        self.known.clear()
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state in (TrialState.WAITING, TrialState.RUNNING):
                continue
            data = trial.user_attrs.get(_ATTR_RECORD)
            if data is not None:
                record = TrialRecord.from_dict(data)
            else:
                record = TrialRecord(
                    number=trial.number,
                    phase=str(trial.user_attrs.get(_ATTR_PHASE, "")),
                    params=dict(trial.params),
                    settings=None,
                    score=0.0,
                    state=TrialStatus.INTERRUPTED,
                    reason="the session ended during this trial",
                )
            self.records[record.number] = record
            self.remember(record)

    def remember(self, record: TrialRecord) -> None:
        """Settings not to measure again. A pruned configuration is not among them: pruning judges one
        or two repetitions under the load of that moment, and a burst of background load can prune a
        good configuration (seen on the shared test machine: eight in a row). It may come back; TPE,
        which ranks pruned trials last, proposes it only when little else is left."""
        if record.settings is not None and record.state in (
            TrialStatus.COMPLETE,
            TrialStatus.FAILED,
            TrialStatus.SKIPPED,
        ):
            self.known.setdefault(config_key(record.settings), record)

    def best_record(self) -> TrialRecord | None:
        done = [r for r in self.records.values() if r.state is TrialStatus.COMPLETE and r.score > 0]
        return max(done, key=lambda r: (r.score, -r.number)) if done else None

    # ---- search -------------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.config.n_trials is not None and self.measured >= self.config.n_trials:
            return "trial budget"
        if self.config.time_budget_s is not None:
            # Keep time for the final comparison: 2 × rounds measurements of a typical trial's length.
            typical = statistics.median(self.durations) if self.durations else 0.0
            reserve = 2 * self.config.compare_rounds * typical
            if self.elapsed() + reserve >= self.config.time_budget_s:
                return "time budget"
        if len(self.known) >= self.space.count():
            return "search space exhausted"
        return None

    def search(self) -> str:
        self.warm_up()
        free_in_a_row = 0
        while True:
            reason = self.stop_reason()
            if reason is not None:
                return reason
            self.prepare_next_trial()
            trial = self.study.ask(self.dists)
            phase = str(trial.user_attrs.get(_ATTR_PHASE, "numeric"))
            params = {name: trial.params[name] for name in self.space.tuned}
            self.progress("search", f"trial {trial.number} ({phase}): {_describe(params)}")
            record = self.evaluate(trial, phase, params)
            self.records[record.number] = record
            self.remember(record)
            if record.state is TrialStatus.INTERRUPTED:
                self.emit(record)
                return "cancelled"
            if record.state.measured:
                self.measured += 1
                self.durations.append(record.duration_s)
                free_in_a_row = 0
            else:
                free_in_a_row += 1
            self.emit(record)
            if free_in_a_row and free_in_a_row % _FREE_BEFORE_RANDOM == 0:
                # TPE keeps proposing what is known (small spaces do that): try something new instead.
                if free_in_a_row >= _FREE_LIMIT or not self.queue_untried(phase):
                    return "no untried configuration fits"

    def emit(self, record: TrialRecord) -> None:
        if self.on_trial is not None:
            self.on_trial(record)

    def warm_up(self) -> None:
        if self.config.warmup_s <= 0 or self.cancel.is_set():
            return
        load = self.space.configure(self.base, self.baseline)
        assert load is not None  # baseline_params only returns allowed points
        self.progress(
            "warm-up", f"running the baseline for {self.config.warmup_s:g} s so the machine settles"
        )
        start = self.clock()
        flags: dict[str, bool] = {}
        keep_going = self.keep_going_until(start + self.config.warmup_s, flags)
        for _ in range(_MAX_WARMUP_RUNS):
            if self.cancel.is_set() or self.clock() - start >= self.config.warmup_s:
                return
            try:
                self.measure(load, repetitions=1, keep_going=keep_going, cancel=self.cancel)
            except Exception as exc:  # the baseline trial will fail the same way and say so
                self.notes.append(f"warm-up stopped: {type(exc).__name__}: {exc}")
                return

    def evaluate(self, trial: optuna.trial.Trial, phase: str, params: dict[str, Any]) -> TrialRecord:
        start = self.clock()
        load = self.space.configure(self.base, params)

        def finish(
            state: TrialStatus,
            score: float,
            *,
            value: float | None,
            reason: str = "",
            reps: Sequence[float] = (),
            duplicate_of: int | None = None,
        ) -> TrialRecord:
            record = TrialRecord(
                number=trial.number,
                phase=phase,
                params=params,
                settings=load,
                score=score,
                state=state,
                reason=reason,
                repetitions=tuple(reps),
                duplicate_of=duplicate_of,
                duration_s=self.clock() - start,
            )
            trial.set_user_attr(_ATTR_RECORD, record.to_dict())
            if state is TrialStatus.INTERRUPTED:
                self.study.tell(trial, state=TrialState.FAIL)
            elif value is None:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, value)
            return record

        if load is None:
            return finish(
                TrialStatus.SKIPPED,
                0.0,
                value=None,
                reason="not allowed: a quantized V cache needs flash attention",
            )
        previous = self.known.get(config_key(load))
        if previous is not None:
            reused = previous.score if previous.state is not TrialStatus.SKIPPED else None
            return finish(
                TrialStatus.DUPLICATE,
                previous.score,
                value=reused,
                duplicate_of=previous.number,
                reason=f"same settings as trial {previous.number} ({previous.state.value})",
            )
        if not self.fits(load):
            from app.model.memory import estimate_memory

            estimate = estimate_memory(
                self.model,
                load,
                available_ram_bytes=self.machine.available_ram_bytes,
                available_vram_bytes=self.machine.available_vram_bytes,
            )
            return finish(
                TrialStatus.SKIPPED, 0.0, value=None, reason=f"would not fit in memory: {estimate.summary()}"
            )

        reps_wanted = self.config.repetitions
        deadline = start + self.config.trial_timeout_s if self.config.trial_timeout_s is not None else None
        flags: dict[str, bool] = {}
        reported: list[float] = []
        limit = self.keep_going_until(deadline, flags)

        def keep_going(estimate: float | None) -> bool:
            if not limit(estimate):
                return False
            if estimate is None:
                return True
            trial.report(estimate, len(reported))
            reported.append(estimate)
            if trial.should_prune():
                flags["pruned"] = True
                return False
            return True

        try:
            scores = [
                float(s)
                for s in self.measure(
                    load, repetitions=reps_wanted, keep_going=keep_going, cancel=self.cancel
                )
            ]
        except Exception as exc:  # any failure of one configuration must not end the search
            return finish(TrialStatus.FAILED, 0.0, value=0.0, reason=f"{type(exc).__name__}: {exc}")
        elapsed = self.clock() - start
        if self.cancel.is_set() and len(scores) < reps_wanted:
            return finish(TrialStatus.INTERRUPTED, 0.0, value=None, reason="stopped", reps=scores)
        limit_s = self.config.trial_timeout_s
        if flags.get("timed_out") or (limit_s is not None and elapsed > limit_s):
            return finish(
                TrialStatus.FAILED,
                0.0,
                value=0.0,
                reps=scores,
                reason=f"timed out after {elapsed:.0f} s (limit {limit_s:g} s)",
            )
        if flags.get("pruned"):
            so_far = statistics.median(reported)
            best = self.best_record()
            return finish(
                TrialStatus.PRUNED,
                so_far,
                value=None,
                reps=scores,
                reason=f"pruned after {len(reported)} repetitions: median {so_far:.1f} below "
                f"{self.config.prune_fraction:g} × best {best.score if best else 0:.1f}",
            )
        if not scores:
            return finish(TrialStatus.FAILED, 0.0, value=0.0, reason="no repetition finished")
        if not reported:  # the measure gave no live estimates: keep the repetitions in the study too
            for step, score in enumerate(scores):
                trial.report(score, step)
        score = statistics.median(scores)
        return finish(TrialStatus.COMPLETE, score, value=score, reps=scores)

    # ---- the proof ----------------------------------------------------------------------------
    def compare(self, default: LoadSettings, best: LoadSettings) -> GainEstimate | None:
        """Measure default and best alternately (ABBA…), so drift in temperature or background load
        hits both, and estimate the gain."""
        reps = self.config.compare_repetitions or self.config.repetitions
        samples: dict[str, list[float]] = {"default": [], "best": []}
        for round_index in range(self.config.compare_rounds):
            order = ("default", "best") if round_index % 2 == 0 else ("best", "default")
            for which in order:
                if self.cancel.is_set():
                    self.notes.append("stopped during the final comparison: no gain estimate")
                    return None
                self.progress(
                    "compare",
                    f"measuring the {which} settings (round {round_index + 1} of "
                    f"{self.config.compare_rounds})",
                )
                load = default if which == "default" else best
                start = self.clock()
                deadline = start + self.config.trial_timeout_s if self.config.trial_timeout_s else None
                flags: dict[str, bool] = {}
                try:
                    scores = self.measure(
                        load,
                        repetitions=reps,
                        keep_going=self.keep_going_until(deadline, flags),
                        cancel=self.cancel,
                    )
                except Exception as exc:
                    self.notes.append(
                        f"the final comparison failed on the {which} settings: {type(exc).__name__}: {exc}"
                    )
                    return None
                if flags.get("timed_out"):
                    self.notes.append(f"the final comparison timed out on the {which} settings")
                    return None
                samples[which].extend(float(s) for s in scores)
        if self.cancel.is_set() or not samples["default"] or not samples["best"]:
            self.notes.append("the final comparison did not finish: no gain estimate")
            return None
        return estimate_gain(
            samples["default"], samples["best"], confidence=self.config.confidence, alpha=self.config.alpha
        )

    def importances(self) -> dict[str, float]:
        """PED-ANOVA importances (Watanabe et al., 2023) over the distinct measured trials.

        Not Optuna's default fANOVA: that needs scikit-learn, which LlamaScope does not ship.
        Duplicates are left out so that a configuration TPE proposed five times does not count five times.
        """
        measured = {
            n for n, r in self.records.items() if r.state in (TrialStatus.COMPLETE, TrialStatus.FAILED)
        }
        trials = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number in measured
        ]
        # Only parameters that took 2+ values: one held fixed throughout explains nothing.
        names = [
            n
            for n in self.space.tuned
            if all(n in t.params for t in trials) and len({repr(t.params[n]) for t in trials}) > 1
        ]
        if len(trials) < 2 or not names:
            self.notes.append("parameter importances need at least 2 measured trials that differ")
            return {}
        if len({t.value for t in trials}) < 2:
            self.notes.append("every measured trial scored the same: no parameter importances")
            return {}
        copy = optuna.create_study(direction="maximize")
        copy.add_trials(trials)
        quantile = min(0.5, max(0.25, 2.0 / len(trials)))  # at least two trials in the "top" set
        try:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
            result = optuna.importance.get_param_importances(copy, evaluator=evaluator, params=names)
        except Exception as exc:  # importances are a bonus; never lose a tuning result over them
            self.notes.append(f"parameter importances unavailable: {type(exc).__name__}: {exc}")
            return {}
        return {k: float(v) for k, v in result.items()}


class _WalConnection(sqlite3.Connection):
    """SQLite in WAL mode with synchronous=NORMAL, as the history store uses it.

    Optuna commits several times per trial; with the default rollback journal each commit waits for an
    fsync (~10 ms, far more on a busy disk), which made a fake-measured trial cost ~0.2 s. In WAL mode
    a crash can lose at most the last commits, never corrupt the study, and a lost trial is re-run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def _available_ram() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # estimate_memory will read it (and fail loudly) if psutil is really missing
        return None
