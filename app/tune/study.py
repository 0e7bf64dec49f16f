"""The Optuna study behind a tuning session: where it is stored, how it is named, what it samples.

One study per model file, objective, search space and machine, kept in SQLite so that a session
resumes after a restart. This module owns the study's layout (its name, the user attributes the
session stores, the distributions of the tuned parameters) and reads importances back out of it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings
from app.tune.space import NUMERIC_PARAMS, Objective, SearchSpace

STUDY_FORMAT = 1  # bump when the meaning of stored trials changes: a new format is a new study
ATTR_RECORD = "llamascope"  # trial user attribute: the TrialRecord as a dict
ATTR_PHASE = "phase"  # trial user attribute: baseline, numeric, grid or refine
ATTR_PLAN = "llamascope_plan"  # study user attribute: the phase plan, fixed when the study starts
ATTR_GRID = "llamascope_grid_started"  # study user attribute: the categorical grid is queued


def default_storage_path() -> str:
    """tuning.sqlite3 in the user data folder, beside the benchmark history."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("LlamaScope", appauthor=False), "tuning.sqlite3")


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


def open_storage(path: str) -> optuna.storages.RDBStorage:
    """The SQLite file at `path` (its folder created) as Optuna storage; dispose its engine when done."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return optuna.storages.RDBStorage(
        "sqlite:///" + path,
        engine_kwargs={"connect_args": {"timeout": 60, "factory": _WalConnection}},
    )


def _model_fingerprint(model: ModelInfo) -> str:
    from app.model.fingerprint import model_fingerprint

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
        "format": STUDY_FORMAT,
        "space": space.to_dict(),
        "n_ctx": base.n_ctx,
        "offload_kqv": base.offload_kqv,
        "machine": hardware_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return f"{_model_fingerprint(model)}-{objective.key}-{digest}"


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
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


def param_importances(
    study: optuna.Study, measured: Collection[int], tuned: Sequence[str]
) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances (Watanabe et al., 2023) over the trials numbered in `measured`, and a note
    saying why there are none when there are none.

    Not Optuna's default fANOVA: that needs scikit-learn, which LlamaScope does not ship. The caller
    leaves duplicates out of `measured`, so that a configuration TPE proposed five times does not count
    five times.
    """
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in measured
    ]
    # Only parameters that took 2+ values: one held fixed throughout explains nothing.
    names = [
        n
        for n in tuned
        if all(n in t.params for t in trials) and len({repr(t.params[n]) for t in trials}) > 1
    ]
    if len(trials) < 2 or not names:
        return {}, "parameter importances need at least 2 measured trials that differ"
    if len({t.value for t in trials}) < 2:
        return {}, "every measured trial scored the same: no parameter importances"
    copy = optuna.create_study(direction="maximize")
    copy.add_trials(trials)
    quantile = min(0.5, max(0.25, 2.0 / len(trials)))  # at least two trials in the "top" set
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        result = optuna.importance.get_param_importances(copy, evaluator=evaluator, params=names)
    except Exception as exc:  # importances are a bonus; never lose a tuning result over them
        return {}, f"parameter importances unavailable: {type(exc).__name__}: {exc}"
    return {k: float(v) for k, v in result.items()}, None
