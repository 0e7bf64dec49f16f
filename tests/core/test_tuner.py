"""The auto-tuner: search space pruning, the search against fakes with a known optimum, resume, failures,
time-outs, Stop, the gain statistics, exports, and one small real run on the demo model."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.common.stats import t_quantile, welch, welch_interval
from app.llama.driver import CancelFlag
from app.model.gguf_info import inspect_model
from app.model.memory import estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings
from app.tune.export import llama_cpp_flags, llama_kwargs_named, llama_python_snippet
from app.tune.gain import estimate_gain
from app.tune.measure import BenchMeasure
from app.tune.request import TuneRequest, request_space, tuner_for_request
from app.tune.results import TrialRecord, TrialStatus, TuneConfig, TuneResult
from app.tune.session import Tuner
from app.tune.space import (
    TUNABLE_PARAMS,
    MachineFacts,
    Objective,
    SearchSpace,
    TuneError,
    count_numa_nodes,
    default_search_space,
    prune,
)

PLENTY = 64 << 30
MACHINE = MachineFacts(logical_cores=4, has_gpu=False, numa_nodes=1, available_ram_bytes=PLENTY)


@pytest.fixture(scope="module")
def model(demo_model: str) -> ModelInfo:
    return inspect_model(demo_model)


def base_settings(**changes: Any) -> LoadSettings:
    base = LoadSettings(n_ctx=4096, n_threads=2, n_threads_batch=4, n_batch=512, n_ubatch=512)
    return dataclasses.replace(base, **changes)


class FakeMeasure:
    """A measure with a known score per configuration; records every call."""

    def __init__(
        self,
        score: Callable[[LoadSettings], float],
        *,
        fail: Callable[[LoadSettings], bool] | None = None,
        seconds_per_rep: Callable[[LoadSettings], float] | None = None,
        clock: FakeClock | None = None,
        on_rep: Callable[[LoadSettings, int], None] | None = None,
    ) -> None:
        self.score = score
        self.fail = fail
        self.seconds_per_rep = seconds_per_rep
        self.clock = clock
        self.on_rep = on_rep
        self.calls: list[LoadSettings] = []
        self.reps_run: list[int] = []

    def __call__(
        self,
        load: LoadSettings,
        *,
        repetitions: int,
        keep_going: Callable[[float | None], bool],
        cancel: CancelFlag,
    ) -> list[float]:
        self.calls.append(load)
        if self.fail is not None and self.fail(load):
            raise RuntimeError("failed to create context (fake)")
        out: list[float] = []
        for i in range(repetitions):
            if self.clock is not None and self.seconds_per_rep is not None:
                self.clock.now += self.seconds_per_rep(load)
            # A little deterministic spread so that Welch's test has variance to work with.
            out.append(self.score(load) * (1.0 + 0.001 * (i % 3)))
            if self.on_rep is not None:
                self.on_rep(load, i)
            if not keep_going(out[-1]):
                break
        self.reps_run.append(len(out))
        return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quiet(**changes: object) -> TuneConfig:
    """No warm-up, one comparison round: fakes need none of it."""
    settings: dict[str, object] = {"warmup_s": 0.0, "compare_rounds": 1, "seed": 0, "n_trials": 10}
    settings.update(changes)
    return TuneConfig(**settings)  # type: ignore[arg-type]


def make_tuner(
    model: ModelInfo,
    tmp_path: Path,
    measure: FakeMeasure,
    space: SearchSpace,
    *,
    objective: str = "mix:512,32",
    config: TuneConfig | None = None,
    machine: MachineFacts = MACHINE,
    base: LoadSettings | None = None,
    clock: Callable[[], float] | None = None,
    db: str = "tuning.sqlite3",
) -> Tuner:
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    return Tuner(
        model,
        objective,
        space=space,
        base=base or base_settings(),
        measure=measure,
        config=config or quiet(),
        storage_path=str(tmp_path / db),
        machine=machine,
        **kwargs,
    )


SMALL_SPACE = SearchSpace(
    n_threads=(1, 2, 3, 4),
    n_threads_batch=(4,),
    n_batch=(64, 128, 256, 512),
    n_ubatch=(512,),
    flash_attn=(False, True),
    type_k=("f16", "q8_0"),
    type_v=("f16",),
)


def peaked(load: LoadSettings) -> float:
    """Optimum at 3 threads, batch 256, flash attention on, q8_0 K cache: 108 t/s."""
    return (
        100.0
        - 10.0 * abs(load.n_threads - 3)
        - (0.0 if load.n_batch == 256 else 15.0)
        + (5.0 if load.flash_attn else 0.0)
        + (3.0 if load.type_k == "q8_0" else 0.0)
    )


# ---- objective --------------------------------------------------------------------------------------


def test_objective_specs_and_the_workload_score() -> None:
    assert Objective.parse("tg") == Objective(0, 32)
    assert Objective.parse("pp") == Objective(128, 0)
    assert Objective.parse("pp:512").key == "pp512"
    mix = Objective.parse("mix:512,128")
    assert (mix.kind, mix.key, mix.spec) == ("mix", "pp512+tg128", "mix:512,128")
    # 512 prompt tokens in 1 s and 128 generated in 3 s: 640 tokens in 4 s.
    assert mix.score(1.0, 3.0) == pytest.approx(160.0)
    assert mix.score(1.0, 3.0) == pytest.approx(640 / (512 / 512.0 + 128 / (128 / 3.0)))
    assert Objective.parse("tg:64").score(99.0, 2.0) == pytest.approx(
        32.0
    )  # the prompt time is not part of tg
    for bad in ("fast", "tg:1,2", "mix:512", "pp:-1"):
        with pytest.raises(TuneError):
            Objective.parse(bad)


# ---- search space -----------------------------------------------------------------------------------


def test_default_space_follows_cores_gpu_and_the_preset(model: ModelInfo) -> None:
    space = default_search_space(model, logical_cores=6, has_gpu=False)
    assert space.n_threads == (1, 2, 3, 4, 5, 6) and space.n_threads_batch == (1, 2, 3, 4, 5, 6)
    assert space.n_gpu_layers == (0,)
    assert 512 in space.n_batch and max(space.n_batch) <= 4096
    with_gpu = default_search_space(model, logical_cores=2, has_gpu=True)
    assert model.n_layer is not None
    assert with_gpu.n_gpu_layers == tuple(range(0, model.n_layer + 2))


def test_no_quantized_v_cache_without_flash_attention(model: ModelInfo) -> None:
    space = dataclasses.replace(SMALL_SPACE, flash_attn=(False,), type_v=("f16", "q8_0", "q4_0"))
    pruned, notes = prune(space, model, base=base_settings(), machine=MACHINE)
    assert pruned.type_v == ("f16",)
    assert any("type_v" in n and "flash attention" in n for n in notes)
    # With flash attention available the values stay, but no combination pairs them with fa off.
    both = dataclasses.replace(SMALL_SPACE, type_v=("f16", "q8_0"))
    kept, _ = prune(both, model, base=base_settings(), machine=MACHINE)
    assert kept.type_v == ("f16", "q8_0")
    combos = kept.categorical_combinations()
    assert {"flash_attn": False, "type_k": "f16", "type_v": "q8_0"} not in combos
    assert {"flash_attn": True, "type_k": "f16", "type_v": "q8_0"} in combos
    assert all(load.flash_attn or load.type_v == "f16" for load in kept.configurations(base_settings()))


def test_no_gpu_layers_without_a_gpu_and_no_threads_above_the_cores(model: ModelInfo) -> None:
    space = dataclasses.replace(SMALL_SPACE, n_gpu_layers=(0, 10, 31), n_threads=(1, 2, 4, 8, 16))
    pruned, notes = prune(space, model, base=base_settings(), machine=MACHINE)
    assert pruned.n_gpu_layers == (0,)
    assert pruned.n_threads == (1, 2, 4)
    assert any("n_gpu_layers" in n and "no GPU" in n for n in notes)
    assert any("n_threads" in n and "logical cores" in n for n in notes)
    gpu, _ = prune(space, model, base=base_settings(), machine=dataclasses.replace(MACHINE, has_gpu=True))
    assert gpu.n_gpu_layers == (0, 10, 31)


def test_the_objective_fixes_what_it_cannot_measure(model: ModelInfo) -> None:
    space = dataclasses.replace(SMALL_SPACE, n_threads_batch=(1, 2, 4), n_ubatch=(64, 512))
    tg, notes = prune(space, model, objective=Objective.parse("tg"), base=base_settings(), machine=MACHINE)
    assert (tg.n_batch, tg.n_ubatch, tg.n_threads_batch) == ((512,), (512,), (4,))
    assert tg.n_threads == (1, 2, 3, 4)
    assert any("generation only" in n for n in notes)
    # A 128-token prompt runs in one batch for every n_batch >= 128: 128 and 256 are the same as 512.
    pp, _ = prune(space, model, objective=Objective.parse("pp:128"), base=base_settings(), machine=MACHINE)
    assert pp.n_batch == (64, 512)
    assert pp.n_threads == (2,)  # generation threads never run in a prompt-only workload


def test_values_that_fit_in_no_combination_are_dropped(model: ModelInfo) -> None:
    space = dataclasses.replace(
        SMALL_SPACE, n_batch=(512,), flash_attn=(True,), type_k=("f16", "q8_0"), type_v=("q8_0",)
    )
    base = base_settings()
    q8 = estimate_memory(
        model,
        dataclasses.replace(base, flash_attn=True, type_k="q8_0", type_v="q8_0"),
        available_ram_bytes=PLENTY,
    )
    machine = dataclasses.replace(MACHINE, available_ram_bytes=q8.total_ram_bytes + 1)
    pruned, notes = prune(space, model, base=base, machine=machine)
    assert pruned.type_k == ("q8_0",)
    assert any("type_k" in n and "would not fit" in n for n in notes)


def test_a_huge_context_fits_nowhere_and_the_tuner_refuses(model: ModelInfo, tmp_path: Path) -> None:
    base = base_settings(n_ctx=1_048_576)
    machine = dataclasses.replace(MACHINE, available_ram_bytes=2 << 30)
    _, notes = prune(SMALL_SPACE, model, base=base, machine=machine)
    assert any("no configuration fits" in n for n in notes)
    measure = FakeMeasure(peaked)
    with pytest.raises(TuneError, match="fits in memory"):
        make_tuner(model, tmp_path, measure, SMALL_SPACE, base=base, machine=machine).run()
    assert measure.calls == []


def test_configurations_that_would_not_fit_are_skipped_not_tried(model: ModelInfo, tmp_path: Path) -> None:
    space = dataclasses.replace(
        SMALL_SPACE, n_threads=(1, 2), n_batch=(256,), flash_attn=(True,), type_v=("f16", "q8_0")
    )
    base = base_settings()
    f16 = estimate_memory(
        model,
        dataclasses.replace(base, flash_attn=True, n_batch=256, n_ubatch=256),
        available_ram_bytes=PLENTY,
    )
    machine = dataclasses.replace(MACHINE, available_ram_bytes=f16.total_ram_bytes - 1)  # f16 K and V: no
    measure = FakeMeasure(peaked)
    result = make_tuner(model, tmp_path, measure, space, machine=machine, config=quiet(n_trials=6)).run()
    skipped = [t for t in result.trials if t.state is TrialStatus.SKIPPED]
    assert skipped and all("would not fit in memory" in t.reason for t in skipped)
    assert all(
        t.settings is not None and (t.settings.type_k, t.settings.type_v) == ("f16", "f16") for t in skipped
    )
    assert not any((c.type_k, c.type_v) == ("f16", "f16") for c in measure.calls)
    assert any("would not fit" in n for n in result.notes)  # the preset (f16/f16) itself did not fit
    assert (result.best.type_k, result.best.type_v) != ("f16", "f16")


def test_numa_nodes_are_read_from_sysfs(tmp_path: Path) -> None:
    node = tmp_path / "sys/devices/system/node"
    node.mkdir(parents=True)
    (node / "online").write_text("0-1,3\n")
    assert count_numa_nodes(str(tmp_path)) == 3
    assert count_numa_nodes(str(tmp_path / "nowhere")) == 1


# ---- the search -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_a_known_optimum_within_its_budget(model: ModelInfo, tmp_path: Path, seed: int) -> None:
    assert SMALL_SPACE.count() == 64
    measure = FakeMeasure(peaked)
    seen: list[TrialRecord] = []
    result = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=quiet(n_trials=20, seed=seed)).run(
        on_trial=seen.append
    )
    best = result.best
    assert (best.n_threads, best.n_batch, best.flash_attn, best.type_k) == (3, 256, True, "q8_0")
    assert result.best_score == pytest.approx(108.0, rel=0.01)
    assert result.stop_reason == "trial budget"
    assert len(result.measured_trials) == 20
    assert [t.number for t in seen] == [t.number for t in result.trials]  # every trial was reported
    assert result.trials[0].phase == "baseline"
    baseline = result.trials[0].settings
    assert baseline is not None and (baseline.n_threads, baseline.n_batch) == (2, 512)
    assert {t.phase for t in result.trials} >= {"baseline", "numeric", "grid", "refine"}
    # The default (the base settings) was measured again against the best, and lost clearly.
    assert result.default == base_settings()
    assert result.gain is not None and result.gain.significant and result.proven
    assert result.recommended == result.best
    assert result.gain.gain_percent == pytest.approx((108.0 / peaked(base_settings()) - 1) * 100, rel=0.01)
    assert result.gain.ci_low_percent is not None and result.gain.ci_low_percent > 0
    assert set(result.importances) <= set(SMALL_SPACE.tuned)
    assert result.importances and sum(result.importances.values()) == pytest.approx(1.0)
    # Each configuration was measured once during the search (duplicates reuse the score).
    search_calls = measure.calls[: len(measure.calls) - 2]
    keys = [(c.n_threads, c.n_batch, c.flash_attn, c.type_k) for c in search_calls]
    assert len(keys) == len(set(keys)) == 20


def test_a_gain_within_noise_is_not_proven_and_the_default_stays_recommended(
    model: ModelInfo, tmp_path: Path
) -> None:
    flat = FakeMeasure(lambda load: 100.0 + (0.2 if load.n_batch == 256 else 0.0))  # 0.2% apart, spread 0.2%
    result = make_tuner(model, tmp_path, flat, SMALL_SPACE, config=quiet(n_trials=6)).run()
    assert result.gain is not None and not result.gain.significant and not result.proven
    low, high = result.gain.ci_low_percent, result.gain.ci_high_percent
    assert low is not None and high is not None and low < 0 < high
    assert result.recommended == result.default == base_settings()


def test_a_failing_trial_scores_zero_with_its_reason_and_the_search_goes_on(
    model: ModelInfo, tmp_path: Path
) -> None:
    measure = FakeMeasure(peaked, fail=lambda load: load.n_threads == 3)
    result = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=quiet(n_trials=14)).run()
    failed = [t for t in result.trials if t.state is TrialStatus.FAILED]
    assert failed, "the failing configurations were never proposed"
    assert all(t.score == 0.0 and "failed to create context (fake)" in t.reason for t in failed)
    assert all(t.settings is not None and t.settings.n_threads == 3 for t in failed)
    assert max(t.number for t in result.measured_trials) > min(t.number for t in failed)
    assert result.stop_reason == "trial budget" and len(result.measured_trials) == 14
    assert result.best.n_threads != 3


def test_a_trial_past_its_time_limit_fails_as_timed_out(model: ModelInfo, tmp_path: Path) -> None:
    clock = FakeClock()
    # One thread is slow: 10 (fake) seconds per repetition against a 15 s limit.
    measure = FakeMeasure(
        peaked, clock=clock, seconds_per_rep=lambda load: 10.0 if load.n_threads == 1 else 1.0
    )
    space = dataclasses.replace(SMALL_SPACE, n_batch=(256,), flash_attn=(True,), type_k=("q8_0",))
    config = quiet(n_trials=4, trial_timeout_s=15.0)
    result = make_tuner(model, tmp_path, measure, space, config=config, clock=clock).run()
    slow = [t for t in result.trials if t.settings is not None and t.settings.n_threads == 1]
    assert slow and all(t.state is TrialStatus.FAILED and "timed out" in t.reason for t in slow)
    assert all(t.score == 0.0 for t in slow)
    assert slow[0].settings is not None
    assert measure.reps_run[measure.calls.index(slow[0].settings)] == 2  # stopped after the 2nd repetition
    assert result.best.n_threads == 3


def test_a_time_budget_stops_the_search_and_leaves_time_for_the_comparison(
    model: ModelInfo, tmp_path: Path
) -> None:
    clock = FakeClock()
    measure = FakeMeasure(peaked, clock=clock, seconds_per_rep=lambda load: 1.0)
    config = quiet(n_trials=None, time_budget_s=30.0, repetitions=3)
    result = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=config, clock=clock).run()
    assert result.stop_reason == "time budget"
    # A trial takes up to 3 (fake) seconds and the comparison 6 (2 × 1 round × 3 repetitions), so the
    # search stops starting trials at 24 s, ends by 27 s, and the session by 33 s.
    assert result.gain is not None
    assert 30.0 <= result.elapsed_s <= 33.0
    assert 24.0 <= sum(t.duration_s for t in result.measured_trials) <= 27.0


def test_clearly_worse_trials_are_pruned_after_their_first_repetitions(
    model: ModelInfo, tmp_path: Path
) -> None:
    def score(load: LoadSettings) -> float:
        return 100.0 if load.n_threads == 2 else 20.0  # one thread: 20% of the best

    measure = FakeMeasure(score)
    space = dataclasses.replace(
        SMALL_SPACE, n_threads=(1, 2), n_batch=(256,), flash_attn=(True,), type_k=("f16",)
    )
    assert space.count() == 2
    result = make_tuner(model, tmp_path, measure, space, config=quiet(n_trials=4, repetitions=5)).run()
    pruned = [t for t in result.trials if t.state is TrialStatus.PRUNED]
    assert pruned and all(t.settings is not None and t.settings.n_threads == 1 for t in pruned)
    # A pruned configuration is not "known": it is measured again rather than the space called exhausted
    # (a burst of background load can prune a good one).
    assert len(pruned) >= 2 and result.stop_reason == "trial budget"
    assert len(result.measured_trials) == 4
    assert all(len(t.repetitions) == 2 and "pruned after 2 repetitions" in t.reason for t in pruned)
    assert all(t.score == pytest.approx(20.0, rel=0.01) for t in pruned)
    assert result.best.n_threads == 2


def test_stop_from_the_trial_callback_returns_the_best_so_far(model: ModelInfo, tmp_path: Path) -> None:
    cancel = threading.Event()
    measured: list[TrialRecord] = []

    def on_trial(record: TrialRecord) -> None:
        if record.state.measured:
            measured.append(record)
        if len(measured) == 3:
            cancel.set()

    measure = FakeMeasure(peaked)
    result = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=quiet(n_trials=20)).run(
        cancel=cancel, on_trial=on_trial
    )
    assert result.stop_reason == "cancelled"
    assert len(result.measured_trials) == 3
    best = max(measured, key=lambda r: r.score)
    assert result.best_trial == best.number and result.best == best.settings
    assert result.gain is None  # no final comparison after Stop
    assert len(measure.calls) == 3


def test_stop_during_a_trial_interrupts_it(model: ModelInfo, tmp_path: Path) -> None:
    cancel = threading.Event()
    calls: list[int] = []

    def on_rep(load: LoadSettings, rep: int) -> None:
        calls.append(rep)
        if len(calls) == 4:  # the second trial's first repetition
            cancel.set()

    measure = FakeMeasure(peaked, on_rep=on_rep)
    result = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=quiet(repetitions=3)).run(cancel=cancel)
    assert result.stop_reason == "cancelled"
    assert [t.state for t in result.trials] == [TrialStatus.COMPLETE, TrialStatus.INTERRUPTED]
    assert result.best_trial == 0


def test_a_study_resumes_from_sqlite(model: ModelInfo, tmp_path: Path) -> None:
    def at_the_preset(load: LoadSettings) -> float:
        return 150.0 if (load.n_threads, load.n_batch, load.flash_attn) == (2, 512, False) else peaked(load)

    first = make_tuner(
        model, tmp_path, FakeMeasure(at_the_preset), SMALL_SPACE, config=quiet(n_trials=3)
    ).run()
    assert first.best_trial == 0 and len(first.measured_trials) == 3
    numbers = {t.number for t in first.trials}

    measure = FakeMeasure(at_the_preset)
    second = make_tuner(model, tmp_path, measure, SMALL_SPACE, config=quiet(n_trials=3, seed=1)).run()
    assert second.study_name == first.study_name
    assert {t.number for t in second.trials} > numbers
    new = [t for t in second.trials if t.number not in numbers]
    assert min(t.number for t in new) == max(numbers) + 1
    assert len([t for t in new if t.state.measured]) == 3
    assert second.best_trial == 0 and second.best_score == pytest.approx(
        150.0, rel=0.01
    )  # kept from session 1
    assert [t.phase for t in second.trials].count("baseline") == 1
    assert second.trials[: len(first.trials)] == first.trials
    # Nothing measured in session 1 was measured again in session 2 (apart from the final comparison).
    earlier = {
        (t.settings.n_threads, t.settings.n_batch, t.settings.flash_attn, t.settings.type_k)
        for t in first.trials
        if t.settings is not None
    }
    again = [(c.n_threads, c.n_batch, c.flash_attn, c.type_k) for c in measure.calls[:-2]]
    assert not earlier & set(again)
    # A fresh study forgets it.
    fresh = make_tuner(
        model, tmp_path, FakeMeasure(peaked), SMALL_SPACE, config=quiet(n_trials=2, resume=False)
    ).run()
    assert [t.number for t in fresh.trials] == [0, 1]


def test_a_trial_left_running_by_a_crash_is_closed_on_resume(model: ModelInfo, tmp_path: Path) -> None:
    first = make_tuner(model, tmp_path, FakeMeasure(peaked), SMALL_SPACE, config=quiet(n_trials=2)).run()
    # Simulate a process killed during trial 2: a RUNNING trial row in the study.
    import optuna

    storage = f"sqlite:///{tmp_path / 'tuning.sqlite3'}"
    study = optuna.load_study(study_name=first.study_name, storage=storage)
    study.ask()
    del study
    second = make_tuner(model, tmp_path, FakeMeasure(peaked), SMALL_SPACE, config=quiet(n_trials=1)).run()
    interrupted = [t for t in second.trials if t.state is TrialStatus.INTERRUPTED]
    assert [t.number for t in interrupted] == [2]
    with sqlite3.connect(tmp_path / "tuning.sqlite3") as db:
        states = {row[0] for row in db.execute("SELECT state FROM trials")}
    assert "RUNNING" not in states


def test_config_budgets_are_checked() -> None:
    with pytest.raises(TuneError):
        TuneConfig(n_trials=None, time_budget_s=None)
    with pytest.raises(TuneError):
        TuneConfig(n_trials=0)
    with pytest.raises(TuneError):
        TuneConfig(prune_fraction=1.5)
    with pytest.raises(TuneError):
        SearchSpace(n_threads=(), n_threads_batch=(1,))
    with pytest.raises(TuneError):
        SearchSpace(n_threads=(1,), n_threads_batch=(1,), type_k=("f17",))


# ---- the GUI's request ------------------------------------------------------------------------------


def test_a_request_varies_only_its_parameters_and_keeps_the_rest_at_the_base(model: ModelInfo) -> None:
    base = base_settings(n_threads=3, n_batch=256, flash_attn=True, type_k="q8_0")
    space = request_space(model, base, ("n_threads", "type_v"), MACHINE)
    assert space.n_threads == (1, 2, 3, 4) and space.type_v == ("f16", "q8_0")
    assert space.fixed == {name: getattr(base, name) for name in TUNABLE_PARAMS if name not in space.tuned}
    assert set(space.tuned) == {"n_threads", "type_v"}
    with pytest.raises(TuneError, match="at least one"):
        request_space(model, base, (), MACHINE)


def test_a_request_is_checked_where_it_is_made() -> None:
    with pytest.raises(TuneError, match="not tunable: n_ctx"):
        TuneRequest("tg", 5, None, ("n_threads", "n_ctx"))
    with pytest.raises(TuneError, match="objective"):
        TuneRequest("fastest", 5, None, ("n_threads",))
    with pytest.raises(TuneError):
        TuneRequest("tg", 0, None, ("n_threads",)).config()
    # One trial measures only the current settings (the baseline): no search at all.
    with pytest.raises(TuneError, match="at least 2 trials are needed .got 1.: the first trial measures"):
        TuneRequest("tg", 1, None, ("n_threads",))
    assert TuneRequest("tg", 2, None, ("n_threads",)).n_trials == 2
    config = TuneRequest("pp:256", 7, 90.0, ("n_batch",)).config()
    assert (config.n_trials, config.time_budget_s) == (7, 90.0)


def test_a_tuner_for_a_request_searches_only_the_requested_settings(model: ModelInfo, tmp_path: Path) -> None:
    base = base_settings(n_batch=256, n_ubatch=256, flash_attn=True)
    request = TuneRequest("mix:512,32", 6, None, ("n_threads",))
    measure = FakeMeasure(peaked)
    tuner = tuner_for_request(
        model, base, request, machine=MACHINE, storage_path=str(tmp_path / "t.sqlite3"), measure=measure
    )
    assert tuner.objective == Objective(512, 32) and tuner.config.n_trials == 6
    result = tuner.run()
    ran = [t.settings for t in result.trials if t.settings is not None]
    assert {s.n_threads for s in ran} == {1, 2, 3, 4}  # the whole (small) space was searched
    assert all(dataclasses.replace(s, n_threads=base.n_threads) == base for s in ran)
    assert {dataclasses.replace(c, n_threads=base.n_threads) for c in measure.calls} == {base}
    assert result.best.n_threads == 3 and result.stop_reason == "search space exhausted"


def test_fewer_trials_than_asked_say_why_and_trials_count_from_one(model: ModelInfo, tmp_path: Path) -> None:
    # A user asked for 4 trials of flash attention alone and saw 2: the space holds two configurations
    # and none is measured twice, so the search ends there. The result says so in words.
    base = base_settings(n_batch=256, n_ubatch=256, type_k="f16", type_v="f16")
    request = TuneRequest("tg:16", 4, None, ("flash_attn",))
    tuner = tuner_for_request(
        model,
        base,
        request,
        machine=MACHINE,
        storage_path=str(tmp_path / "t.sqlite3"),
        measure=FakeMeasure(peaked),
    )
    result = tuner.run()
    assert result.space.count() == 2 and result.stop_reason == "search space exhausted"
    assert len(result.measured_trials) == 2
    assert result.trials_summary(4) == (
        "2 of 4 trials measured: the search space has only 2 distinct configurations, "
        "and none is measured twice"
    )
    assert result.trials_summary(2) == "2 of 2 trials measured"
    # Trials count from 1 wherever people read them; Optuna's own number stays the stored key.
    assert [t.label for t in result.trials] == [t.number + 1 for t in result.trials]
    assert result.trials[0].label == 1 and result.best_label == result.best_trial + 1  # type: ignore[operator]
    duplicates = [t for t in result.trials if t.duplicate_of is not None]
    for t in duplicates:
        assert f"same settings as trial {t.duplicate_of + 1} " in t.reason


# ---- the proof: Welch interval ----------------------------------------------------------------------


def test_t_quantiles_against_table_values() -> None:
    assert t_quantile(0.05, 10) == pytest.approx(2.228138851986, rel=1e-9)
    assert t_quantile(0.05, 4) == pytest.approx(2.776445105198, rel=1e-9)
    assert t_quantile(0.01, 30) == pytest.approx(2.749995653567, rel=1e-9)


def test_the_welch_interval_excludes_zero_exactly_when_the_test_is_significant() -> None:
    samples = [
        ([10.0, 11.0, 12.0], [12.0, 13.0, 14.0]),
        ([10.0, 10.1, 9.9, 10.0], [12.0, 12.1, 11.9, 12.0]),
        ([5.0, 7.0, 6.0, 6.5, 5.5], [6.0, 8.0, 6.5, 7.5, 7.0]),
        ([3.0, 3.0], [3.0, 3.0]),
    ]
    for a, b in samples:
        for confidence in (0.9, 0.95, 0.99):
            interval = welch_interval(a, b, confidence=confidence)
            assert interval is not None
            low, high = interval
            assert low <= welch(a, b).mean_b - welch(a, b).mean_a <= high
            p = welch(a, b).p_value
            assert p is not None
            assert (low > 0 or high < 0) == (p < 1 - confidence)
    assert welch_interval([1.0], [1.0, 2.0]) is None


def test_gain_interval_and_significance() -> None:
    gain = estimate_gain([10.0, 11.0, 12.0], [12.0, 13.0, 14.0])
    # diff 2, se sqrt(1/3 + 1/3), Welch dof 4, t(0.975, 4) = 2.7764: 2 ± 2.2670, over the default's 11.
    assert gain.gain_percent == pytest.approx(200 / 11)
    assert gain.ci_low_percent == pytest.approx((2 - 2.776445105198 * (2 / 3) ** 0.5) / 11 * 100, rel=1e-9)
    assert gain.ci_high_percent == pytest.approx((2 + 2.776445105198 * (2 / 3) ** 0.5) / 11 * 100, rel=1e-9)
    assert gain.p_value == pytest.approx(0.07048399691021993, rel=1e-6)  # SciPy ttest_ind(equal_var=False)
    assert not gain.significant and "within noise" in gain.verdict
    clear = estimate_gain([10.0, 10.1, 9.9, 10.0], [12.0, 12.1, 11.9, 12.0])
    assert clear.significant and clear.ci_low_percent is not None and clear.ci_low_percent > 15
    assert "significantly faster" in clear.text()
    single = estimate_gain([10.0], [12.0])
    assert single.p_value is None and single.ci_low_percent is None and not single.significant


# ---- exports ----------------------------------------------------------------------------------------


def test_llama_cpp_flags_and_python_kwargs() -> None:
    load = LoadSettings(
        n_ctx=8192,
        n_threads=8,
        n_threads_batch=16,
        n_batch=512,
        n_ubatch=512,
        flash_attn=True,
        type_k="q8_0",
        type_v="q8_0",
        n_gpu_layers=0,
        use_mmap=False,
        use_mlock=True,
        numa=True,
    )
    assert llama_cpp_flags(load, include_ctx=False) == (
        "-t 8 -tb 16 -b 512 -ub 512 -fa on -ctk q8_0 -ctv q8_0 -ngl 0 --no-mmap --mlock --numa distribute"
    )
    assert llama_cpp_flags(load).startswith("-c 8192 -t 8 ")
    plain = LoadSettings(n_ctx=4096, n_threads=4, n_threads_batch=4, n_gpu_layers=-1)
    assert llama_cpp_flags(plain) == "-c 4096 -t 4 -tb 4 -b 512 -ub 512 -fa off -ctk f16 -ctv f16 -ngl 999"
    named = llama_kwargs_named(load)
    assert named["type_k"] == "q8_0" and named["flash_attn"] is True and named["n_threads_batch"] == 16
    snippet = llama_python_snippet(load, "/models/m.gguf")
    assert "model_path='/models/m.gguf'," in snippet
    assert "type_k=8,  # q8_0 (GGML_TYPE_Q8_0 = 8)" in snippet
    assert "numa=True," in snippet


# ---- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_small_real_run_on_the_demo_model(demo_model: str, tmp_path: Path) -> None:
    space = SearchSpace(
        n_threads=(1, 2),
        n_threads_batch=(2,),
        n_batch=(32,),
        n_ubatch=(32,),
        flash_attn=(False,),
        type_k=("f16",),
        type_v=("f16",),
    )
    machine = MachineFacts(logical_cores=2, has_gpu=False, numa_nodes=1)
    config = TuneConfig(
        n_trials=2, repetitions=2, warmup_s=0.0, compare_rounds=1, trial_timeout_s=None, seed=0
    )
    tuner = Tuner(
        demo_model,
        "tg:8",
        space=space,
        config=config,
        storage_path=str(tmp_path / "t.sqlite3"),
        machine=machine,
    )
    result: TuneResult = tuner.run()
    measured = result.measured_trials
    # The baseline runs in full; the other trial may be pruned as clearly slower (1 thread of 2
    # often is, depending on the machine's load), which is a measured outcome too.
    assert [t.state for t in measured][0] is TrialStatus.COMPLETE, result.trials
    assert {t.state for t in measured} <= {TrialStatus.COMPLETE, TrialStatus.PRUNED}, result.trials
    assert {t.settings.n_threads for t in measured if t.settings} == {1, 2}
    assert all(1 <= len(t.repetitions) <= 2 and t.score > 0 for t in measured)
    assert (
        result.gain is not None and len(result.gain.default_scores) == 2 and len(result.gain.best_scores) == 2
    )
    assert result.flags().startswith(f"-c {result.best.n_ctx} -t {result.best.n_threads} ")


@pytest.mark.slow
def test_the_bench_measure_scores_a_workload_from_both_parts(demo_model: str) -> None:
    estimates: list[float | None] = []

    def keep_going(estimate: float | None) -> bool:
        estimates.append(estimate)
        return True

    measure = BenchMeasure(demo_model, Objective.parse("mix:16,4"))
    load = LoadSettings(n_ctx=256, n_threads=2, n_threads_batch=2, n_batch=16, n_ubatch=16)
    scores = measure(load, repetitions=2, keep_going=keep_going, cancel=threading.Event())
    assert len(scores) == 2 and all(s > 0 for s in scores)
    prompt_estimates = [e for e in estimates if e is not None]
    # The live estimate during the prompt part pretends generation is free: never below the real score.
    assert len(prompt_estimates) == 2
    assert all(e >= s for e, s in zip(prompt_estimates, scores, strict=True))
    stopped = measure(load, repetitions=3, keep_going=lambda e: False, cancel=threading.Event())
    assert stopped == []


# ---- the command line -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "tune", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_cli_tune_refuses_a_single_trial() -> None:
    result = _cli("--trials", "1")
    assert result.returncode == 2
    assert "--trials: at least 2 trials are needed (got 1)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_tune_refuses_a_bad_objective() -> None:
    result = _cli("--objective", "fastest")
    assert result.returncode == 2
    assert "objective 'fastest'" in result.stderr


@pytest.mark.slow
def test_cli_tune_prints_the_trials_and_a_json_result(demo_model: str, tmp_path: Path) -> None:
    storage = str(tmp_path / "cli.sqlite3")
    args = ["--objective", "tg:4", "--trials", "2", "-r", "2", "--warmup", "0", "--compare-rounds", "1"]
    result = _cli(demo_model, *args, "--storage", storage, "--json")
    assert result.returncode == 0, result.stderr
    assert "trial  phase" in result.stderr and "baseline" in result.stderr
    data = json.loads(result.stdout)
    assert data["objective"] == "tg:4" and data["stop_reason"] == "trial budget"
    assert data["flags"][:2] == ["-c", str(data["best"]["n_ctx"])]
    assert data["trials"][0]["phase"] == "baseline" and data["trials"][0]["score"] > 0
    assert data["gain"] is not None and len(data["gain"]["best_scores"]) == 2
    assert data["llama_cpp_python_kwargs"]["type_k"] == data["best"]["type_k"]
