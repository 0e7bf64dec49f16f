"""The target-size quantizer's and the advisor's measurements, run in the engine host.

`EngineEvalRunner` is the app.quant.measuring.EvalRunner the command line uses (and a Qt bridge
can use from its worker thread): each step takes its turn on the engine (`run_exclusive`), runs as
a host job, and a native crash fails it with a message instead of ending the caller. Quantizations
do not come here: they run in the quantizer's own child process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.engine.jobs import host_call
from app.engine.types import EngineError
from app.quality.eval_text import load_text
from app.quality.eval_types import EvalError
from app.quant.measuring import EvalStep, ImatrixStep
from app.quant.workflow import KLDivergenceStep, PerplexityStep, SpeedStep


class EngineEvalRunner:
    """Runs measurement steps in `engine`'s host, as `owner` (Engine.cancel(owner) stops only them)."""

    def __init__(self, engine: Any, *, owner: str | None = None, n_threads: int | None = None) -> None:
        self._engine = engine
        self._owner = owner
        self._n_threads = n_threads

    def cancel(self) -> None:
        self._engine.cancel(self._owner)

    def run(self, step: EvalStep, on_progress: Callable[[Any], None] | None = None) -> Any:
        function, args, kwargs = self._call(step)
        callbacks = {"on_progress": on_progress} if on_progress is not None else {}
        engine = self._engine
        future = engine.run_exclusive(
            lambda _cancel: host_call(engine, function, *args, callbacks=callbacks, **kwargs),
            owner=self._owner,
            label="measuring quantizations",
        )
        try:
            result = future.result()
        except EngineError as exc:
            raise EvalError(str(exc)) from None
        if isinstance(step, ImatrixStep):  # an ImatrixResult: the runner answers with the file
            return str(getattr(result, "path", result))
        return result

    def _call(self, step: EvalStep) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        if isinstance(step, PerplexityStep):
            if step.save_logits is not None:
                import os

                os.makedirs(os.path.dirname(step.save_logits), exist_ok=True)
            return (
                "app.quality.perplexity:evaluate_perplexity",
                (step.model_path, load_text(step.text_source), step.settings),
                {"save_logits": step.save_logits},
            )
        if isinstance(step, KLDivergenceStep):
            return (
                "app.quality.kl_divergence:evaluate_kl_divergence",
                (step.model_path, step.logits_file, step.settings),
                {},
            )
        if isinstance(step, SpeedStep):
            return (
                "app.quality.compare:measure_speed",
                (step.model_path,),
                {
                    "n_prompt": step.n_prompt,
                    "n_gen": step.n_gen,
                    "repetitions": step.repetitions,
                    "n_threads": self._n_threads,
                },
            )
        assert isinstance(step, ImatrixStep)
        from app.quant.measuring import IMATRIX_JOB, imatrix_job_arguments

        args, kwargs = imatrix_job_arguments(step)
        return IMATRIX_JOB, args, kwargs


__all__ = ["EngineEvalRunner"]
