"""Runs quantization (a child process) and quality evaluations off the GUI thread, as Qt signals.

Evaluations (perplexity, KL divergence, speed) run in the engine host (app.engine.jobs), taking
their turn on the engine thread (`Engine.run_exclusive`): nothing else runs beside them, and a
native crash fails them with a message. The engine is shared with ui/engine_bridge.py: this
bridge's requests carry its own owner name, so its Cancel stops only its own work (and the
console's Stop none of it), and `engine_taken` tells the panel when the other bridge's work holds
the engine. Quantization runs in a child process of its own.

What runs, and in which order, is the quantization workflow's decision (app.quant.workflow): the
panel asks for a base, a measurement or a quantization, the bridge asks the workflow for the
step, runs it, and hands each result back for the next one, all on the GUI thread. The panel
hears what changed (the base, the comparison, measurements done) and keeps no workflow state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.engine.client import Engine
from app.engine.jobs import host_call
from app.engine.types import EngineError
from app.quality.eval_text import load_text
from app.quality.eval_types import EvalError, EvalSettings
from app.quant.plan import QuantizeError, QuantizeRequest, QuantizeResult
from app.quant.quantize import QuantizeJob
from app.quant.workflow import (
    KLDivergenceStep,
    Outcome,
    PerplexityStep,
    QuantizeStep,
    QuantWorkflow,
    SpeedStep,
    Step,
)
from ui.engine_bridge import busy_reason
from widgets.quantization_panel import QuantizationPanel


class QualityBridge(QObject):
    OWNER = "quality"  # what this bridge's engine requests carry as their owner (Engine.cancel(owner))

    busy_changed = Signal(bool)  # this bridge's own work (a quantization, an evaluation) runs or ended
    measuring_changed = Signal(bool)  # an evaluation (perplexity, KL divergence, speed) runs or ended
    queue_changed = Signal(object)  # tuple[QueueItem, ...]: the quantization queue and each item's state
    engine_taken = Signal(str)  # why the engine is busy with another bridge's work; "" when it is not
    quantize_progressed = Signal(object)  # QuantizeProgress
    quantize_finished = Signal(object)  # QuantizeResult
    eval_progressed = Signal(object)  # ChunkProgress or SpeedProgress
    eval_finished = Signal(str, object)  # kind ("ppl", "kld", "speed"), result
    failed = Signal(
        str, str
    )  # operation ("quantize", "ppl", "kld", "speed", "refused"), message for the user
    base_changed = Signal(object)  # PerplexityResult that saved the new base's log-probabilities
    comparison_changed = Signal(object)  # Comparison of the base and every file measured or made
    measurements_finished = Signal(str)  # model path: every measurement asked for it is done
    base_noted = Signal(str)  # what happened to the base since it was measured (moved…); "" when nothing
    _engine_changed = Signal()  # from the engine's threads to _on_engine_changed on the GUI thread

    def __init__(self, engine: Engine, workflow: QuantWorkflow, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._engine = engine
        self.workflow = workflow  # others read it; only the bridge drives it
        self._job: QuantizeJob | None = None
        self._quantize_cancelled = False  # Cancel was pressed for the quantization queue now running
        self._taken = ""
        self._engine_changed.connect(self._on_engine_changed)
        engine.add_activity_listener(self._engine_changed.emit)
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-quantize-start")
        # Connected here, before anyone else can connect: the workflow hears every outcome first and
        # on the GUI thread (queued from the job threads), so its state is current in later slots.
        self.quantize_finished.connect(self._on_quantize_finished)
        self.eval_finished.connect(self._on_eval_finished)
        self.failed.connect(self._on_failed)

    @property
    def quantizing(self) -> bool:
        return self._job is not None

    # ---- what the panel asks for -------------------------------------------------------------
    def quantize(self, request: QuantizeRequest) -> None:
        self.quantize_queue([request])

    def quantize_queue(self, requests: Sequence[QuantizeRequest]) -> None:
        """Quantize each request in turn; one that fails does not stop the next."""
        if self._job is not None or self.workflow.running:
            self.failed.emit("refused", "LlamaScope is still quantizing or measuring; wait or press Cancel.")
            return
        if not requests:
            return
        self._quantize_cancelled = False
        step = self.workflow.quantize_queue(requests)
        self.queue_changed.emit(self.workflow.queue)
        self._run_step(step)

    def measure_base(self, model_path: str, text_source: str, settings: EvalSettings) -> None:
        try:
            step = self.workflow.measure_base(model_path, text_source, settings)
        except EvalError as exc:  # the file is not there (moved, deleted)
            self.failed.emit("ppl", str(exc))
            return
        self._run_step(step)

    def measure(self, model_path: str, text_source: str, settings: EvalSettings) -> None:
        try:
            step = self.workflow.measure(model_path, text_source, settings)
        except EvalError as exc:  # the file is not there (moved, deleted)
            self.failed.emit("ppl", str(exc))
            return
        # Before the measurement: whether it is against a base that has moved, or without KL
        # divergence because the base's saved log-probabilities are gone.
        self.base_noted.emit(self.workflow.base_note or "")
        self._run_step(step)

    def _on_engine_changed(self) -> None:
        activity = self._engine.activity
        taken = busy_reason(activity) if activity is not None and activity.owner != self.OWNER else ""
        if taken != self._taken:
            self._taken = taken
            self.engine_taken.emit(taken)

    def _run_step(self, step: Step) -> None:
        if isinstance(step, QuantizeStep):
            self._start_quantize(step.request)
        elif isinstance(step, PerplexityStep):
            self._start_perplexity(step)
        elif isinstance(step, KLDivergenceStep):
            self._start_kl_divergence(step)
        elif isinstance(step, SpeedStep):
            self._start_speed(step)

    def _on_quantize_finished(self, result: Outcome) -> None:
        self._record("quantize", result)

    def _on_eval_finished(self, kind: str, result: Outcome) -> None:
        self._record(kind, result)

    def _record(self, kind: str, result: Outcome) -> None:
        try:
            step = self.workflow.record(result)
        except EvalError as exc:  # the file just measured can no longer be read
            self.failed.emit(kind, str(exc))
            return
        if isinstance(result, QuantizeResult):
            self.queue_changed.emit(self.workflow.queue)
        if self.workflow.comparison is not None:
            self.comparison_changed.emit(self.workflow.comparison)
        if result is self.workflow.base_result:
            self.base_changed.emit(result)
        if step is not None:
            self._run_step(step)
        elif not isinstance(result, QuantizeResult) and not self.workflow.running:
            self.measurements_finished.emit(result.model_path)

    def _on_failed(self, operation: str, message: str) -> None:
        # Whatever failed (a step, its start, a cancel) ends the workflow: what came next needed it;
        # except in a queue of quantizations, whose next item runs unless Cancel was pressed. A request
        # refused because work is running ("refused") changes nothing.
        if operation == "refused":
            return
        if operation != "quantize":
            self.workflow.failed(message)
            return
        step = self.workflow.failed(message, cancelled=self._quantize_cancelled)
        self.queue_changed.emit(self.workflow.queue)
        if step is not None:
            self._run_step(step)

    # ---- quantization ------------------------------------------------------------------------
    def _start_quantize(self, request: QuantizeRequest) -> None:
        if self._job is not None:
            self.failed.emit("refused", "A quantization is already running; wait or press Cancel.")
            return
        job = QuantizeJob(request, on_progress=self.quantize_progressed.emit)
        self._job = job
        self.busy_changed.emit(True)
        # Planning reads the source header and asks llama.cpp about the type: not on the GUI thread.
        self._starter.submit(self._start_job, job)

    def _start_job(self, job: QuantizeJob) -> None:
        try:
            job.start()  # checks the source, the output folder and free space; starts the child
        except QuantizeError as exc:
            self._job = None
            self.busy_changed.emit(False)
            self.failed.emit("quantize", str(exc))
            return
        job.future.add_done_callback(self._on_quantize_done)

    def _on_quantize_done(self, future: Future[Any]) -> None:
        self._job = None
        self.busy_changed.emit(False)
        exc = future.exception()
        if exc is None:
            self.quantize_finished.emit(future.result())
        else:
            self.failed.emit("quantize", str(exc))

    # ---- evaluations on the engine thread ----------------------------------------------------
    def _start_perplexity(self, step: PerplexityStep) -> None:
        def job(cancel: threading.Event) -> Any:
            if step.save_logits is not None:  # the base's cache folder, made here and not on the GUI thread
                os.makedirs(os.path.dirname(step.save_logits), exist_ok=True)
            return host_call(
                self._engine,
                "app.quality.perplexity:evaluate_perplexity",
                step.model_path,
                load_text(step.text_source),
                step.settings,
                save_logits=step.save_logits,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("ppl", job, f"measuring the perplexity of {os.path.basename(step.model_path)}")

    def _start_kl_divergence(self, step: KLDivergenceStep) -> None:
        def job(cancel: threading.Event) -> Any:
            return host_call(
                self._engine,
                "app.quality.kl_divergence:evaluate_kl_divergence",
                step.model_path,
                step.logits_file,
                step.settings,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("kld", job, f"measuring the KL divergence of {os.path.basename(step.model_path)}")

    def _start_speed(self, step: SpeedStep) -> None:
        def job(cancel: threading.Event) -> Any:
            return host_call(
                self._engine,
                "app.quality.compare:measure_speed",
                step.model_path,
                n_prompt=step.n_prompt,
                n_gen=step.n_gen,
                repetitions=step.repetitions,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("speed", job, f"measuring the speed of {os.path.basename(step.model_path)}")

    def _run(self, kind: str, job: Any, what: str) -> None:
        try:
            future = self._engine.run_exclusive(job, owner=self.OWNER, label=f"{what} (Quantization)")
        except EngineError as exc:
            self.failed.emit(kind, str(exc))
            return
        self.busy_changed.emit(True)
        self.measuring_changed.emit(True)

        def done(fut: Future[Any]) -> None:  # runs on the engine thread
            self.measuring_changed.emit(False)
            self.busy_changed.emit(False)
            exc = fut.exception()
            if exc is None:
                self.eval_finished.emit(kind, fut.result())
            else:
                self.failed.emit(kind, str(exc) or type(exc).__name__)

        future.add_done_callback(done)

    # ---- stopping ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop this bridge's work: the quantization queue and the evaluation it runs, nothing else."""
        self.cancel_quantize()
        self.cancel_measure()

    def cancel_quantize(self) -> None:
        """Stop the running quantization and the rest of its queue."""
        self._quantize_cancelled = True
        self.workflow.cancel_queue()
        self.queue_changed.emit(self.workflow.queue)
        job = self._job
        if job is not None:
            job.cancel()

    def cancel_measure(self) -> None:
        """Stop the running evaluation (perplexity, KL divergence, speed) and what was to follow it."""
        self._engine.cancel(self.OWNER)

    def shutdown(self) -> None:
        """Stop a running quantization and wait for its child, so no process outlives the window."""
        # The window is going: the outcome of what is stopped now ("cancelled") is for nobody, and its
        # slots must not start the queue's next step on the executor shut down here (a traceback).
        self.blockSignals(True)
        self._quantize_cancelled = True
        self.workflow.cancel_queue()
        self._engine.remove_listener(self._engine_changed.emit)
        self._starter.shutdown(wait=True)
        job = self._job
        if job is not None:
            job.cancel()
            try:
                job.wait(timeout=30)
            except QuantizeError:
                pass  # cancelled: the temporary file is already gone


def connect_quantization_panel(
    bridge: QualityBridge, panel: QuantizationPanel, add_model: Callable[[str], None]
) -> None:
    """Wire the Quantization panel to its bridge. `add_model` puts each new file in the model list
    (and keeps it there after a restart) without selecting it: the source stays the source, so the
    next type can be made from it."""
    panel.quantize_requested.connect(bridge.quantize_queue)
    panel.base_requested.connect(bridge.measure_base)
    panel.measure_requested.connect(bridge.measure)
    panel.cancel_requested.connect(bridge.cancel_quantize)
    panel.measure_cancel_requested.connect(bridge.cancel_measure)
    bridge.busy_changed.connect(panel.set_busy)
    bridge.measuring_changed.connect(panel.set_measuring)
    bridge.engine_taken.connect(panel.set_engine_taken)  # a generation, load or benchmark holds the engine
    bridge.queue_changed.connect(panel.on_queue_changed)
    bridge.quantize_progressed.connect(panel.on_quantize_progressed)
    bridge.quantize_finished.connect(panel.on_quantize_finished)
    bridge.quantize_finished.connect(lambda result: add_model(result.output_path))
    bridge.eval_progressed.connect(panel.on_eval_progressed)
    bridge.eval_finished.connect(panel.on_eval_finished)
    bridge.base_changed.connect(panel.on_base_changed)
    bridge.base_noted.connect(panel.on_base_noted)
    bridge.comparison_changed.connect(panel.on_comparison_changed)
    bridge.measurements_finished.connect(panel.on_measurements_finished)
    bridge.failed.connect(panel.on_failed)
