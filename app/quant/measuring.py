"""What the target-size quantizer and the advisor share: how they run measurements and quantizations,
how they stop, and what a quantizer dry run says about each tensor.

Measurements (perplexity with the base's log-probabilities saved, KL divergence, speed, an
importance matrix) are workflow steps (app.quant.workflow) run by an `EvalRunner`: the command
line's and the window's run them in the engine host (app.engine.quant_steps), a test or a
benchmark script may run them in its own process (`LocalEvalRunner`). Quantizations run in the
quantizer's child process wherever the caller is (`run_quantize`), as QuantizeJob always does.

`Stop` is the one cancel switch of a long operation: setting it stops the running quantizer child
(its temporary file is deleted) or the running evaluation, and the operation raises
`OperationStopped` at its next check. A Qt bridge calls `Stop.set()` from the GUI thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from app.quality.eval_types import EvalCancelled
from app.quant.plan import QuantizeCancelled, QuantizeError, QuantizeRequest, QuantizeResult
from app.quant.workflow import KLDivergenceStep, PerplexityStep, SpeedStep


class OperationStopped(Exception):
    """The user stopped a target-size quantization or an advice; nothing half-made is left."""


@dataclass(frozen=True)
class ImatrixStep:
    """Compute an importance matrix of `model_path` on a calibration text into `output`."""

    model_path: str
    text_source: str
    output: str
    n_ctx: int = 512
    n_chunks: int | None = None


EvalStep = PerplexityStep | KLDivergenceStep | SpeedStep | ImatrixStep


class EvalRunner(Protocol):
    """Runs one measurement and returns its result (PerplexityResult, KLDivergenceResult,
    SpeedResult, or the path of the matrix for an ImatrixStep); raises EvalCancelled when stopped
    and EvalError (or a subclass) with a message for the user when it fails. `cancel` may be
    called from any thread."""

    def run(self, step: EvalStep, on_progress: Callable[[Any], None] | None = None) -> Any: ...

    def cancel(self) -> None: ...


class Stop:
    """The cancel switch: `set()` from any thread stops what runs and every later step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._stoppers: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            stoppers = list(self._stoppers)
        for stop in stoppers:
            stop()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise OperationStopped("Stopped; nothing half-made was kept.")

    @contextlib.contextmanager
    def stopping(self, stop: Callable[[], None]) -> Iterator[None]:
        """While inside, `set()` also calls `stop` (once registered, a Stop that came before runs it
        at once)."""
        with self._lock:
            self._stoppers.append(stop)
            already = self._event.is_set()
        if already:
            stop()
        try:
            yield
        finally:
            with self._lock:
                self._stoppers.remove(stop)


def run_quantize(
    request: QuantizeRequest, stop: Stop, *, on_log: Callable[[str], None] | None = None
) -> QuantizeResult:
    """One quantization in the quantizer's child; a Stop kills the child and deletes its file."""
    from app.quant.quantize import QuantizeJob

    stop.check()
    job = QuantizeJob(request, on_log=on_log)
    with stop.stopping(job.cancel):
        job.start()
        try:
            return job.wait()
        except QuantizeCancelled:
            raise OperationStopped("Stopped; the quantization in progress was deleted.") from None


def run_eval(
    runner: EvalRunner, step: EvalStep, stop: Stop, on_progress: Callable[[Any], None] | None
) -> Any:
    """One measurement through `runner`; a Stop cancels it."""
    stop.check()
    with stop.stopping(runner.cancel):
        try:
            return runner.run(step, on_progress)
        except EvalCancelled:
            raise OperationStopped("Stopped.") from None


def remove_quietly(path: str | None) -> None:
    if path is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# ---- what a dry run says, tensor by tensor --------------------------------------------------------
GGUF_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: every tensor's data starts on a multiple of it


@dataclass(frozen=True)
class TensorPlan:
    """One tensor as the quantizer would write it: its type and its exact size in bytes."""

    name: str
    type_name: str  # ggml's name, upper case: "Q5_0", "F32"
    n_bytes: int

    @property
    def padded_bytes(self) -> int:
        return -(-self.n_bytes // GGUF_ALIGNMENT) * GGUF_ALIGNMENT


def dry_run(request: QuantizeRequest, stop: Stop) -> tuple[TensorPlan, ...]:
    """The quantizer's dry run of `request` (nothing written): each tensor's type, fallbacks
    included, and its exact size."""
    result = run_quantize(dataclasses.replace(request, dry_run=True), stop)
    if not result.tensors:
        raise QuantizeError("The quantizer's dry run reported no tensors.")
    return tuple(TensorPlan(t.name, t.target_type.upper(), t.target_bytes) for t in result.tensors)


class LocalEvalRunner:
    """Runs measurements in this process (tests and benchmark scripts; the command line and the
    window use the engine host instead). Speed figures use `speed_repetitions` and `n_threads`."""

    def __init__(self, *, n_threads: int | None = None) -> None:
        self._cancel = threading.Event()
        self._n_threads = n_threads

    def cancel(self) -> None:
        self._cancel.set()

    def run(self, step: EvalStep, on_progress: Callable[[Any], None] | None = None) -> Any:
        from app.quality.compare import measure_speed
        from app.quality.eval_text import load_text
        from app.quality.kl_divergence import evaluate_kl_divergence
        from app.quality.perplexity import evaluate_perplexity

        self._cancel.clear()
        if isinstance(step, PerplexityStep):
            if step.save_logits is not None:
                os.makedirs(os.path.dirname(step.save_logits), exist_ok=True)
            return evaluate_perplexity(
                step.model_path,
                load_text(step.text_source),
                step.settings,
                save_logits=step.save_logits,
                cancel=self._cancel,
                on_progress=on_progress,
            )
        if isinstance(step, KLDivergenceStep):
            return evaluate_kl_divergence(
                step.model_path, step.logits_file, step.settings, cancel=self._cancel, on_progress=on_progress
            )
        if isinstance(step, SpeedStep):
            return measure_speed(
                step.model_path,
                n_prompt=step.n_prompt,
                n_gen=step.n_gen,
                repetitions=step.repetitions,
                n_threads=self._n_threads,
                cancel=self._cancel,
                on_progress=on_progress,
            )
        return compute_imatrix_step(step, self._cancel, on_progress)


# The importance-matrix computation's host job and its arguments for an ImatrixStep.
IMATRIX_JOB = "app.quant.imatrix_compute:compute_imatrix"


def imatrix_job_arguments(step: ImatrixStep) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(model, calibration text, output), {n_ctx, n_chunks}; "calibration" names the shipped text."""
    from app.quant.imatrix_compute import calibration_text

    return (step.model_path, calibration_text(step.text_source), step.output), {
        "n_ctx": step.n_ctx,
        "n_chunks": step.n_chunks,
    }


def compute_imatrix_step(
    step: ImatrixStep, cancel: threading.Event, on_progress: Callable[[Any], None] | None
) -> str:
    """An ImatrixStep computed in this process; returns the matrix file's path."""
    import importlib

    module, _, name = IMATRIX_JOB.partition(":")
    args, kwargs = imatrix_job_arguments(step)
    result = getattr(importlib.import_module(module), name)(
        *args, cancel=cancel, on_progress=on_progress, **kwargs
    )
    return str(getattr(result, "path", result))


__all__ = [
    "EvalRunner",
    "EvalStep",
    "GGUF_ALIGNMENT",
    "ImatrixStep",
    "LocalEvalRunner",
    "OperationStopped",
    "Stop",
    "TensorPlan",
    "dry_run",
    "remove_quietly",
    "run_eval",
    "run_quantize",
]
