"""Runs quantization (a child process) and quality evaluations off the GUI thread, as Qt signals.

Evaluations (perplexity, KL divergence, speed) run in the engine host (app.engine.jobs), taking
their turn on the engine thread (`Engine.run_exclusive`): nothing else runs beside them, the
engine's Stop cancels them, and a native crash fails them with a message. Quantization runs in a
child process of its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.engine.client import Engine
from app.engine.jobs import host_call
from app.engine.types import EngineError
from app.quality.eval_text import load_text
from app.quality.eval_types import EvalSettings
from app.quant.quantize import QuantizeError, QuantizeJob, QuantizeRequest


class QualityBridge(QObject):
    busy_changed = Signal(bool)
    quantize_progressed = Signal(object)  # QuantizeProgress
    quantize_finished = Signal(object)  # QuantizeResult
    eval_progressed = Signal(object)  # ChunkProgress or SpeedProgress
    eval_finished = Signal(str, object)  # kind ("ppl", "kld", "speed"), result
    failed = Signal(str, str)  # operation, message for the user

    def __init__(self, engine: Engine, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._engine = engine
        self._job: QuantizeJob | None = None
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-quantize-start")

    @property
    def quantizing(self) -> bool:
        return self._job is not None

    # ---- quantization ------------------------------------------------------------------------
    def start_quantize(self, request: QuantizeRequest) -> None:
        if self._job is not None:
            self.failed.emit("quantize", "A quantization is already running; wait or press Cancel.")
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
    def start_perplexity(
        self, model_path: str, text_source: str, settings: EvalSettings, save_logits: str | None = None
    ) -> None:
        def job(cancel: threading.Event) -> Any:
            return host_call(
                self._engine,
                "app.quality.perplexity:evaluate_perplexity",
                model_path,
                load_text(text_source),
                settings,
                save_logits=save_logits,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("ppl", job)

    def start_kl_divergence(self, model_path: str, logits_file: str, settings: EvalSettings) -> None:
        def job(cancel: threading.Event) -> Any:
            return host_call(
                self._engine,
                "app.quality.kl_divergence:evaluate_kl_divergence",
                model_path,
                logits_file,
                settings,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("kld", job)

    def start_speed(self, model_path: str, n_threads: int | None = None) -> None:
        def job(cancel: threading.Event) -> Any:
            return host_call(
                self._engine,
                "app.quality.compare:measure_speed",
                model_path,
                n_prompt=256,
                n_gen=32,
                repetitions=3,
                n_threads=n_threads,
                callbacks={"on_progress": self.eval_progressed.emit},
            )

        self._run("speed", job)

    def _run(self, kind: str, job: Any) -> None:
        try:
            future = self._engine.run_exclusive(job)
        except EngineError as exc:
            self.failed.emit(kind, str(exc))
            return
        self.busy_changed.emit(True)

        def done(fut: Future[Any]) -> None:  # runs on the engine thread
            self.busy_changed.emit(False)
            exc = fut.exception()
            if exc is None:
                self.eval_finished.emit(kind, fut.result())
            else:
                self.failed.emit(kind, str(exc) or type(exc).__name__)

        future.add_done_callback(done)

    # ---- stopping ----------------------------------------------------------------------------
    def cancel(self) -> None:
        job = self._job
        if job is not None:
            job.cancel()
        self._engine.cancel()

    def shutdown(self) -> None:
        """Stop a running quantization and wait for its child, so no process outlives the window."""
        self._starter.shutdown(wait=True)
        job = self._job
        if job is not None:
            job.cancel()
            try:
                job.wait(timeout=30)
            except QuantizeError:
                pass  # cancelled: the temporary file is already gone
