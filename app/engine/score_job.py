"""LocalScore as an engine-host job (app.bench.localscore), beside the benchmark's in app.engine.jobs.

The host half (`run_localscore_job`) runs in the engine host through EngineService.run_job and reports
each finished test as an event; the client half (`host_localscore`) runs on the Engine's worker thread
and records the hardware of each test's window with this process's telemetry sampler, as
app.engine.jobs.host_benchmark does for a benchmark. A native crash fails the run with a message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from app.bench.localscore import ScorePlan, ScoreRun, ShapeResult, run_localscore, telemetry_fields
from app.engine.jobs import TelemetryWindows, TimedWindowSignal
from app.llama.driver import CancelFlag


def run_localscore_job(
    plan: ScorePlan, *, with_telemetry: bool, cancel: CancelFlag, emit: Callable[[str, Any], None]
) -> ScoreRun:
    """The host half: app.bench.localscore.run_localscore with its callbacks as events."""
    return run_localscore(
        plan,
        cancel=cancel,
        on_progress=lambda done, total, what: emit("progress", (done, total, what)),
        on_shape=lambda result: emit("shape", result),
        sampler=TimedWindowSignal(emit) if with_telemetry else None,
    )


def host_localscore(engine: Any) -> Callable[..., ScoreRun]:
    """A `run_localscore` twin that runs in `engine`'s host; call it on the engine's worker thread
    (inside Engine.run_exclusive). `sampler` (a running Sampler of this process) adds each test's
    power and CPU load."""

    def run(
        plan: ScorePlan,
        *,
        on_progress: Callable[[int, int, str], None] | None = None,
        on_shape: Callable[[ShapeResult], None] | None = None,
        sampler: Any = None,
    ) -> ScoreRun:
        windows = TelemetryWindows(sampler)
        shapes: list[ShapeResult] = []

        def on_event(kind: str, payload: Any) -> None:
            if windows.handle(kind, payload):
                return
            if kind == "progress" and on_progress is not None:
                on_progress(*payload)
            elif kind == "shape":
                result: ShapeResult = payload
                summary = windows.take()
                if summary is not None:
                    result = dataclasses.replace(result, **telemetry_fields(summary))
                shapes.append(result)
                if on_shape is not None:
                    on_shape(result)

        try:
            finished: ScoreRun = engine.call_job_here(
                "app.engine.score_job:run_localscore_job",
                plan,
                with_telemetry=sampler is not None,
                on_event=on_event,
            )
        finally:
            windows.close()
        # The host's tests carry no telemetry: the sampler runs here.
        return dataclasses.replace(finished, shapes=tuple(shapes))

    return run
