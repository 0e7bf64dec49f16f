"""Auto-tune: find the fastest settings for a model on this machine, prove the gain, apply it.

`Tuner` is the entry point; `run` searches in one Optuna study kept in SQLite (so a session resumes
after a restart), in the phases app.tune.phases plans: the baseline, a numeric TPE search, a grid over
the categorical switches, and a refining TPE search.

Each trial is measured with repetitions and scored by their median; a trial whose first repetitions
fall below 70% of the best so far is pruned. A failed or timed-out trial scores 0 and keeps its
reason; a configuration the memory check (app.model.memory.check_memory) refuses is recorded as skipped
with the numbers, unless the config overrides the check, and one already measured is not measured again
unless it was pruned (both are free: the trial budget counts measurements). Finally the
best and the default settings are measured again, alternately, in the same session, and Welch's t-test
says whether the gain is real. The GUI drives `Tuner.run` from a worker thread: callbacks for each
finished trial and for progress, a cancel flag, and frozen dataclasses out.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from app.llama.driver import CancelFlag
from app.model.memory import InsufficientMemoryError, check_memory, estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, preset_for_model
from app.tune.gain import GainEstimate, estimate_gain
from app.tune.measure import BenchMeasure, KeepGoing, Measure
from app.tune.phases import PhasePlan, baseline_params, describe
from app.tune.pruner import BestFractionPruner
from app.tune.results import (
    TrialRecord,
    TrialStatus,
    TuneConfig,
    TuneProgress,
    TuneResult,
    best_completed,
)
from app.tune.space import (
    MachineFacts,
    Objective,
    SearchSpace,
    TuneError,
    config_key,
    default_search_space,
    prune,
    read_available_ram_bytes,
)
from app.tune.study import (
    ATTR_PHASE,
    ATTR_RECORD,
    default_storage_path,
    distributions,
    open_storage,
    param_importances,
    study_name,
)

_FREE_BEFORE_RANDOM = 3  # duplicates/skips in a row before an untried configuration is queued instead
_FREE_LIMIT = 200  # ... and before giving up on finding one
_MAX_WARMUP_RUNS = 50
_UNLIMITED_BYTES = 1 << 62  # the memory a pruning with the memory check overridden assumes


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
        pruning = machine
        if self.config.override_memory:
            # The memory check is overridden: pruning must not drop candidates for memory either.
            pruning = dataclasses.replace(
                machine, available_ram_bytes=_UNLIMITED_BYTES, available_vram_bytes=_UNLIMITED_BYTES
            )
        space, notes = prune(space, model, objective=self.objective, base=base, machine=pruning)
        return model, machine, base, space, notes

    def run(
        self,
        *,
        cancel: CancelFlag | None = None,
        on_trial: Callable[[TrialRecord], None] | None = None,
        on_progress: Callable[[TuneProgress], None] | None = None,
    ) -> TuneResult:
        """Search, compare the best with the default, and return the result; on the calling thread.

        `cancel` (Stop: a threading.Event, or the engine host's flag) is checked between trials and
        between repetitions: the session then returns the best so far, without the final comparison
        (gain None). `on_trial` gets every finished trial, `on_progress` the stage; both are called on
        this thread. Raises TuneError when nothing can run (no configuration fits in memory, an
        unreadable model).
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        session = _Session(self, cancel or threading.Event(), on_trial, on_progress)
        return session.run()


class _Session:
    """The state of one `Tuner.run`."""

    def __init__(
        self,
        tuner: Tuner,
        cancel: CancelFlag,
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

    def check_memory(self, load: LoadSettings, purpose: str) -> None:
        """The memory check for `load`, against the RAM read once for the session (the tuner keeps no
        model loaded between trials); raises InsufficientMemoryError unless overridden."""
        check_memory(
            self.model,
            load,
            override=self.config.override_memory,
            purpose=purpose,
            available_ram_bytes=self.machine.available_ram_bytes,
            available_vram_bytes=self.machine.available_vram_bytes,
        )

    def fits(self, load: LoadSettings) -> bool:
        try:
            self.check_memory(load, "tune")
        except InsufficientMemoryError:
            return False
        return True

    def keep_going_until(self, deadline: float | None, flags: dict[str, bool]) -> KeepGoing:
        def keep_going(_estimate: float | None) -> bool:
            if self.cancel.is_set():
                return False
            if deadline is not None and self.clock() > deadline:
                flags["timed_out"] = True
                return False
            return True

        return keep_going

    def best_record(self) -> TrialRecord | None:
        return best_completed(self.records.values())

    # ---- the session --------------------------------------------------------------------------
    def run(self) -> TuneResult:
        self.progress("preparing", "reading the model and this machine")
        self.model, self.machine, self.base, self.space, notes = self.tuner.prepare()
        if self.machine.available_ram_bytes is None:
            # Read once for the session, not once per memory check.
            self.machine = dataclasses.replace(self.machine, available_ram_bytes=read_available_ram_bytes())
        self.notes.extend(notes)
        self.measure: Measure = self.tuner._measure or BenchMeasure(
            self.model.path, self.objective, override_memory=self.config.override_memory
        )
        self.dists = distributions(self.space)
        try:
            self.baseline, note = baseline_params(self.space, self.base, self.fits)
        except TuneError as exc:  # nothing fits: say by how much
            estimate = estimate_memory(
                self.model,
                self.base,
                available_ram_bytes=self.machine.available_ram_bytes,
                available_vram_bytes=self.machine.available_vram_bytes,
            )
            raise TuneError(f"{exc} (the default settings: {estimate.summary()})") from None
        if note is not None:
            self.notes.append(note)

        storage = open_storage(self.tuner.storage_path)
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
        self.plan = PhasePlan.open(
            self.study,
            space=self.space,
            base=self.base,
            baseline=self.baseline,
            config=self.config,
            objective=self.objective,
            model_path=self.model.path,
        )
        self.study.sampler = optuna.samplers.TPESampler(
            seed=self.config.seed, n_startup_trials=self.plan.tpe_startup
        )
        self.reload_records()

        stop_reason = self.search()
        best = self.best_record()
        default = self.base
        if not self.fits(default):
            # Never run what the estimate says will not fit, not even to prove a gain: compare with
            # trial 1 (the baseline) instead, the nearest configuration that fits.
            default = self.space.configure(self.base, self.baseline) or self.base
            self.notes.append(
                "the final comparison uses trial 1's settings: the default would not fit in memory"
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
            data = trial.user_attrs.get(ATTR_RECORD)
            if data is not None:
                record = TrialRecord.from_dict(data)
            else:
                record = TrialRecord(
                    number=trial.number,
                    phase=str(trial.user_attrs.get(ATTR_PHASE, "")),
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
            self.plan.queue_next(self.records)
            trial = self.study.ask(self.dists)
            phase = str(trial.user_attrs.get(ATTR_PHASE, "numeric"))
            params = {name: trial.params[name] for name in self.space.tuned}
            self.progress("search", f"trial {trial.number + 1} ({phase}): {describe(params)}")
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
                if free_in_a_row >= _FREE_LIMIT or not self.plan.queue_untried(
                    phase, self.records, self.known, self.fits, self.rng
                ):
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
            trial.set_user_attr(ATTR_RECORD, record.to_dict())
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
                reason=f"same settings as trial {previous.label} ({previous.state.value})",
            )
        try:
            self.check_memory(load, f"run trial {trial.number + 1}")
        except InsufficientMemoryError as exc:
            return finish(TrialStatus.SKIPPED, 0.0, value=None, reason=_refused(exc))

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
        except InsufficientMemoryError as exc:  # the benchmark's own context (its test size) is refused
            return finish(TrialStatus.SKIPPED, 0.0, value=None, reason=_refused(exc))
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
        """PED-ANOVA importances over the distinct measured trials (duplicates are not measurements)."""
        measured = {
            n for n, r in self.records.items() if r.state in (TrialStatus.COMPLETE, TrialStatus.FAILED)
        }
        importances, note = param_importances(self.study, measured, self.space.tuned)
        if note is not None:
            self.notes.append(note)
        return importances


def _refused(exc: InsufficientMemoryError) -> str:
    """A refused trial's reason: the numbers, without the advice the trials table has no room for."""
    return f"refused: would not fit in memory: {exc.estimate.summary()}"
