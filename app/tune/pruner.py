"""The tuner's Optuna pruner: stop a trial that clearly cannot win, after a few repetitions."""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState


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
