"""The engine's client: what the GUI and the CLI hold to run llama.cpp in the engine host.

`Engine` starts the host (app.engine.host) on first use and sends it one request at a time. A
request made while another runs is refused at once with `EngineBusyError`, never queued behind
it. Requests return a `concurrent.futures.Future`; the CLI waits on it, the GUI turns its
completion into a Qt signal. Streaming callbacks (`on_token`, `on_progress`, job events) are
called on the client's worker thread and must not touch widgets. A native crash of the host
fails the running request with `EngineCrashedError`; the next request starts a fresh host.

Several parts of one app can share an Engine (the GUI's engine and quality bridges). Each names
itself as the `owner` of its requests: `activity` says what runs and for whom, so every part can
tell the user why the engine is taken, and `cancel(owner)` stops only that owner's work. `loaded`
is always what the host holds: a load that failed or was cancelled after the old model was freed,
and a host that ended, even between requests, leave it None, and listeners hear of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from app.engine.crash_registry import CrashRegistry
from app.engine.host import (
    CANCEL_GRACE_S,
    HostCancelled,
    HostClient,
    HostCrashed,
    HostError,
    telling_lines,
)
from app.engine.types import (
    EngineBusyError,
    EngineCrashedError,
    EngineError,
    GenerationRequest,
    LoadProgress,
    LoadResult,
    NoModelLoadedError,
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


@dataclass(frozen=True)
class EngineActivity:
    """What the engine runs now, and for whom."""

    owner: str | None  # who asked (a name the asker chose); None: not told
    label: str  # what runs, in words that follow "The engine is busy …": "generating text"


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
        self._host.on_exit = self._on_host_exit
        self._crashes = crashes
        self._loaded: LoadResult | None = None
        self._loaded_host = 0  # the number of the host (HostClient.starts) that holds _loaded
        self._activity: EngineActivity | None = None
        self._activity_listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[str], None]] = []

    # ---- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def activity(self) -> EngineActivity | None:
        """What runs now and for whom; None when the engine is free."""
        return self._activity

    @property
    def loaded(self) -> LoadResult | None:
        """The model the host holds now; None when it holds none."""
        return self._loaded

    def add_activity_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` is called whenever `activity` changes: on the thread that made the request
        when it starts, on the worker thread when it ends (before its future is resolved). Read
        `activity` then; by the time a queued listener runs, it may have changed again."""
        with self._lock:
            self._activity_listeners.append(listener)

    def add_model_lost_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(message)` is called on a watcher thread when the loaded model went away while
        no request was running (the host ended); `loaded` is None by then. A request that sees the
        host end fails with its own message instead."""
        with self._lock:
            self._lost_listeners.append(listener)

    def remove_listener(self, listener: Callable[..., None]) -> None:
        """Remove an activity or model-lost listener (unknown ones are ignored)."""
        with self._lock:
            for listeners in (self._activity_listeners, self._lost_listeners):
                while listener in listeners:
                    listeners.remove(listener)

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
    # Every request takes `owner` (see EngineActivity; `cancel(owner)` stops only that owner's work)
    # and `label`, what it does in words for anyone told the engine is busy.
    def load(
        self,
        path: str,
        settings: LoadSettings,
        *,
        override_memory: bool = False,
        on_progress: Callable[[LoadProgress], None] | None = None,
        owner: str | None = None,
        label: str | None = None,
    ) -> Future[LoadResult]:
        """Inspect, check and load a model, replacing any loaded one.

        The host frees the loaded model before it loads the new one (both would not fit), after
        the checks that can refuse (file, settings, memory, build): a refusal keeps the old model,
        a failure or a cancel after that point leaves none loaded, and `loaded` says so.
        """
        what = label or f"loading {os.path.basename(path)}"
        return self._submit(
            self._do_load, path, settings, override_memory, on_progress, activity=EngineActivity(owner, what)
        )

    def unload(self, *, owner: str | None = None) -> Future[None]:
        return self._submit(self._do_unload, activity=EngineActivity(owner, "unloading the model"))

    def generate(
        self,
        request: GenerationRequest,
        on_token: Callable[[TokenEvent], None] | None = None,
        *,
        owner: str | None = None,
        label: str | None = None,
    ) -> Future[RunStats]:
        return self._submit(
            self._do_generate, request, on_token, activity=EngineActivity(owner, label or "generating text")
        )

    def tokenize(
        self, text: str, *, add_bos: bool = False, special: bool = True, owner: str | None = None
    ) -> Future[list[TokenPiece]]:
        return self._submit(
            self._call, "tokenize", text, add_bos, special, activity=EngineActivity(owner, "tokenizing")
        )

    def detokenize(
        self, token_ids: Sequence[int], *, special: bool = True, owner: str | None = None
    ) -> Future[str]:
        return self._submit(
            self._call,
            "detokenize",
            [int(t) for t in token_ids],
            special,
            activity=EngineActivity(owner, "detokenizing"),
        )

    def clear_kv_cache(self, *, owner: str | None = None) -> Future[None]:
        return self._submit(
            self._call, "clear_kv_cache", activity=EngineActivity(owner, "clearing the KV cache")
        )

    def run_exclusive(
        self,
        job: Callable[[threading.Event], T],
        *,
        owner: str | None = None,
        label: str = "running a measurement",
    ) -> Future[T]:
        """Run a piece of work (a benchmark, an evaluation) on the engine thread.

        It takes its turn like any request: refused while something else runs, and nothing else
        runs beside it, so measurements are not disturbed. `job` receives the cancel event that
        `cancel()` sets. Its llama.cpp work goes to the host through `call_job_here`
        (app.engine.jobs), never into this process.
        """
        return self._submit(job, self._cancel, activity=EngineActivity(owner, label))

    def run_job(
        self, job: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run llama.cpp work other than generation (a benchmark, an evaluation, a tuning session)
        in the engine host, taking its turn like any request.

        `job` names a function "app.module:function" that takes `cancel` and `emit` keywords (see
        EngineService.run_job); its events reach `on_event(kind, payload)` on the worker thread.
        The host's loaded model stays loaded: a job loads what it measures itself.
        """
        what = f"running {job.rpartition(':')[2]}"
        return self._submit(self._call_job, job, args, kwargs, on_event, activity=EngineActivity(None, what))

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

    def cancel(self, owner: str | None = None) -> bool:
        """Stop the running operation: cooperatively between tokens, inside prompt evaluation and
        mid-load; a host that does not stop within its grace period is ended.

        With `owner`, only an operation that owner asked for is stopped: another part's Stop
        must not end a measurement it did not start. Returns whether a stop was asked.
        """
        with self._lock:  # checked and flagged at once: the next request clears the flags under it
            running = self._activity
            if owner is not None and (running is None or running.owner != owner):
                return False
            self._cancel.set()
            self._host.cancel()
        return True

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

    # ---- the host ending on its own --------------------------------------------------------------
    def _on_host_exit(self, number: int, words: str, log_tail: tuple[str, ...]) -> None:
        """On the host's watcher thread: host `number` ended (not by shutdown)."""
        with self._lock:
            if self._closed or self._loaded is None or self._loaded_host != number:
                return
            self._loaded = None
            idle = not self._busy  # a running request fails with its own message and says it
            listeners = list(self._lost_listeners) if idle else []
        if not listeners:
            return
        said = telling_lines(log_tail)
        message = (
            f"The engine process ended while idle ({words}), so the model it held is no longer "
            "loaded. LlamaScope itself is unaffected: load the model again."
            + ("\nllama.cpp said:\n" + "\n".join(said) if said else "")
        )
        for listener in listeners:
            _tell(listener, message)

    # ---- on the worker thread ----------------------------------------------------------------
    def _call(self, operation: str, *args: Any, on_event: Callable[[str, Any], None] | None = None) -> Any:
        """One host call; a crash or a forced stop becomes an EngineError for the user."""
        if self._loaded is not None and not self._host.alive():
            self._loaded = None  # its host ended (the watcher may not have said so yet): a new one starts
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
        except NoModelLoadedError:
            self._loaded = None  # the host is the truth
            raise
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
            self._recheck_loaded()
            raise OperationCancelled("Loading was cancelled.") from None
        except EngineCrashedError as exc:
            crashes.record(path, exc.signal_text or "a crash", exc.log_tail)
            raise
        except Exception:
            self._recheck_loaded()
            raise
        with self._lock:
            self._loaded, self._loaded_host = result, self._host.starts
        crashes.forget(path)  # it loads now: a repaired llama.cpp, or a crash that had another cause
        return result

    def _recheck_loaded(self) -> None:
        """After a load that did not finish: the host frees the old model before loading the new
        one, so a failure or a cancel after that point leaves none. Ask the host which it was."""
        if self._loaded is None:
            return
        try:
            still = bool(self._host.call("is_loaded")) if self._host.alive() else False
        except Exception:  # noqa: BLE001 (cannot tell: say nothing is loaded, the safe side)
            still = False
        if not still:
            self._loaded = None

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

    def _submit(self, fn: Callable[..., T], *args: Any, activity: EngineActivity) -> Future[T]:
        with self._lock:
            if self._closed:
                raise EngineError("The engine has been shut down.")
            if self._busy:
                what = self._activity.label if self._activity is not None else "with another operation"
                raise EngineBusyError(f"The engine is busy {what}; wait for it to finish or stop it.")
            self._busy = True
            self._activity = activity
            self._cancel.clear()
            self._host.clear_cancel()
        self._activity_changed()

        def run() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy = False
                    self._activity = None
                self._activity_changed()  # before the future resolves: "free" comes before "done"

        return self._executor.submit(run)

    def _activity_changed(self) -> None:
        with self._lock:
            listeners = list(self._activity_listeners)
        for listener in listeners:
            _tell(listener)


def _tell(listener: Callable[..., None], *args: Any) -> None:
    """Call a listener; its failure (a Qt object deleted meanwhile) is logged, never raised into
    the engine's threads."""
    try:
        listener(*args)
    except Exception:  # noqa: BLE001
        log.exception("engine listener failed")
