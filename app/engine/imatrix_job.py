"""An importance-matrix computation in the engine host, as a job a Qt bridge or the CLI can drive.

    job = ImatrixJob(engine, ImatrixRequest(model, "calibration", "model.imatrix.gguf"),
                     on_progress=bridge.progress.emit)
    future = job.start()        # returns at once; the work takes its turn on the engine
    job.cancel()                # from any thread: stops it (between chunks and inside a decode)
    result = future.result()    # ImatrixResult, or EvalCancelled / EvalError (message for the user)

The computation (app.quant.imatrix_compute.compute_imatrix) runs in the engine host, so a crash
in llama.cpp fails the future with a message naming it instead of ending the caller. Progress
arrives on the engine's worker thread as app.quality.eval_types.ChunkProgress (phase
"importance matrix", chunk i of n, the running perplexity, tokens per second); a bridge re-emits
it as a signal. The text is read on that thread too, never on the caller's. Nothing is written
unless the whole computation succeeds (a temporary file renamed into place).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from app.engine.jobs import host_call
from app.engine.types import EngineError
from app.quality.eval_types import ChunkProgress, EvalError

IMATRIX_OWNER = "imatrix"
IMATRIX_FUNCTION = "app.quant.imatrix_compute:compute_imatrix"


@dataclass(frozen=True)
class ImatrixRequest:
    """What to compute: llama-imatrix's -m, -f, -o, -c, --chunks, -t, --process-output."""

    model_path: str
    text_source: str | None  # a text file, or None / "calibration" for the shipped calibration text
    output: str
    n_ctx: int = 512
    n_chunks: int | None = None
    n_threads: int | None = None
    process_output: bool = False
    override_memory: bool = False


class ImatrixJob:
    """One importance-matrix computation on `engine` (app.engine.client.Engine), as `owner`."""

    def __init__(
        self,
        engine: Any,
        request: ImatrixRequest,
        *,
        on_progress: Callable[[ChunkProgress], None] | None = None,
        owner: str = IMATRIX_OWNER,
    ) -> None:
        self._engine = engine
        self.request = request
        self._on_progress = on_progress
        self._owner = owner
        self._future: Future[Any] | None = None
        self._lock = threading.Lock()

    @property
    def future(self) -> Future[Any] | None:
        return self._future

    def start(self) -> Future[Any]:
        """Queue the computation on the engine; the future ends with the ImatrixResult. Raises
        EngineBusyError at once when the engine is doing something else."""
        with self._lock:
            if self._future is not None:
                raise EvalError("This importance matrix job has already been started.")
            self._future = self._engine.run_exclusive(
                self._run, owner=self._owner, label="computing an importance matrix"
            )
            return self._future

    def cancel(self) -> bool:
        """Stop it if it runs (only this owner's work); returns whether a stop was asked."""
        return bool(self._engine.cancel(self._owner))

    def _run(self, _cancel: threading.Event) -> Any:
        from app.quant.imatrix_compute import calibration_text

        r = self.request
        text = calibration_text(r.text_source)
        callbacks = {"on_progress": self._on_progress} if self._on_progress is not None else {}
        try:
            return host_call(
                self._engine,
                IMATRIX_FUNCTION,
                r.model_path,
                text,
                r.output,
                callbacks=callbacks,
                n_ctx=r.n_ctx,
                n_chunks=r.n_chunks,
                n_threads=r.n_threads,
                process_output=r.process_output,
                override_memory=r.override_memory,
            )
        except EngineError as exc:  # the host crashed or could not start: a message, as EvalError
            raise EvalError(str(exc)) from None


__all__ = ["IMATRIX_FUNCTION", "IMATRIX_OWNER", "ImatrixJob", "ImatrixRequest"]
