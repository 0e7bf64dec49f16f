"""An Auto-Tune run as the GUI asks for it, and the tuner that answers it.

The GUI's Auto-Tune box picks an objective, the budgets and which kinds of settings may vary; every
other setting stays as the model is configured. `tuner_for_request` turns that into the tuner's search
space and budgets, here in the core, so the Qt glue only forwards the request to the engine host.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings
from app.tune.measure import Measure
from app.tune.results import TuneConfig
from app.tune.session import Tuner
from app.tune.space import (
    TUNABLE_PARAMS,
    MachineFacts,
    Objective,
    SearchSpace,
    TuneError,
    default_search_space,
)

# The first trial measures the settings as they are (the baseline); a search needs at least one more.
MIN_TRIALS = 2


def trials_error(n_trials: int | None) -> str | None:
    """Why `n_trials` is too few for a search (None when it is enough, or no trial limit)."""
    if n_trials is not None and n_trials < MIN_TRIALS:
        return (
            f"at least {MIN_TRIALS} trials are needed (got {n_trials}): the first trial measures the current "
            "settings, the others try new ones"
        )
    return None


@dataclass(frozen=True)
class TuneRequest:
    """The objective, the budgets and the LoadSettings fields the tuner may vary (the rest stay put)."""

    objective: str  # Objective.parse's text: "tg", "pp", "mix:512,128"
    n_trials: int
    time_budget_s: float | None  # None: no time limit
    parameters: tuple[str, ...]  # LoadSettings fields the tuner may vary; the others keep the base's value

    def __post_init__(self) -> None:
        # Checked here, on the thread that asks, so a wrong request fails before the engine host starts.
        unknown = [name for name in self.parameters if name not in TUNABLE_PARAMS]
        if unknown:
            raise TuneError(f"not tunable: {', '.join(unknown)}; choose from {', '.join(TUNABLE_PARAMS)}")
        Objective.parse(self.objective)
        problem = trials_error(self.n_trials)
        if problem is not None:
            raise TuneError(problem)

    def config(self) -> TuneConfig:
        """The request's budgets; every measurement rule at TuneConfig's defaults."""
        return TuneConfig(n_trials=self.n_trials, time_budget_s=self.time_budget_s)


def request_space(
    model: ModelInfo, base: LoadSettings, parameters: Collection[str], machine: MachineFacts
) -> SearchSpace:
    """The default search space for `model` on `machine`, with every parameter not in `parameters` fixed
    at `base`'s value (the tuner still prunes it)."""
    if not parameters:
        raise TuneError("choose at least one setting to tune")
    space = default_search_space(
        model, logical_cores=machine.logical_cores, has_gpu=machine.has_gpu, base=base
    )
    for name in TUNABLE_PARAMS:
        if name not in parameters:
            space = space.with_values(name, (getattr(base, name),))
    return space


def tuner_for_request(
    model: ModelInfo,
    base: LoadSettings,
    request: TuneRequest,
    *,
    machine: MachineFacts | None = None,
    storage_path: str | None = None,
    measure: Measure | None = None,
) -> Tuner:
    """A Tuner for `request` over `model` from the `base` settings. `machine` defaults to
    MachineFacts.detect() (asks llama.cpp: not on the GUI thread); the space is built from the
    same facts the tuner prunes with. `storage_path` and `measure` as Tuner takes them."""
    machine = machine or MachineFacts.detect()
    return Tuner(
        model,
        request.objective,
        space=request_space(model, base, request.parameters, machine),
        base=base,
        measure=measure,
        config=request.config(),
        storage_path=storage_path,
        machine=machine,
    )
