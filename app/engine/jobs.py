"""llama.cpp work other than chat, run in the engine host: the benchmark runner, for now.

Each job has two halves. The host half (`run_*_job`) runs in the engine host through
`EngineService.run_job` and reports through `emit`. The client half (`host_*`) runs on the
Engine's worker thread (inside `Engine.run_exclusive`) and turns the events back into the
callbacks the rest of the app already takes. A native crash during a job then fails the job with
a message, never the app.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.bench.runner import BenchPlan, BenchResult, run_benchmark, telemetry_fields
from app.llama.driver import CancelFlag
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings

if TYPE_CHECKING:  # at run time the tuner is imported by its jobs: the session brings optuna along
    from app.tune.request import TuneRequest
    from app.tune.results import TrialRecord, TuneConfig, TuneProgress, TuneResult


class TimedWindowSignal:
    """Stands in for the telemetry Sampler in the host: the runner's TelemetryRecorder adds a
    listener when a test's timed repetitions start and removes it when they end; this sends those
    two moments to the client, whose own sampler records the hardware in between."""

    def __init__(self, emit: Callable[[str, Any], None]) -> None:
        self._emit = emit

    def add_listener(self, _listener: object) -> None:
        self._emit("telemetry", "start")

    def remove_listener(self, _listener: object) -> None:
        self._emit("telemetry", "stop")


class TelemetryWindows:
    """The client half of TimedWindowSignal: records this process's sampler between the host's
    "start" and "stop" events, so each finished test can carry the hardware of its timed window.

    `handle(kind, payload)` takes an event and says whether it was a telemetry one; `take()` gives
    the summary of the last window once (None without one); `close()` stops a window left open
    by a job that failed midway."""

    def __init__(self, sampler: Any) -> None:
        self._sampler = sampler
        self._recorder: Any = None
        self._summary: Any = None

    def handle(self, kind: str, payload: Any) -> bool:
        if kind != "telemetry":
            return False
        if self._sampler is None:
            return True
        from app.telemetry.energy import TelemetryRecorder

        if payload == "start":
            self._recorder = TelemetryRecorder(self._sampler)
            self._recorder.start()
            self._summary = None
        elif self._recorder is not None:
            self._summary = self._recorder.stop()
            self._recorder = None
        return True

    def take(self) -> Any:
        summary, self._summary = self._summary, None
        return summary

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.stop()
            self._recorder = None


def run_benchmark_job(
    plan: BenchPlan,
    *,
    with_telemetry: bool,
    cancel: CancelFlag,
    emit: Callable[[str, Any], None],
    own_tree_pid: int | None = None,
) -> list[BenchResult]:
    """The host half of a benchmark: app.bench.runner.run_benchmark with its callbacks as events.
    `own_tree_pid` is the client's process: its tree (this host included) is LlamaScope's own CPU
    time, everything else busy meanwhile is other load."""
    return run_benchmark(
        plan,
        cancel=cancel,
        on_progress=lambda done, total, what: emit("progress", (done, total, what)),
        on_result=lambda result: emit("result", result),
        sampler=TimedWindowSignal(emit) if with_telemetry else None,
        own_tree_pid=own_tree_pid,
    )


def host_benchmark(engine: Any) -> Callable[..., list[BenchResult]]:
    """A `run_benchmark` twin that runs the plan in `engine`'s host (call it on the engine's worker
    thread, i.e. inside Engine.run_exclusive); for app.bench.history.run_and_record(run=...)."""

    def run(
        plan: BenchPlan,
        *,
        cancel: Any = None,
        on_progress: Callable[[int, int, str], None] | None = None,
        on_result: Callable[[BenchResult], None] | None = None,
        sampler: Any = None,
    ) -> list[BenchResult]:
        windows = TelemetryWindows(sampler)
        results: list[BenchResult] = []

        def on_event(kind: str, payload: Any) -> None:
            if windows.handle(kind, payload):
                return
            if kind == "progress" and on_progress is not None:
                on_progress(*payload)
            elif kind == "result":
                result: BenchResult = payload
                summary = windows.take()
                if summary is not None:
                    n_tokens = (result.n_prompt + result.n_gen) * len(result.samples_ns)
                    result = dataclasses.replace(result, **telemetry_fields(summary, n_tokens))
                results.append(result)
                if on_result is not None:
                    on_result(result)

        try:
            engine.call_job_here(
                "app.engine.jobs:run_benchmark_job",
                plan,
                with_telemetry=sampler is not None,
                own_tree_pid=os.getpid(),
                on_event=on_event,
            )
        finally:
            windows.close()
        return results

    return run


# ---- evaluations and tuning: a core function with `cancel` and progress callbacks ----------------
# Every job that loads a model passes the memory check (app.model.memory.check_memory) in the core
# function itself, before llama.cpp allocates: the benchmark runner per configuration, the evaluations
# in EvalModel, the tuner per trial; `override_memory=True` among a job's keywords overrides it. The
# host may keep the window's model loaded beside the job's: its buffers are already missing from the
# available RAM, and EngineCore notes its mapped weights (note_loaded_model), which the check takes off.

# The core functions a client may run this way (a job names its function; only these are run).
PROGRESS_JOBS = {
    "app.quality.perplexity:evaluate_perplexity",
    "app.quality.kl_divergence:evaluate_kl_divergence",
    "app.quality.kl_divergence:evaluate_against_base",
    "app.quality.multiple_choice:run_benchmark_file",
    "app.quality.compare:measure_speed",
    "app.engine.jobs:tune",
    "app.engine.jobs:run_tuner",
    "app.quant.imatrix_compute:compute_imatrix",
}


def run_progress_job(
    function: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    callbacks: tuple[str, ...],
    *,
    cancel: CancelFlag,
    emit: Callable[[str, Any], None],
) -> Any:
    """The host half: `function(*args, cancel=cancel, <callback>=<event sender>..., **kwargs)`."""
    import importlib

    if function not in PROGRESS_JOBS:
        raise ValueError(f"not a LlamaScope job: {function}")
    module_name, _, name = function.partition(":")
    target = getattr(importlib.import_module(module_name), name)
    senders = {callback: (lambda payload, kind=callback: emit(kind, payload)) for callback in callbacks}
    return target(*args, cancel=cancel, **senders, **kwargs)


def host_call(
    engine: Any,
    function: str,
    *args: Any,
    callbacks: dict[str, Callable[[Any], None]] | None = None,
    **kwargs: Any,
) -> Any:
    """The client half, on the engine's worker thread: run `function` in the host; each callback
    (on_progress=..., on_trial=...) receives its events here."""
    callbacks = callbacks or {}

    def on_event(kind: str, payload: Any) -> None:
        callback = callbacks.get(kind)
        if callback is not None:
            callback(payload)

    return engine.call_job_here(
        "app.engine.jobs:run_progress_job", function, args, kwargs, tuple(callbacks), on_event=on_event
    )


def tune(
    model_path: str,
    base: LoadSettings,
    request: TuneRequest,
    *,
    cancel: CancelFlag,
    on_trial: Callable[[TrialRecord], None],
    on_progress: Callable[[TuneProgress], None],
) -> TuneResult:
    """The GUI's Auto-Tune session, in the host: `request`'s parameters tuned, the rest fixed at `base`."""
    from app.model.gguf_info import inspect_model
    from app.tune.request import tuner_for_request

    tuner = tuner_for_request(inspect_model(model_path), base, request)
    return tuner.run(cancel=cancel, on_trial=on_trial, on_progress=on_progress)


def run_tuner(
    info: ModelInfo,
    objective: str,
    base: LoadSettings,
    config: TuneConfig,
    storage_path: str | None,
    *,
    cancel: CancelFlag,
    on_trial: Callable[[TrialRecord], None],
    on_progress: Callable[[TuneProgress], None],
) -> TuneResult:
    """The command line's Auto-Tune session (every parameter, its own config and study storage), in the
    host."""
    from app.tune.session import Tuner

    tuner = Tuner(info, objective, base=base, config=config, storage_path=storage_path)
    return tuner.run(cancel=cancel, on_trial=on_trial, on_progress=on_progress)


# ---- short calls that load a vocabulary: a crafted one can trip llama.cpp's assertions too -----

PLAIN_JOBS = {"app.quality.kl_divergence:check_same_vocabulary", "app.quality.perplexity:plan_perplexity"}


def run_plain_job(
    function: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cancel: CancelFlag,
    emit: Callable[[str, Any], None],
) -> Any:
    """The host half of `host_plain`: `function(*args, **kwargs)`, one of PLAIN_JOBS."""
    import importlib

    if function not in PLAIN_JOBS:
        raise ValueError(f"not a LlamaScope job: {function}")
    module_name, _, name = function.partition(":")
    return getattr(importlib.import_module(module_name), name)(*args, **kwargs)


def host_plain(engine: Any, function: str, *args: Any, **kwargs: Any) -> Any:
    """Run one of PLAIN_JOBS in `engine`'s host and return its result (any thread; takes its turn)."""
    return engine.run_exclusive(
        lambda _cancel: engine.call_job_here("app.engine.jobs:run_plain_job", function, args, kwargs)
    ).result()
