"""Turns the engine's futures and worker-thread callbacks into Qt signals for the GUI thread."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.engine import (
    Engine,
    EngineError,
    GenerationRequest,
    LoadProgress,
    OperationCancelled,
    TokenEvent,
)
from app.settings import LoadSettings


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
    token_received = Signal(object)  # TokenEvent
    generation_finished = Signal(object)  # RunStats
    tokenized = Signal(object)  # list[TokenPiece]
    operation_failed = Signal(str, str)  # (operation, message for the user)

    def __init__(self, engine: Engine | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine or Engine()

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
        self._start("generate", lambda: self.engine.generate(request, self._emit_token), self.generation_finished)

    def request_tokenize(self, text: str) -> None:
        self._start("tokenize", lambda: self.engine.tokenize(text), self.tokenized)

    def cancel(self) -> None:
        self.engine.cancel()

    def shutdown(self) -> None:
        """Cancel and join the worker; called when the window closes."""
        self.engine.shutdown()

    # ---- plumbing ----------------------------------------------------------------------------
    def _emit_progress(self, progress: LoadProgress) -> None:
        self.load_progressed.emit(progress)

    def _emit_token(self, event: TokenEvent) -> None:
        self.token_received.emit(event)

    def _start(self, operation: str, submit: Any, done_signal: Any) -> None:
        try:
            future: Future[Any] = submit()
        except EngineError as exc:
            self.operation_failed.emit(operation, str(exc))
            return
        self.busy_changed.emit(True)

        def finished(fut: Future[Any]) -> None:  # runs on the engine thread
            exc = fut.exception()
            self.busy_changed.emit(False)
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
