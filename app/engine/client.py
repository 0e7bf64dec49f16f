"""The engine's client: what the GUI and the CLI hold to run llama.cpp in the engine host.

`Engine` starts the host (app.engine.host) on first use and sends it one request at a time. A
request made while another runs is refused at once with `EngineBusyError`, never queued behind
it. Requests return a `concurrent.futures.Future`; the CLI waits on it, the GUI turns its
completion into a Qt signal. Streaming callbacks (`on_token`, `on_progress`, job events) are
called on the client's worker thread and must not touch widgets. A native crash of the host
fails the running request with `EngineCrashedError`; the next request starts a fresh host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from app.engine.crash_registry import CrashRegistry
from app.engine.host import CANCEL_GRACE_S, HostCancelled, HostClient, HostCrashed, HostError
from app.engine.types import (
    EngineBusyError,
    EngineCrashedError,
    EngineError,
    GenerationRequest,
    LoadProgress,
    LoadResult,
    OperationCancelled,
    RunStats,
    StopReason,
    TokenEvent,
    TokenPiece,
    run_stats,
)
from app.llama.build_check import require_working_build
from app.model.settings import LoadSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Grace for a job to stop after cancel, before the host is ended: a job checks its flag between
# steps, and one step (a chunk, a trial) can take longer than a token.
JOB_CANCEL_GRACE_S = 0.5


class Engine:
    """The app's engine: one worker thread with futures, busy refusal and cancel, in front of an
    engine host process (app.engine.host) where an EngineCore does the llama.cpp work.

    A native crash of the host fails the running request with a message (and, at load, records
    the model in the crash registry); the next request starts a fresh host with nothing loaded.
    """

    def __init__(self, crashes: CrashRegistry | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-engine")
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._cancel = threading.Event()  # for run_exclusive jobs, which run in this process
        self._host = HostClient("app.engine.service:EngineService")
        self._crashes = crashes
        self._loaded: LoadResult | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def loaded(self) -> LoadResult | None:
        return self._loaded

    @property
    def host_pid(self) -> int | None:
        """The engine host's process id while it runs (tests, diagnostics)."""
        return self._host.pid

    def start_host(self) -> None:
        """Start the host process in the background, so the first load does not wait for it."""
        with self._lock:
            if not self._closed:
                self._executor.submit(self._host.start)

    # ---- requests ----------------------------------------------------------------------------
    def load(
        self,
        path: str,
        settings: LoadSettings,
        *,
        override_memory: bool = False,
        on_progress: Callable[[LoadProgress], None] | None = None,
    ) -> Future[LoadResult]:
        """Inspect, check and load a model, replacing any loaded one."""
        return self._submit(self._do_load, path, settings, override_memory, on_progress)

    def unload(self) -> Future[None]:
        return self._submit(self._do_unload)

    def generate(
        self, request: GenerationRequest, on_token: Callable[[TokenEvent], None] | None = None
    ) -> Future[RunStats]:
        return self._submit(self._do_generate, request, on_token)

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> Future[list[TokenPiece]]:
        return self._submit(self._call, "tokenize", text, add_bos, special)

    def detokenize(self, token_ids: Sequence[int], *, special: bool = True) -> Future[str]:
        return self._submit(self._call, "detokenize", [int(t) for t in token_ids], special)

    def clear_kv_cache(self) -> Future[None]:
        return self._submit(self._call, "clear_kv_cache")

    def run_exclusive(self, job: Callable[[threading.Event], T]) -> Future[T]:
        """Run a piece of work (a benchmark, an evaluation) on the engine thread.

        It takes its turn like any request: refused while something else runs, and nothing else
        runs beside it, so measurements are not disturbed. `job` receives the cancel event that
        `cancel()` sets. Its llama.cpp work goes to the host through `call_job_here`
        (app.engine.jobs), never into this process.
        """
        return self._submit(job, self._cancel)

    def run_job(
        self, job: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run llama.cpp work other than generation (a benchmark, an evaluation, a tuning session)
        in the engine host, taking its turn like any request.

        `job` names a function "app.module:function" that takes `cancel` and `emit` keywords (see
        EngineService.run_job); its events reach `on_event(kind, payload)` on the worker thread.
        The host's loaded model stays loaded: a job loads what it measures itself.
        """
        return self._submit(self._call_job, job, args, kwargs, on_event)

    def _call_job(
        self,
        job: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_event: Callable[[str, Any], None] | None,
    ) -> Any:
        # A job stops cooperatively (llama.cpp's abort callback, then its own wrap-up: a tuning
        # session still reports its best trial), so it gets the whole 0.5 s before the host is ended.
        self._host.grace_s = JOB_CANCEL_GRACE_S
        try:
            return self._call("run_job", job, args, kwargs, on_event=on_event)
        finally:
            self._host.grace_s = CANCEL_GRACE_S

    def call_job_here(
        self, job: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Any:
        """`run_job` for code already on the worker thread (a `run_exclusive` job): runs the host
        job and returns its result. A crash becomes EngineCrashedError, a forced stop
        OperationCancelled."""
        if threading.current_thread().name.split("_")[0] != "llamascope-engine":
            raise EngineError("call_job_here is for the engine's worker thread; use run_job")
        return self._call_job(job, args, kwargs, on_event)

    def cancel(self) -> None:
        """Stop the running operation: cooperatively between tokens, inside prompt evaluation and
        mid-load; a host that does not stop within its grace period is ended."""
        self._cancel.set()
        self._host.cancel()

    def shutdown(self) -> None:
        """Cancel what runs, end the host, wait for the worker. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cancel.set()
        self._host.cancel()
        self._host.shutdown()  # ends a call in progress too: the worker then returns at once
        self._executor.shutdown(wait=True)
        self._loaded = None  # it went with the host

    # ---- on the worker thread ----------------------------------------------------------------
    def _call(self, operation: str, *args: Any, on_event: Callable[[str, Any], None] | None = None) -> Any:
        """One host call; a crash or a forced stop becomes an EngineError for the user."""
        try:
            return self._host.call(operation, *args, on_event=on_event)
        except HostCancelled:
            self._loaded = None  # the host was ended: its model is gone
            raise OperationCancelled(
                "Stopped; the engine had to be restarted, so no model is loaded."
            ) from None
        except HostCrashed as exc:
            self._loaded = None
            raise EngineCrashedError(str(exc), exc.signal_text, exc.log_tail) from None
        except HostError as exc:
            raise EngineError(str(exc)) from None

    def _do_load(
        self,
        path: str,
        settings: LoadSettings,
        override_memory: bool,
        on_progress: Callable[[LoadProgress], None] | None,
    ) -> LoadResult:
        require_working_build(EngineError)  # checked here first: a crashing build never starts the host

        def on_event(kind: str, payload: Any) -> None:
            if kind == "load_progress" and on_progress is not None:
                on_progress(payload)

        crashes = self._crash_registry()
        try:
            result: LoadResult = self._call("load", path, settings, override_memory, on_event=on_event)
        except OperationCancelled:
            raise OperationCancelled("Loading was cancelled.") from None
        except EngineCrashedError as exc:
            crashes.record(path, exc.signal_text or "a crash", exc.log_tail)
            raise
        except Exception:
            # A load that failed after the old model was freed leaves nothing loaded: ask the host.
            if self._loaded is not None:
                try:
                    still = self._host.call("is_loaded") if self._host.alive() else False
                except Exception:  # noqa: BLE001 (cannot tell: assume the worst)
                    still = False
                if not still:
                    self._loaded = None
            raise
        self._loaded = result
        crashes.forget(path)  # it loads now: a repaired llama.cpp, or a crash that had another cause
        return result

    def _do_unload(self) -> None:
        self._call("unload")
        self._loaded = None

    def _do_generate(
        self, request: GenerationRequest, on_token: Callable[[TokenEvent], None] | None
    ) -> RunStats:
        t_start_ns = time.monotonic_ns()  # TTFT counts from here: the trip to the host included
        seen: list[TokenEvent] = []

        def on_event(kind: str, payload: Any) -> None:
            if kind != "tokens":
                return
            for event in payload:
                if seen:
                    # A stop waits one token for the host to notice (a slow model's token can take
                    # longer than the default grace) before the host is ended.
                    gap_s = (event.t_ns - seen[-1].t_ns) / 1e9
                    self._host.grace_s = max(self._host.grace_s, min(2 * gap_s, 10.0))
                seen.append(event)
                if on_token is not None:
                    on_token(event)

        self._host.grace_s = CANCEL_GRACE_S
        try:
            return self._call("generate", request, t_start_ns, on_event=on_event)  # type: ignore[no-any-return]
        except OperationCancelled:
            stamps = [e.t_ns for e in seen]
            return run_stats(
                request.chat,
                0,
                stamps,
                t_start_ns,
                time.monotonic_ns(),
                StopReason.CANCELLED,
                "".join(e.text for e in seen),
                0,
                None,
            )
        finally:
            self._host.grace_s = CANCEL_GRACE_S

    def _crash_registry(self) -> CrashRegistry:
        if self._crashes is None:
            self._crashes = CrashRegistry()
        return self._crashes

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise EngineError("The engine has been shut down.")
            if self._busy:
                raise EngineBusyError("The engine is busy with another operation; wait or press Stop.")
            self._busy = True
            self._cancel.clear()
            self._host.clear_cancel()

        def run() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy = False

        return self._executor.submit(run)
