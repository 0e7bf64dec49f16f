"""Turns the engine's futures and worker-thread callbacks into Qt signals for the GUI thread.

The engine is shared with the Quantization panel's bridge (ui/quality_bridge.py). Each bridge
names itself as the owner of its requests, so its Stop stops only its own work, and tells its
panels when the other bridge's work holds the engine (`engine_taken`), so their buttons are off
and say why. What the window shows as loaded follows the engine's `loaded` after every request
and whenever the engine host ends on its own.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.bench.history import HistoryError, HistoryStore, run_and_record, score_and_record
from app.bench.localscore import ScorePlan
from app.bench.runner import BenchPlan
from app.engine.client import Engine, EngineActivity
from app.engine.jobs import host_benchmark, host_call
from app.engine.score_job import host_localscore
from app.engine.types import (
    EngineError,
    GenerationRequest,
    LoadProgress,
    LoadResult,
    OperationCancelled,
    TokenStream,
)
from app.model.settings import LoadSettings
from app.tune.request import TuneRequest

log = logging.getLogger(__name__)


def busy_reason(activity: EngineActivity) -> str:
    """Why a button that needs the engine is off while another part's work holds it."""
    return f"The engine is busy {activity.label}: wait for it to finish, or stop it there."


class EngineBridge(QObject):
    """Thin re-emitter: the engine runs on its own thread; signals arrive queued in the GUI thread.

    Every request method returns at once; refusals (busy, shut down) come back as
    `operation_failed` so a slot never has to catch an exception.
    """

    OWNER = "engine"  # what this bridge's requests carry as their owner (Engine.cancel(owner))

    busy_changed = Signal(bool)  # this bridge's own request runs (True) or ended (False)
    engine_taken = Signal(str)  # why the engine is busy with another bridge's work; "" when it is not
    load_progressed = Signal(object)  # LoadProgress
    load_finished = Signal(object)  # LoadResult
    load_cancelled = Signal()
    unloaded = Signal()  # the engine holds no model any more (unload, a failed reload, a crash)
    model_lost = Signal(str)  # the model went away between requests (the host ended): why
    generation_started = Signal(object)  # TokenStream: read it at your own pace, see TokenReader
    generation_finished = Signal(object)  # RunStats
    tokenized = Signal(object)  # list[TokenPiece]
    benchmark_progressed = Signal(int, int, str)  # done steps, total steps, what runs
    benchmark_result = Signal(object)  # BenchResult, as each test finishes
    benchmark_finished = Signal(object)  # (results, run ids) when the plan ends or is stopped
    score_progressed = Signal(int, int, str)  # LocalScore: done steps, total steps, what runs
    score_test = Signal(object)  # ShapeResult, as each LocalScore test finishes
    score_finished = Signal(object)  # (ScoreRun, run id or None) when it ends or is stopped
    tune_progressed = Signal(object)  # TuneProgress
    tune_trial = Signal(object)  # TrialRecord, as each trial ends
    tune_finished = Signal(object)  # TuneResult
    operation_failed = Signal(str, str)  # (operation, message for the user)
    # From the engine's threads to this bridge's slots on the GUI thread.
    _engine_changed = Signal()
    _engine_lost_model = Signal(str)

    def __init__(self, engine: Engine | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine or Engine()
        self._history: HistoryStore | None = None
        self.tokens = TokenStream()  # the running or last generation's tokens
        self._shown_loaded: LoadResult | None = None  # what the window was told is loaded
        self._taken = ""
        # Connected first: the bridge knows what it told the window before any panel hears of it.
        self.load_finished.connect(self._on_load_finished)
        self._engine_changed.connect(self._sync_with_engine)
        self._engine_lost_model.connect(self._on_model_lost)
        self.engine.add_activity_listener(self._engine_changed.emit)
        self.engine.add_model_lost_listener(self._engine_lost_model.emit)
        self.engine.start_host()  # the engine process starts while the window opens, not at the first load

    # ---- requests (GUI thread) ---------------------------------------------------------------
    def request_load(self, path: str, settings: LoadSettings, override_memory: bool = False) -> None:
        self._start(
            "load",
            lambda: self.engine.load(
                path,
                settings,
                override_memory=override_memory,
                on_progress=self._emit_progress,
                owner=self.OWNER,
                label=f"loading {os.path.basename(path)} (Model Config)",
            ),
            self.load_finished,
        )

    def request_unload(self) -> None:
        # No done signal: `unloaded` comes from comparing with the engine, as for every other way out.
        self._start("unload", lambda: self.engine.unload(owner=self.OWNER), None)

    def request_generation(self, request: GenerationRequest) -> None:
        """Generate on the engine thread. Accepted, `generation_started` hands out the stream the
        tokens will be appended to; no signal per token (see TokenStream)."""
        stream = TokenStream()

        def generate() -> Future[Any]:
            future = self.engine.generate(
                request, stream.append, owner=self.OWNER, label="generating text (console)"
            )
            self.tokens = stream
            self.generation_started.emit(stream)
            future.add_done_callback(lambda fut: self._store_generation(fut, request))
            return future

        self._start("generate", generate, self.generation_finished)

    def _store_generation(self, future: Future[Any], request: GenerationRequest) -> None:
        loaded = self.engine.loaded
        if self._history is None or future.exception() is not None or loaded is None:
            return
        settings = {"load": loaded.settings.to_dict(), "sampling": request.sampling.to_dict()}
        try:
            self._history.add_generation(loaded.model.path, settings, future.result())
        except HistoryError as exc:  # history is a record, not a reason to fail the generation
            log.warning("generation not stored in history: %s", exc)

    def request_tokenize(self, text: str) -> None:
        self._start("tokenize", lambda: self.engine.tokenize(text, owner=self.OWNER), self.tokenized)

    def request_benchmark(self, plan: BenchPlan, history: HistoryStore | None, sampler: Any = None) -> None:
        """Run a benchmark plan on the engine thread, storing each result in `history` as it finishes."""

        def job(cancel: threading.Event) -> Any:
            return run_and_record(
                plan,
                history,
                cancel=cancel,
                sampler=sampler,
                on_progress=self.benchmark_progressed.emit,
                on_result=self.benchmark_result.emit,
                run=host_benchmark(self.engine),  # in the engine host: a crash fails the run, not the app
            )

        self._start(
            "benchmark",
            lambda: self.engine.run_exclusive(job, owner=self.OWNER, label="benchmarking (Performance)"),
            self.benchmark_finished,
        )

    def request_localscore(self, plan: ScorePlan, history: HistoryStore | None, sampler: Any = None) -> None:
        """Mozilla LocalScore in the engine host, each test stored in `history` as it finishes."""

        def job(_cancel: threading.Event) -> Any:
            return score_and_record(
                plan,
                history,
                run=host_localscore(self.engine),
                on_progress=self.score_progressed.emit,
                on_shape=self.score_test.emit,
                sampler=sampler,
            )

        def submit() -> Future[Any]:
            return self.engine.run_exclusive(job, owner=self.OWNER, label="running LocalScore (Performance)")

        self._start("score", submit, self.score_finished)

    def request_tune(self, model_path: str, base: LoadSettings, request: TuneRequest) -> None:
        """Auto-tune in the engine host (app.engine.jobs.tune builds the search from the request): trials
        and progress arrive as signals, Stop keeps the best."""

        def job(cancel: threading.Event) -> Any:
            return host_call(
                self.engine,
                "app.engine.jobs:tune",
                model_path,
                base,
                request,
                callbacks={"on_trial": self.tune_trial.emit, "on_progress": self.tune_progressed.emit},
            )

        self._start(
            "tune",
            lambda: self.engine.run_exclusive(job, owner=self.OWNER, label="auto-tuning (Performance)"),
            self.tune_finished,
        )

    def record_generation(self, history: HistoryStore | None) -> None:
        """Store every finished generation's stats in `history` (written on the engine thread)."""
        self._history = history

    def cancel(self) -> None:
        """Stop this bridge's running request (a load, a generation, a benchmark, a tuning), and
        nothing the Quantization panel started."""
        self.engine.cancel(self.OWNER)

    def shutdown(self) -> None:
        """Cancel and join the worker; called when the window closes."""
        # What is stopped now ends as "cancelled" or "process object is closed" on the engine's thread:
        # not a failure to tell anyone, the window is going.
        self.blockSignals(True)
        self.engine.remove_listener(self._engine_changed.emit)
        self.engine.remove_listener(self._engine_lost_model.emit)
        self.engine.shutdown()

    # ---- the engine's state, on the GUI thread -------------------------------------------------
    def _on_load_finished(self, result: LoadResult) -> None:
        self._shown_loaded = result
        if self.engine.loaded is not result:
            # Its host ended between the load and now: the panels hear of the load first (they
            # are connected after this slot), then, from the event loop, that it is gone.
            QTimer.singleShot(0, self._sync_with_engine)

    def _sync_with_engine(self) -> bool:
        """The engine's activity changed (a request started or ended): tell the panels whether
        another bridge holds it, and whether the model they show as loaded is still there.
        Returns whether it said `unloaded`."""
        activity = self.engine.activity
        taken = busy_reason(activity) if activity is not None and activity.owner != self.OWNER else ""
        if taken != self._taken:
            self._taken = taken
            self.engine_taken.emit(taken)
        if self._shown_loaded is not None and self.engine.loaded is None:
            # Unloaded, or freed by a reload that failed or was cancelled, or gone with its host:
            # said before the request's own outcome, which arrives queued after this.
            self._shown_loaded = None
            self.unloaded.emit()
            return True
        return False

    def _on_model_lost(self, message: str) -> None:
        if self._sync_with_engine():
            self.model_lost.emit(message)

    # ---- plumbing ----------------------------------------------------------------------------
    def _emit_progress(self, progress: LoadProgress) -> None:
        self.load_progressed.emit(progress)

    def _start(self, operation: str, submit: Any, done_signal: Any) -> None:
        try:
            future: Future[Any] = submit()
        except EngineError as exc:
            self.operation_failed.emit(operation, str(exc))
            return
        self.busy_changed.emit(True)

        def finished(fut: Future[Any]) -> None:  # runs on the engine thread (or here, if it ended already)
            exc = fut.exception()
            # The window's loaded state first, then the outcome (the engine pinged already; this
            # one matters when the future ended before this callback was added: then all is direct).
            self._engine_changed.emit()
            self.busy_changed.emit(False)
            if exc is None:
                if done_signal is None:
                    pass
                elif (result := fut.result()) is None:
                    done_signal.emit()
                else:
                    done_signal.emit(result)
            elif isinstance(exc, OperationCancelled) and operation == "load":
                self.load_cancelled.emit()
            else:
                self.operation_failed.emit(operation, str(exc) or type(exc).__name__)

        future.add_done_callback(finished)
