"""The tuner's search plan: where it starts and which phase each next trial belongs to.

1. *Baseline*: trial 0 is the default settings (the model's preset unless given) snapped to the space,
   moved to the nearest configuration that fits in memory if they do not.
2. *Numeric search*: TPE over the ordered parameters (threads, batch sizes, GPU layers) with the
   categorical ones held at the baseline's values.
3. *Categorical grid*: every allowed combination of flash attention, cache types, mmap, mlock and NUMA
   at the best numeric point so far (one group at a time when the full grid would not fit the budget),
   the way llama-optimus scans flash attention and tensor overrides after its numeric pass.
4. *Refine*: TPE over the numeric parameters again, the categoricals held at the best combination.

A phase is a partial trial enqueued in the study: it fixes what the phase holds, and TPE samples the
rest at ask(). The plan's sizes are decided once, when the study starts, and stored in it, so a resumed
session continues the same plan.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from app.model.settings import LoadSettings
from app.tune.results import TrialRecord, TuneConfig, best_completed
from app.tune.space import CATEGORICAL_PARAMS, MEMORY_PARAMS, Objective, SearchSpace, TuneError, config_key
from app.tune.study import ATTR_GRID, ATTR_PHASE, ATTR_PLAN, STUDY_FORMAT

_NOMINAL_BUDGET = 30  # trials assumed for planning the phases when only a time budget is given
_MAX_BASELINE_COMBINATIONS = 50_000  # memory-relevant combinations searched for a baseline that fits

Fits = Callable[[LoadSettings], bool]


def nearest(values: Sequence[Any], wanted: Any) -> Any:
    """`wanted` if it is a candidate, else the nearest number (the smaller on a tie), else the first."""
    if wanted in values:
        return wanted
    if isinstance(wanted, bool) or not isinstance(wanted, int | float):
        return values[0]
    return min(values, key=lambda v: (abs(v - wanted), v))


def describe(params: Mapping[str, Any]) -> str:
    """Parameters as one line for progress and notes: n_threads=4 flash_attn=on."""

    def one(v: Any) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in params.items())


def baseline_params(space: SearchSpace, base: LoadSettings, fits: Fits) -> tuple[dict[str, Any], str | None]:
    """The base settings as a point of the space, and None; if that does not fit, the fitting point that
    changes the fewest memory-relevant parameters, and a note saying so. TuneError when none fits."""
    params = {name: nearest(space.values(name), getattr(base, name)) for name in space.tuned}
    load = space.configure(base, params)
    if load is not None and fits(load):
        return params, None
    names = [n for n in MEMORY_PARAMS if n in space.tuned]
    best: tuple[int, dict[str, Any]] | None = None
    for i, values in enumerate(itertools.product(*(space.values(n) for n in names))):
        if i >= _MAX_BASELINE_COMBINATIONS:
            break
        candidate = {**params, **dict(zip(names, values, strict=True))}
        load = space.configure(base, candidate)
        if load is None or not fits(load):
            continue
        changes = sum(candidate[n] != params[n] for n in names)
        if best is None or changes < best[0]:
            best = (changes, candidate)
    if best is None:
        raise TuneError(
            f"no configuration of the search space fits in memory with n_ctx {base.n_ctx}: "
            "lower the context size or offload fewer layers"
        )
    return best[1], f"the default settings would not fit in memory; trial 1 starts from {describe(best[1])}"


class PhasePlan:
    """Queues each next trial's phase in `study`; `open` reads the plan a study started with or makes it."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        base: LoadSettings,
        baseline: Mapping[str, Any],
        plan: Mapping[str, Any],
    ) -> None:
        self.study = study
        self.space = space
        self.base = base
        self.baseline = dict(baseline)
        self.plan = dict(plan)
        self.categorical = [n for n in CATEGORICAL_PARAMS if n in space.tuned]

    @classmethod
    def open(
        cls,
        study: optuna.Study,
        *,
        space: SearchSpace,
        base: LoadSettings,
        baseline: Mapping[str, Any],
        config: TuneConfig,
        objective: Objective,
        model_path: str,
    ) -> PhasePlan:
        """The study's stored plan; for a new study a plan for `config`'s budget, stored, and the baseline
        queued as trial 0."""
        stored = study.user_attrs.get(ATTR_PLAN)
        if stored is not None:
            return cls(study, space, base, baseline, stored)
        budget = config.n_trials or _NOMINAL_BUDGET
        full = (
            len(space.categorical_combinations()) if any(n in space.tuned for n in CATEGORICAL_PARAMS) else 1
        )
        numeric_first = max(1, min(space.numeric_point_count(), round(config.numeric_share * budget)))
        plan = {
            "format": STUDY_FORMAT,
            "objective": objective.spec,
            "model_path": model_path,
            "space": space.to_dict(),
            "base": base.to_dict(),
            "numeric_first": numeric_first if full > 1 else None,
            "grid_mode": None if full <= 1 else ("full" if full - 1 <= max(4, budget // 2) else "grouped"),
            "tpe_startup": max(2, min(10, numeric_first // 2)),
        }
        study.set_user_attr(ATTR_PLAN, plan)
        study.enqueue_trial(dict(baseline), user_attrs={ATTR_PHASE: "baseline"})
        return cls(study, space, base, baseline, plan)

    @property
    def tpe_startup(self) -> int:
        """Random trials before TPE models the scores (fewer on a small numeric budget)."""
        return int(self.plan["tpe_startup"])

    def queue_next(self, records: Mapping[int, TrialRecord]) -> None:
        """Queue what the next trial fixes (its phase); TPE samples the rest at ask()."""
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        if self.plan["grid_mode"] is None:
            self.study.enqueue_trial({}, user_attrs={ATTR_PHASE: "numeric"})
            return
        if not self.study.user_attrs.get(ATTR_GRID):
            done = sum(1 for r in records.values() if r.phase in ("baseline", "numeric") and r.state.measured)
            if done < self.plan["numeric_first"]:
                fixed = {n: self.baseline[n] for n in self.categorical}
                self.study.enqueue_trial(fixed, user_attrs={ATTR_PHASE: "numeric"})
                return
            if self.start_grid(records):
                return
        center = self.center(records)
        self.study.enqueue_trial({n: center[n] for n in self.categorical}, user_attrs={ATTR_PHASE: "refine"})

    def center(self, records: Mapping[int, TrialRecord]) -> dict[str, Any]:
        """The best completed trial's tuned parameters as candidates of the space; the baseline before
        any trial completed."""
        best = best_completed(records.values())
        if best is None:
            return dict(self.baseline)
        out = {}
        for name in self.space.tuned:
            value = best.params.get(name, getattr(best.settings, name, None))
            out[name] = nearest(self.space.values(name), value)
        return out

    def start_grid(self, records: Mapping[int, TrialRecord]) -> bool:
        """Queue the categorical grid at the best point so far; False when it adds nothing."""
        self.study.set_user_attr(ATTR_GRID, True)
        center = self.center(records)
        if self.plan["grid_mode"] == "full":
            combos = self.space.categorical_combinations()
        else:
            combos = self.grouped_combinations({n: center[n] for n in self.categorical})
        queued = 0
        for combo in combos:
            if all(center[n] == v for n, v in combo.items()):
                continue
            self.study.enqueue_trial({**center, **combo}, user_attrs={ATTR_PHASE: "grid"})
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

    def queue_untried(
        self,
        phase: str,
        records: Mapping[int, TrialRecord],
        known: Container[tuple[Any, ...]],
        fits: Fits,
        rng: random.Random,
    ) -> bool:
        """Queue a random configuration not in `known` that fits; prefer the phase's categoricals."""
        center = self.center(records)
        for attempt in range(600):
            params = {n: rng.choice(self.space.values(n)) for n in self.space.tuned}
            if attempt < 300:
                params.update({n: center[n] for n in self.categorical})
            load = self.space.configure(self.base, params)
            if load is None or config_key(load) in known or not fits(load):
                continue
            self.study.enqueue_trial(params, user_attrs={ATTR_PHASE: phase})
            return True
        return False
