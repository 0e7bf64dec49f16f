"""Turns the engine's futures and worker-thread callbacks into Qt signals for the GUI thread."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.bench.history import HistoryError, HistoryStore, run_and_record
from app.bench.runner import BenchPlan
from app.engine.client import Engine
from app.engine.jobs import host_benchmark, host_call
from app.engine.types import EngineError, GenerationRequest, LoadProgress, OperationCancelled, TokenStream
from app.model.settings import LoadSettings
from app.tune.request import TuneRequest

log = logging.getLogger(__name__)


class EngineBridge(QObject):
    """Thin re-emitter: the engine runs on its own thread; signals arrive queued in the GUI thread.

    Every request method returns at once; refusals (busy, shut down) come back as
    `operation_failed` so a slot never has to catch an exception.
    """

    busy_changed = Signal(bool)
    load_progressed = Signal(object)  # LoadProgress
    load_finished = Signal(object)  # LoadResult
    load_cancelled = Signal()
    unloaded = Signal()
    generation_started = Signal(object)  # TokenStream: read it at your own pace, see TokenReader
    generation_finished = Signal(object)  # RunStats
    tokenized = Signal(object)  # list[TokenPiece]
    benchmark_progressed = Signal(int, int, str)  # done steps, total steps, what runs
    benchmark_result = Signal(object)  # BenchResult, as each test finishes
    benchmark_finished = Signal(object)  # (results, run ids) when the plan ends or is stopped
    tune_progressed = Signal(object)  # TuneProgress
    tune_trial = Signal(object)  # TrialRecord, as each trial ends
    tune_finished = Signal(object)  # TuneResult
    operation_failed = Signal(str, str)  # (operation, message for the user)

    def __init__(self, engine: Engine | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine or Engine()
        self.engine.start_host()  # the engine process starts while the window opens, not at the first load
        self._history: HistoryStore | None = None
        self.tokens = TokenStream()  # the running or last generation's tokens

    # ---- requests (GUI thread) ---------------------------------------------------------------
    def request_load(self, path: str, settings: LoadSettings, override_memory: bool = False) -> None:
        self._start(
            "load",
            lambda: self.engine.load(
                path, settings, override_memory=override_memory, on_progress=self._emit_progress
            ),
            self.load_finished,
        )

    def request_unload(self) -> None:
        self._start("unload", self.engine.unload, self.unloaded)

    def request_generation(self, request: GenerationRequest) -> None:
        """Generate on the engine thread. Accepted, `generation_started` hands out the stream the
        tokens will be appended to; no signal per token (see TokenStream)."""
        stream = TokenStream()

        def generate() -> Future[Any]:
            future = self.engine.generate(request, stream.append)
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
        self._start("tokenize", lambda: self.engine.tokenize(text), self.tokenized)

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

        self._start("benchmark", lambda: self.engine.run_exclusive(job), self.benchmark_finished)

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

        self._start("tune", lambda: self.engine.run_exclusive(job), self.tune_finished)

    def record_generation(self, history: HistoryStore | None) -> None:
        """Store every finished generation's stats in `history` (written on the engine thread)."""
        self._history = history

    def cancel(self) -> None:
        self.engine.cancel()

    def shutdown(self) -> None:
        """Cancel and join the worker; called when the window closes."""
        self.engine.shutdown()

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
        was_loaded = self.engine.loaded is not None

        def finished(fut: Future[Any]) -> None:  # runs on the engine thread
            exc = fut.exception()
            self.busy_changed.emit(False)
            if was_loaded and self.engine.loaded is None and operation != "unload":
                # The engine host crashed or had to be ended (or a reload failed after freeing the
                # old model): say the model is gone before anything else is reported.
                self.unloaded.emit()
            if exc is None:
                result = fut.result()
                if result is None:  # unload: the signal carries nothing
                    done_signal.emit()
                else:
                    done_signal.emit(result)
            elif isinstance(exc, OperationCancelled) and operation == "load":
                self.load_cancelled.emit()
            else:
                self.operation_failed.emit(operation, str(exc) or type(exc).__name__)

        future.add_done_callback(finished)
