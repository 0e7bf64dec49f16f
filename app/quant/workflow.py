"""The quantization workflow: a base, its quantized variants, each measured against the base, compared.

`QuantWorkflow` holds the workflow's state (the base and where its log-probabilities are, every
file measured so far, the steps still to run) and makes its decisions (what to measure a file
with, what runs next, when a model becomes the base). It runs nothing itself and starts no
thread: a driver asks it for a step, runs the step the way it runs jobs (the GUI's bridge in the
engine host, a script in-process), hands the result back with `record`, and gets the next step,
or None when the workflow is done:

    step = workflow.compare(base, requests, text, settings)
    while step is not None:
        step = workflow.record(run(step))
    rows = workflow.comparison.rows

A failed or cancelled step ends the workflow (`failed`): what the remaining steps would measure
depends on the step that failed. Measurements recorded before stay in the comparison. A queue of
quantizations (`quantize_queue`) is the exception: its items do not depend on each other, so a
failed item is marked failed and the next one runs; a cancelled one ends the queue, and the items
still waiting are marked cancelled. `queue` tells each item's state, for a view to show.

Files move. A file asked to be measured or made the base that is no longer there is refused at
once (EvalError), before any step runs. A base whose file moved or was deleted after it was
measured still serves: KL divergence needs only the log-probabilities saved then, which live in
the cache folder. `base_note` says so, and says when those are gone too.

It lives in app.quant, above app.quality, because choosing a quantization is the quantization
feature's job and quality is its measuring instrument: perplexity, KL divergence and speed
measure any model and need nothing from the quantizer, while this workflow quantizes and then
judges what it made with them.

Paths are compared as absolute paths: the GUI hands in the path it lists, llama.cpp's results
carry the absolute one.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from app.quality.compare import (
    Comparison,
    SpeedResult,
    VariantMeasurement,
    build_comparison,
    quality_score,
    variant_from_file,
)
from app.quality.eval_types import EvalError, EvalSettings, KLDivergenceResult, PerplexityResult
from app.quant.plan import QuantizeRequest, QuantizeResult


# ---- steps: what the driver runs next ------------------------------------------------------------
@dataclass(frozen=True)
class QuantizeStep:
    """Quantize (app.quant.quantize.QuantizeJob); answer with its QuantizeResult."""

    request: QuantizeRequest


@dataclass(frozen=True)
class PerplexityStep:
    """Perplexity of a model on a text (app.quality's evaluate_perplexity); answer with its
    PerplexityResult. With `save_logits` the model is being made the base: the run keeps its
    log-probabilities there, and the folder may not exist yet (the driver creates it, off any
    GUI thread)."""

    model_path: str
    text_source: str  # a text file, or "default" (app.quality.eval_text.load_text)
    settings: EvalSettings
    save_logits: str | None = None


@dataclass(frozen=True)
class KLDivergenceStep:
    """KL divergence of a model from the base's saved log-probabilities (app.quality's
    evaluate_kl_divergence; the file holds the tokens, so no text); answer with its
    KLDivergenceResult."""

    model_path: str
    logits_file: str
    settings: EvalSettings


@dataclass(frozen=True)
class SpeedStep:
    """llama-bench-style speed (app.quality.compare.measure_speed); answer with its SpeedResult.

    Smaller than llama-bench's 512-token prompt and 64 generated tokens so that measuring every
    variant stays quick: the figures rank variants of one model on this machine.
    """

    model_path: str
    n_prompt: int = 256
    n_gen: int = 32
    repetitions: int = 3


Step: TypeAlias = QuantizeStep | PerplexityStep | KLDivergenceStep | SpeedStep
Measurement: TypeAlias = PerplexityResult | KLDivergenceResult | SpeedResult
Outcome: TypeAlias = QuantizeResult | PerplexityResult | KLDivergenceResult | SpeedResult


class QueueState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class QueueItem:
    """One quantization of a queue and how far it got: its result when done, the reason when it
    failed or was cancelled."""

    request: QuantizeRequest
    state: QueueState = QueueState.QUEUED
    result: QuantizeResult | None = None
    reason: str = ""


def _key(path: str) -> str:
    return os.path.abspath(path)


def _answers(step: Step | None, outcome: Outcome) -> bool:
    """Whether `outcome` is the result of `step` (and not, say, of a job started elsewhere)."""
    if isinstance(step, QuantizeStep):
        return isinstance(outcome, QuantizeResult) and _key(outcome.source_path) == _key(step.request.source)
    if step is None or isinstance(outcome, QuantizeResult):
        return False
    expected = {
        PerplexityStep: PerplexityResult,
        KLDivergenceStep: KLDivergenceResult,
        SpeedStep: SpeedResult,
    }
    return isinstance(outcome, expected[type(step)]) and _key(outcome.model_path) == _key(step.model_path)


def base_logits_path(logits_folder: str, model_path: str, settings: EvalSettings) -> str:
    """Where a base's log-probabilities go: one file per model and context size, replaced when
    that base is measured again (they are large: n_vocab x scored positions)."""
    stem = os.path.splitext(os.path.basename(model_path))[0]
    return os.path.join(logits_folder, f"{stem}.c{settings.n_ctx}.kld")


class QuantWorkflow:
    """The quantization workflow's state and decisions; see the module docstring.

    Not thread-safe: one driver calls it from one thread (the GUI's, for the window).
    """

    def __init__(self, logits_folder: str) -> None:
        self._logits_folder = logits_folder
        self._base: str | None = None
        self._base_logits: str | None = None
        self._base_result: PerplexityResult | None = None
        self._variants: dict[str, VariantMeasurement] = {}  # by absolute path, in the order first seen
        self._current: Step | None = None
        self._pending: list[Step] = []
        # compare(): how to measure each file the quantize steps make (text source, settings).
        self._measure_quantized: tuple[str, EvalSettings] | None = None
        self._comparison: Comparison | None = None
        # The last queue of quantizations, kept after it ends so that a view can show how each went.
        self._queue: list[QueueItem] = []
        self._queue_index: int | None = None  # the item the current step runs

    # ---- state -------------------------------------------------------------------------------
    @property
    def base(self) -> str | None:
        """The base's path (absolute), once its log-probabilities are saved."""
        return self._base

    @property
    def base_logits(self) -> str | None:
        return self._base_logits

    @property
    def base_result(self) -> PerplexityResult | None:
        """The perplexity run that saved the base's log-probabilities."""
        return self._base_result

    @property
    def current(self) -> Step | None:
        """The step handed out and not answered yet."""
        return self._current

    @property
    def running(self) -> bool:
        return self._current is not None

    @property
    def variants(self) -> tuple[VariantMeasurement, ...]:
        """Every file measured or made so far, the base included."""
        return tuple(self._variants.values())

    @property
    def queue(self) -> tuple[QueueItem, ...]:
        """The last queue of quantizations (`quantize_queue`), each item with its state."""
        return tuple(self._queue)

    @property
    def base_note(self) -> str | None:
        """What has happened to the base since it was measured, in words for the user; None when
        its file and its saved log-probabilities are both where they were. Reads the file system."""
        if self._base is None:
            return None
        name = os.path.basename(self._base)
        logits = self._base_logits is not None and os.path.exists(self._base_logits)
        if not os.path.exists(self._base):
            if logits:
                return (
                    f"{name} has moved or been deleted since it was measured; KL divergence still "
                    "uses the log-probabilities saved then."
                )
            return (
                f"{name} has moved or been deleted, and its saved log-probabilities are gone: "
                "files are measured by perplexity only until a base is set again."
            )
        if not logits:
            return (
                f"The log-probabilities saved for {name} are gone (the cache was cleaned): files are "
                "measured by perplexity only until it is set as base again."
            )
        return None

    @property
    def comparison(self) -> Comparison | None:
        """The base's row then one per other file; None until a file is recorded. Without a base,
        the first file recorded stands in for it (its row is the reference for the others)."""
        return self._comparison

    # ---- what to run -------------------------------------------------------------------------
    def quantize(self, request: QuantizeRequest) -> QuantizeStep:
        """Quantize only: the new file joins the comparison with what its header says, unmeasured."""
        return self.quantize_queue([request])

    def quantize_queue(self, requests: Sequence[QuantizeRequest]) -> QuantizeStep:
        """Quantize each request in turn (quantize only, as `quantize`). One that fails does not stop
        the others; `cancel_queue` stops the rest. Raises ValueError for an empty queue."""
        if not requests:
            raise ValueError("Nothing to quantize: the queue is empty.")
        steps: list[Step] = [QuantizeStep(r) for r in requests]
        self._begin(steps)
        self._queue = [QueueItem(r) for r in requests]
        self._set_queue_item(0, QueueState.RUNNING)
        return QuantizeStep(requests[0])

    def cancel_queue(self) -> None:
        """The items of the queue still waiting will not run; the running one ends when its
        cancelled job reports back (`failed` with `cancelled`)."""
        for i, item in enumerate(self._queue):
            if item.state is QueueState.QUEUED:
                self._queue[i] = dataclasses.replace(item, state=QueueState.CANCELLED)
        self._pending = [s for s in self._pending if not isinstance(s, QuantizeStep)]

    def _set_queue_item(
        self, index: int | None, state: QueueState, result: QuantizeResult | None = None, reason: str = ""
    ) -> None:
        self._queue_index = index if state is QueueState.RUNNING else None
        if index is not None and index < len(self._queue):
            self._queue[index] = dataclasses.replace(
                self._queue[index], state=state, result=result, reason=reason
            )

    def measure_base(self, model_path: str, text_source: str, settings: EvalSettings) -> PerplexityStep:
        """Make `model_path` the base: its perplexity, keeping its log-probabilities, then its speed.

        It becomes the base when that perplexity run has saved them, not before: until then the
        previous base (if any) is still the one the others are compared with. Raises EvalError
        when the file is not there.
        """
        _require_file(model_path)
        first, speed = self._base_steps(model_path, text_source, settings)
        self._begin([first, speed])
        return first

    def measure(self, model_path: str, text_source: str, settings: EvalSettings) -> Step:
        """Measure one file: KL divergence against the base when there is one (its perplexity
        comes with it, over the same tokens), its perplexity on the text otherwise; then speed.
        Raises EvalError when the file is not there."""
        _require_file(model_path)
        steps = self._measure_steps(model_path, text_source, settings)
        self._begin(steps)
        return steps[0]

    def compare(
        self,
        base_path: str,
        requests: Sequence[QuantizeRequest],
        text_source: str,
        settings: EvalSettings,
    ) -> Step:
        """The whole comparison, for a driver that runs unattended: measure the base, then for
        each request quantize and measure the new file against the base."""
        steps: list[Step] = [*self._base_steps(base_path, text_source, settings)]
        steps.extend(QuantizeStep(r) for r in requests)
        self._begin(steps, measure_quantized=(text_source, settings))
        return steps[0]

    def _base_steps(
        self, model_path: str, text_source: str, settings: EvalSettings
    ) -> tuple[PerplexityStep, SpeedStep]:
        logits = base_logits_path(self._logits_folder, model_path, settings)
        return PerplexityStep(model_path, text_source, settings, save_logits=logits), SpeedStep(model_path)

    def _measure_steps(self, model_path: str, text_source: str, settings: EvalSettings) -> list[Step]:
        first: Step
        # The base's file is checked now, not when it was saved: it sits in a cache folder that
        # may have been cleaned since. A file against itself would only confirm KLD = 0.
        if (
            self._base is not None
            and self._base_logits is not None
            and _key(model_path) != self._base
            and os.path.exists(self._base_logits)
        ):
            first = KLDivergenceStep(model_path, self._base_logits, settings)
        else:
            first = PerplexityStep(model_path, text_source, settings)
        return [first, SpeedStep(model_path)]

    def _begin(self, steps: list[Step], measure_quantized: tuple[str, EvalSettings] | None = None) -> None:
        # One workflow at a time: a new request replaces whatever was still to run, a queue included.
        self.cancel_queue()
        if self._queue_index is not None:
            self._set_queue_item(
                self._queue_index, QueueState.CANCELLED, reason="replaced by another request"
            )
        self._current, self._pending = steps[0], steps[1:]
        self._measure_quantized = measure_quantized

    # ---- results -----------------------------------------------------------------------------
    def record(self, outcome: Outcome) -> Step | None:
        """Take a result back; returns the next step to run, or None when there is none.

        Every result is recorded in the comparison, even one of a job this workflow did not hand
        out; only the answer to the current step moves the workflow on. Raises EvalError (and
        changes nothing) when the result's file can no longer be read.
        """
        answered = _answers(self._current, outcome)
        if isinstance(outcome, QuantizeResult):
            # A newly written file replaces anything measured on an earlier file of that name.
            key = _key(outcome.output_path)
            self._variants[key] = variant_from_file(outcome.output_path, label=outcome.label)
            if answered and self._queue_index is not None:
                self._set_queue_item(self._queue_index, QueueState.DONE, result=outcome)
            if answered and self._measure_quantized is not None:
                text_source, settings = self._measure_quantized
                self._pending[:0] = self._measure_steps(outcome.output_path, text_source, settings)
        else:
            key = _key(outcome.model_path)
            variant = self._variants.get(key) or variant_from_file(outcome.model_path)
            self._variants[key] = _with(variant, outcome)
            step = self._current
            if (
                answered
                and isinstance(outcome, PerplexityResult)
                and isinstance(step, PerplexityStep)
                and step.save_logits is not None
                and outcome.logits_file is not None
            ):
                self._base, self._base_logits, self._base_result = key, outcome.logits_file, outcome
        self._comparison = self._build_comparison()
        if not answered:
            return None
        self._current = self._pending.pop(0) if self._pending else None
        self._start_next_queue_item()
        return self._current

    def _start_next_queue_item(self) -> None:
        if isinstance(self._current, QuantizeStep):
            waiting = [i for i, item in enumerate(self._queue) if item.state is QueueState.QUEUED]
            if waiting:
                self._set_queue_item(waiting[0], QueueState.RUNNING)

    def failed(self, reason: str = "", cancelled: bool = False) -> Step | None:
        """The current step failed (or was cancelled): the rest of the workflow is dropped and None
        returned, except in a queue of quantizations that was not cancelled, where the failed item
        is marked failed with `reason` and the next one is returned to run."""
        index = self._queue_index
        if index is None:
            self._current, self._pending, self._measure_quantized = None, [], None
            return None
        self._set_queue_item(index, QueueState.CANCELLED if cancelled else QueueState.FAILED, reason=reason)
        if cancelled:
            self.cancel_queue()
        # Only quantize steps follow in a queue (quantize_queue measures nothing).
        self._current = self._pending.pop(0) if self._pending else None
        self._start_next_queue_item()
        return self._current

    def _build_comparison(self) -> Comparison | None:
        base = self._variants.get(self._base) if self._base is not None else None
        others = [v for k, v in self._variants.items() if k != self._base]
        if base is None:
            if not others:
                return None
            base, others = others[0], others[1:]
            return build_comparison(base, others)
        comparison = build_comparison(base, others)
        # The base against itself, by the definitions in app.quality.compare: KL(p || p) = 0, its own
        # top token always, so its quality score is 100 (not "not measured"). Only for a real base,
        # whose log-probabilities are the reference the others' KLD is measured against.
        row = comparison.rows[0]
        reference = dataclasses.replace(
            row,
            mean_kld=0.0,
            kld_uncertainty=None,
            same_top_p_percent=100.0,
            quality_score=quality_score(0.0),
        )
        return dataclasses.replace(comparison, rows=(reference, *comparison.rows[1:]))


def _require_file(model_path: str) -> None:
    """Refuse at once a file that is not there, rather than after a trip to the engine."""
    if not os.path.isfile(model_path):
        raise EvalError(
            f"Model file not found: {model_path}. It may have been moved, renamed or deleted; "
            "select it again in Model Config."
        )


def _with(variant: VariantMeasurement, measurement: Measurement) -> VariantMeasurement:
    if isinstance(measurement, PerplexityResult):
        return dataclasses.replace(variant, perplexity=measurement)
    if isinstance(measurement, KLDivergenceResult):
        return dataclasses.replace(variant, kld=measurement)
    return dataclasses.replace(variant, speed=measurement)


__all__ = [
    "KLDivergenceStep",
    "Measurement",
    "Outcome",
    "PerplexityStep",
    "QueueItem",
    "QueueState",
    "QuantWorkflow",
    "QuantizeStep",
    "SpeedStep",
    "Step",
    "base_logits_path",
]
