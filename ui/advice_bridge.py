"""Runs an importance-matrix computation and the quantization advisor off the GUI thread, as signals.

The importance matrix is an `ImatrixJob` (app.engine.imatrix_job): it takes its turn on the engine's
worker thread and runs in the engine host; its progress arrives on that thread and is re-emitted.
The advisor (app.quant.advisor.Advisor) blocks for minutes, so it runs on a thread of its own
(`llamascope-advise`); it quantizes in the quantizer's child processes and measures in the engine
host through an `EngineEvalRunner`. Both carry their own owner names, so their Cancel stops only
their own work. Every failure, refusal or bad input becomes a `*_failed` message; the GUI thread
never waits on either.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.engine.client import Engine
from app.engine.imatrix_job import ImatrixJob, ImatrixRequest
from app.engine.types import EngineError
from app.quant.advisor import Advice, AdviceError, AdviceRequest, Advisor
from app.quant.measuring import OperationStopped, Stop
from ui.engine_bridge import busy_reason


class AdviceBridge(QObject):
    IMATRIX_OWNER = "imatrix"
    ADVICE_OWNER = "advice"

    imatrix_busy = Signal(bool)
    imatrix_progressed = Signal(object)  # app.quality.eval_types.ChunkProgress
    imatrix_finished = Signal(object)  # app.quant.imatrix_compute.ImatrixResult
    imatrix_failed = Signal(str)  # a message for the user (cancelled, refused, failed)
    advice_busy = Signal(bool)
    advice_progressed = Signal(object)  # AdviceProgress
    advice_eval_progressed = Signal(object)  # ChunkProgress or SpeedProgress of the running measurement
    advice_finished = Signal(object)  # Advice
    advice_failed = Signal(str)
    # Why the engine is held by work other than the box's own ("" when it is not), as the other
    # bridges' engine_taken: the box's button is off and says so instead of being refused.
    imatrix_engine_taken = Signal(str)
    advice_engine_taken = Signal(str)
    _engine_changed = Signal()  # from the engine's threads to _on_engine_changed on the GUI thread

    def __init__(self, engine: Engine, history: Any = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._engine = engine
        self._history = history  # app.bench.history.HistoryStore; None: the user's history database
        self._imatrix_job: ImatrixJob | None = None
        self._stop: Stop | None = None
        self._thread: threading.Thread | None = None
        self._advising = False  # as the GUI thread last heard (advice_busy)
        self._taken = ("", "")
        self._engine_changed.connect(self._on_engine_changed)
        self.advice_busy.connect(self._on_advice_busy)
        engine.add_activity_listener(self._engine_changed.emit)

    @property
    def computing(self) -> bool:
        return self._imatrix_job is not None

    @property
    def advising(self) -> bool:
        return self._thread is not None

    # ---- who holds the engine ----------------------------------------------------------------
    def _on_advice_busy(self, busy: bool) -> None:
        self._advising = busy
        self._on_engine_changed()

    def _on_engine_changed(self) -> None:
        activity = self._engine.activity
        imatrix = advice = ""
        if activity is not None and activity.owner != self.IMATRIX_OWNER:
            imatrix = busy_reason(activity)
        if activity is not None and activity.owner != self.ADVICE_OWNER:
            advice = busy_reason(activity)
        if self._advising and not imatrix:
            # Between its measurements the advice quantizes and the engine is free; a matrix started
            # then would make the advice's next measurement fail as busy.
            imatrix = "An advice is running (Recommend): wait for it to finish, or cancel it there."
        if (imatrix, advice) != self._taken:
            if imatrix != self._taken[0]:
                self.imatrix_engine_taken.emit(imatrix)
            if advice != self._taken[1]:
                self.advice_engine_taken.emit(advice)
            self._taken = (imatrix, advice)

    # ---- importance matrix -------------------------------------------------------------------
    def compute_imatrix(self, request: ImatrixRequest) -> None:
        if self._imatrix_job is not None:
            self.imatrix_failed.emit("An importance matrix is already being computed; wait or press Cancel.")
            return
        folder = os.path.dirname(os.path.abspath(request.output))
        try:
            os.makedirs(folder, exist_ok=True)  # the user's models folder, on first use
        except OSError as exc:
            self.imatrix_failed.emit(
                f"Cannot create the folder {folder} for the matrix: {exc.strerror or exc}."
            )
            return
        job = ImatrixJob(
            self._engine, request, on_progress=self.imatrix_progressed.emit, owner=self.IMATRIX_OWNER
        )
        try:
            future = job.start()
        except EngineError as exc:  # busy with other work, or the host cannot start
            self.imatrix_failed.emit(str(exc))
            return
        self._imatrix_job = job
        self.imatrix_busy.emit(True)
        future.add_done_callback(self._on_imatrix_done)

    def _on_imatrix_done(self, future: Future[Any]) -> None:  # on the engine's thread
        self._imatrix_job = None
        self.imatrix_busy.emit(False)
        exc = future.exception()
        if exc is None:
            self.imatrix_finished.emit(future.result())
        else:
            self.imatrix_failed.emit(str(exc) or type(exc).__name__)

    def cancel_imatrix(self) -> None:
        job = self._imatrix_job
        if job is not None:
            job.cancel()

    # ---- the advisor -------------------------------------------------------------------------
    def advise(self, request: AdviceRequest) -> None:
        if self._thread is not None:
            self.advice_failed.emit("An advice is already running; wait or press Cancel.")
            return
        from app.engine.quant_steps import EngineEvalRunner

        stop = Stop()
        advisor = Advisor(
            request,
            EngineEvalRunner(self._engine, owner=self.ADVICE_OWNER, n_threads=request.n_threads),
            store=self._history,
            stop=stop,
            on_progress=self.advice_progressed.emit,
            on_eval_progress=self.advice_eval_progressed.emit,
        )
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run_advice, args=(advisor, request), name="llamascope-advise", daemon=True
        )
        self.advice_busy.emit(True)
        self._thread.start()

    def _run_advice(self, advisor: Advisor, request: AdviceRequest) -> None:
        try:
            if request.keep_folder:
                os.makedirs(request.keep_folder, exist_ok=True)
            advice: Advice = advisor.run()
        except OperationStopped as exc:
            self._end_advice()
            self.advice_failed.emit(f"Cancelled. {exc}")
        except (AdviceError, EngineError, OSError) as exc:
            self._end_advice()
            self.advice_failed.emit(str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 (EvalError, QuantizeError, HistoryError…: said, not raised)
            self._end_advice()
            self.advice_failed.emit(str(exc) or type(exc).__name__)
        else:
            self._end_advice()
            self.advice_finished.emit(advice)

    def _end_advice(self) -> None:
        self._thread = None
        self._stop = None
        self.advice_busy.emit(False)

    def cancel_advice(self) -> None:
        stop = self._stop
        if stop is not None:
            stop.set()

    def shutdown(self) -> None:
        """Stop both and wait for the advisor's thread (its quantizer child and work folder go with it)."""
        self.blockSignals(True)  # their "cancelled" endings are for nobody: the window is going
        self._engine.remove_listener(self._engine_changed.emit)
        self.cancel_imatrix()
        self.cancel_advice()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)


def connect_advice(bridge: AdviceBridge, panel: Any, add_model: Callable[[str], None]) -> None:
    """Wire the Quantization panel's Importance matrix and Recommend boxes (widgets.imatrix_box,
    widgets.advice_box) to the bridge. `add_model` is the path the quantize queue's outputs take
    into the model list."""
    imatrix, advice = panel.imatrix_box, panel.advice_box
    imatrix.compute_requested.connect(bridge.compute_imatrix)
    imatrix.cancel_requested.connect(bridge.cancel_imatrix)
    bridge.imatrix_busy.connect(imatrix.set_busy)
    bridge.imatrix_progressed.connect(imatrix.on_progress)
    bridge.imatrix_finished.connect(imatrix.on_finished)
    bridge.imatrix_failed.connect(imatrix.on_failed)
    advice.advise_requested.connect(bridge.advise)
    advice.cancel_requested.connect(bridge.cancel_advice)
    advice.add_model_requested.connect(add_model)
    bridge.advice_busy.connect(advice.set_busy)
    bridge.advice_progressed.connect(advice.on_progress)
    bridge.advice_eval_progressed.connect(advice.on_eval_progress)
    bridge.advice_finished.connect(advice.on_finished)
    bridge.advice_failed.connect(advice.on_failed)
    bridge.imatrix_engine_taken.connect(imatrix.set_engine_taken)  # a load, generation, benchmark…
    bridge.advice_engine_taken.connect(advice.set_engine_taken)


__all__ = ["AdviceBridge", "connect_advice"]
