"""`EvalJob`: one evaluation on a named thread of its own, with a cancel event and a future.

The evaluations are plain blocking functions that take a cancel flag; this runs one off the
caller's thread, in the caller's process. The GUI and the command line do not use it: they run
evaluations in the engine host (app.engine.jobs), where a crash inside llama.cpp is a message
rather than the end of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class EvalJob(Generic[T]):
    """Runs one evaluation on its own named thread; cancel() stops it within a decode.

    `fn` receives the job's cancel event. The result (or the exception) arrives on `future`;
    `wait()` returns it and joins the thread.
    """

    def __init__(self, name: str, fn: Callable[[threading.Event], T]) -> None:
        self._fn = fn
        self._cancel = threading.Event()
        self._future: Future[T] = Future()
        self._thread = threading.Thread(target=self._run, name=f"llamascope-eval-{name}", daemon=True)

    @property
    def future(self) -> Future[T]:
        return self._future

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    def start(self) -> EvalJob[T]:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> T:
        try:
            return self._future.result(timeout)
        finally:
            if self._future.done():
                self._thread.join()

    def _run(self) -> None:
        try:
            result = self._fn(self._cancel)
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)


__all__ = ["EvalJob"]
