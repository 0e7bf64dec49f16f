"""The engine host: a child process that owns llama.cpp, and the client that drives it.

llama.cpp is native code: a crafted model file trips a GGML_ASSERT (SIGABRT), a build uses an
instruction the CPU lacks (SIGILL), a context too large is killed by the kernel. In the process
that runs the window, each of these ends LlamaScope without a word. So every llama.cpp call of
the app runs in one child process, the host; the GUI and the CLI hold a `HostClient`, and a
death of the host becomes an exception naming the operation, the signal in words and the last
lines llama.cpp logged. The next call starts a fresh host.

The protocol is small: the client sends `(operation, args, kwargs)` over a pipe and reads
messages until the result: `("event", kind, payload)` any number of times (load progress, token
batches, benchmark results), then `("result", value)` or `("error", module, class, message)`.
Everything that crosses is plain picklable data. One call runs at a time (the Engine's worker
thread is the only caller), so no request ids are needed.

A host that ends while no call runs (killed from outside, a crash in a thread of llama.cpp's) is
seen by a watcher thread, `llamascope-host-watch`, one per host, which tells `on_exit`: whoever
keeps state in the host (the Engine's loaded model) learns at once that it is gone.

Stopping: `cancel()` raises a flag in shared memory that the host's abort and progress callbacks
read between graph nodes and tokens (a plain memory read, no lock), and, if the call has not
ended after `CANCEL_GRACE_S`, ends the host. The host never outlives the client's process: it
watches a second pipe (the lifeline) on a thread and exits when the client's end closes, which the
OS does when the client dies, even by kill -9.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.sharedctypes
import os
import re
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from app.llama.build_check import describe_exit, signal_in_words

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 0.3  # cooperative stop first; then the host is ended (Stop within 0.5 s)
SHUTDOWN_GRACE_S = 1.0
LOG_TAIL_LINES = 8
TEST_HOOKS_ENV = "LLAMASCOPE_TEST_HOOKS"  # "1": the host accepts `_test_crash` (tests only)
_LIFELINE_EXIT = 70  # the host's exit status when its client went away


class HostError(Exception):
    """A host operation failed; the message is meant for the user."""


class HostCrashed(HostError):
    """The host process died during an operation (a native crash, or killed)."""

    def __init__(self, message: str, signal_text: str | None, log_tail: tuple[str, ...]) -> None:
        super().__init__(message)
        self.signal_text = signal_text
        self.log_tail = log_tail


class HostCancelled(HostError):
    """The operation was stopped by ending the host after the grace period."""


class SharedFlag:
    """A flag both processes read and write: one int in shared memory, read without a lock
    (llama.cpp's abort callback polls it once per graph node)."""

    def __init__(self, value: Any = None) -> None:
        self._value = (
            value if value is not None else multiprocessing.get_context("spawn").RawValue(ctypes.c_int, 0)
        )

    def set(self) -> None:
        self._value.value = 1

    def clear(self) -> None:
        self._value.value = 0

    def is_set(self) -> bool:
        return bool(self._value.value)

    def raw(self) -> Any:
        return self._value


@dataclass
class HostContext:
    """What a service in the host gets: the cancel flag and a way to send events to the client."""

    cancel: SharedFlag
    emit: Callable[[str, Any], None]
    log_path: str


# ---- the host process --------------------------------------------------------------------------


def _watch_lifeline(lifeline: multiprocessing.connection.Connection) -> None:
    try:
        lifeline.recv()  # nothing is ever sent: this returns only when the client's end closes
    except (EOFError, OSError):
        pass
    os._exit(_LIFELINE_EXIT)  # no clean-up: the client is gone, and llama.cpp may be mid-call


def _load_service(spec: str, context: HostContext) -> Any:
    module_name, _, class_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), class_name)(context)


def host_main(
    conn: multiprocessing.connection.Connection,
    lifeline: multiprocessing.connection.Connection,
    cancel_value: Any,
    log_path: str,
    service_spec: str,
) -> None:
    """The host's whole life: serve calls until told to exit or the client goes away."""
    threading.Thread(
        target=_watch_lifeline, args=(lifeline,), name="llamascope-lifeline", daemon=True
    ).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the client's to handle
    # A failed GGML_ASSERT prints its message to stderr, not to the log callback, then would attach
    # gdb for a backtrace (seconds, and noise): keep the message, skip the backtrace.
    os.environ["GGML_NO_BACKTRACE"] = "1"
    log_file = open(log_path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
    os.dup2(log_file.fileno(), 2)
    from app.llama import runtime as llama_runtime

    llama_runtime.echo_log_to(log_file)  # line by line: what was logged survives a crash
    context = HostContext(
        SharedFlag(cancel_value), lambda kind, payload: conn.send(("event", kind, payload)), log_path
    )
    service = _load_service(service_spec, context)
    while True:
        try:
            operation, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        if operation == "__exit__":
            break
        try:
            if operation == "_test_crash":
                _test_crash(*args)
            if operation.startswith("_"):
                raise HostError(f"unknown host operation {operation!r}")
            result = getattr(service, operation)(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (every failure goes back to the client as a message)
            try:
                conn.send(("error", type(exc).__module__, type(exc).__qualname__, str(exc), vars(exc)))
            except Exception:  # noqa: BLE001 (its attributes may not pickle: the message alone then)
                conn.send(("error", type(exc).__module__, type(exc).__qualname__, str(exc), {}))
            continue
        try:
            conn.send(("result", result))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", "", "HostError", f"the result of {operation} could not be sent back: {exc}"))
    close = getattr(service, "close", None)
    if close is not None:
        close()


def _test_crash(how: str = "abort") -> None:
    """Die the way native code dies (tests only, with LLAMASCOPE_TEST_HOOKS=1)."""
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        raise HostError("test hooks are off")
    if how == "abort":
        ctypes.CDLL(None).abort()  # SIGABRT from C, as a failed GGML_ASSERT does
    elif how == "segv":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    else:
        os.kill(os.getpid(), getattr(signal, how))


# ---- the client --------------------------------------------------------------------------------


def _rebuild_exception(module: str, name: str, message: str, state: dict[str, Any]) -> BaseException:
    """The host's exception as the same class on this side, when it is one of LlamaScope's own.

    Built without calling its __init__ (whose arguments differ from class to class): the message
    and the attributes the host sent are put in place directly.
    """
    if module == "app" or module.startswith("app."):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, Exception):
            exc = cls.__new__(cls)
            exc.args = (message,)
            exc.__dict__.update(state)
            return exc
    if name == "MemoryError":
        return MemoryError(message)
    return HostError(message)


class HostClient:
    """Drives one engine host; starts it on first use and again after it died.

    `call` blocks and is meant for one caller thread at a time (the Engine's worker thread);
    `cancel`, `kill` and `shutdown` may be called from any thread.
    """

    def __init__(self, service_spec: str, *, name: str = "engine host") -> None:
        self._spec = service_spec
        self._name = name
        self._ctx = multiprocessing.get_context("spawn")
        self.cancel_flag = SharedFlag(self._ctx.RawValue(ctypes.c_int, 0))
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._lifeline: multiprocessing.connection.Connection | None = None
        self._log_path: str | None = None
        self._in_call = threading.Event()
        self._idle = threading.Event()  # the opposite of _in_call, to wait on
        self._idle.set()
        self.grace_s = CANCEL_GRACE_S  # how long `cancel` waits for a cooperative stop; callers may widen it
        self._killed_for_cancel = False
        self._kill_timer: threading.Timer | None = None
        self.starts = 0  # how many hosts this client has started; the running one is number `starts`
        # Told on the host's watcher thread whenever a host ends, except by shutdown(): (its number,
        # how it ended in words, its last log lines). A call that sees the end raises as well.
        self.on_exit: Callable[[int, str, tuple[str, ...]], None] | None = None
        self._ended_on_purpose: set[int] = set()  # numbers of the hosts shutdown() ended
        self._ends: dict[int, tuple[str, tuple[str, ...]]] = {}  # how a host a call saw die ended
        # One thread at a time reaps an ended host: two waitpid calls race, and the loser would read
        # no exit status and report "its connection broke" instead of the signal.
        self._reap_lock = threading.Lock()

    # ---- life ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        """Start the host now (the first call would otherwise pay for it)."""
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                return
            self._cleanup_locked()
            fd, self._log_path = tempfile.mkstemp(prefix="llamascope-host-", suffix=".log")
            os.close(fd)
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
            lifeline_r, lifeline_w = self._ctx.Pipe(duplex=False)
            # The cancel flag is left as it is: a Stop pressed before this start still counts.
            proc = self._ctx.Process(
                target=host_main,
                args=(child_conn, lifeline_r, self.cancel_flag.raw(), self._log_path, self._spec),
                name="llamascope-engine-host",
                daemon=True,  # ended by multiprocessing at a normal exit of this process
            )
            proc.start()
            # Only the host holds these ends now. The lifeline's write end stays here, unused, until
            # this process ends: then the OS closes it and the host's read returns.
            child_conn.close()
            lifeline_r.close()
            self._proc, self._conn, self._lifeline = proc, parent_conn, lifeline_w
            self.starts += 1
            # The watcher waits on its own copy of the exit sentinel: _cleanup may close the
            # process's while the watcher has not reached its wait yet.
            watched = os.dup(proc.sentinel)
            threading.Thread(
                target=self._watch,
                args=(self.starts, proc, watched),
                name="llamascope-host-watch",
                daemon=True,
            ).start()

    def _watch(self, number: int, proc: Any, sentinel: int) -> None:
        """On the watcher thread: wait for host `number` to end, then tell `on_exit`."""
        try:
            multiprocessing.connection.wait([sentinel])
        finally:
            os.close(sentinel)
        if number in self._ended_on_purpose:
            return
        callback = self.on_exit
        if callback is None:
            return
        with self._reap_lock:
            try:
                proc.join(
                    timeout=2.0
                )  # the sentinel is ready as the process exits, just before it can be reaped
                code = proc.exitcode
            except ValueError:  # already closed by _cleanup: a call saw the end and noted it first
                code = None
        noted = self._ends.get(number)  # a call that saw the end reaped it and read its log
        if noted is not None and code is None:
            words, tail = noted
        else:
            words = _exit_words(code)
            tail = noted[1] if noted is not None else self.log_tail() if number == self.starts else ()
        try:
            callback(number, words, tail)
        except Exception:  # noqa: BLE001 (a listener's bug must not kill the watcher silently)
            log.exception("host exit listener failed")

    def call(
        self, operation: str, *args: Any, on_event: Callable[[str, Any], None] | None = None, **kwargs: Any
    ) -> Any:
        """Run `operation` in the host and return its result; events go to `on_event` meanwhile.

        Raises the host's exception (LlamaScope's own classes keep their class), `HostCrashed` if
        the host died, `HostCancelled` if a cancel had to end it.
        """
        self.start()
        conn = self._conn
        assert conn is not None
        self._killed_for_cancel = False
        self._idle.clear()
        self._in_call.set()
        if self.cancel_flag.is_set():
            # A Stop that came between the request and this call: the call may not reach a point
            # that polls the flag for a while (a load, a first measurement), so the grace timer
            # that ends the host must run for it too.
            self.cancel()
        try:
            try:
                conn.send((operation, args, kwargs))
                while True:
                    message = conn.recv()
                    if message[0] == "event":
                        if on_event is not None:
                            on_event(message[1], message[2])
                        continue
                    if message[0] == "result":
                        return message[1]
                    raise _rebuild_exception(*message[1:5])
            except (EOFError, OSError, BrokenPipeError):
                raise self._death(operation, args) from None
        finally:
            self._in_call.clear()
            self._idle.set()
            self._cancel_kill_timer()

    def _death(self, operation: str, args: tuple[Any, ...]) -> HostError:
        proc = self._proc
        with self._reap_lock:
            if proc is not None:
                proc.join(timeout=2.0)
            code = proc.exitcode if proc is not None else None
        tail = self.log_tail()
        self._ends[self.starts] = (_exit_words(code), tail)  # for the watcher, which may come after _cleanup
        self._cleanup()
        if self._killed_for_cancel:
            return HostCancelled("Stopped.")
        what = _describe_operation(operation, args)
        words = _exit_words(code)
        shown = telling_lines(tail)
        last = ("\nllama.cpp said:\n" + "\n".join(shown)) if shown else ""
        return HostCrashed(
            f"llama.cpp crashed while {what}: {words}. LlamaScope itself is unaffected; the next "
            f"request starts a fresh engine.{last}",
            words,
            tail,
        )

    def log_tail(self, n: int = LOG_TAIL_LINES) -> tuple[str, ...]:
        path = self._log_path
        if not path:
            return ()
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return tuple(line.rstrip("\n") for line in deque(f, maxlen=n) if line.strip())
        except OSError:
            return ()

    # ---- stopping -----------------------------------------------------------------------------
    def cancel(self, grace_s: float | None = None) -> None:
        """Ask the running call to stop; end the host if it has not stopped after `grace_s`
        (default: the `grace_s` attribute)."""
        grace_s = self.grace_s if grace_s is None else grace_s
        self.cancel_flag.set()
        if not self._in_call.is_set():
            return
        with self._lock:
            if self._kill_timer is None:
                self._kill_timer = threading.Timer(grace_s, self._kill_if_still_busy)
                self._kill_timer.name = "llamascope-host-cancel"
                self._kill_timer.daemon = True
                self._kill_timer.start()

    def clear_cancel(self) -> None:
        self.cancel_flag.clear()

    def _kill_if_still_busy(self) -> None:
        if self._in_call.is_set():
            log.info("%s did not stop within the grace period: ending it", self._name)
            self._killed_for_cancel = True
            self.kill()

    def _cancel_kill_timer(self) -> None:
        with self._lock:
            timer, self._kill_timer = self._kill_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()

    def kill(self) -> None:
        """End the host at once (SIGKILL); a running call raises."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Ask the host to exit, end it after `grace_s`, and release everything."""
        self.cancel_flag.set()
        self._cancel_kill_timer()
        proc, conn = self._proc, self._conn
        self._ended_on_purpose.add(self.starts)
        if proc is not None and proc.is_alive():
            deadline = time.monotonic() + grace_s
            # A running call stops at its next cancel check and its caller reads the result; the
            # host can then be asked to exit instead of being killed.
            if self._idle.wait(grace_s) and conn is not None:
                try:
                    conn.send(("__exit__", (), {}))
                except OSError:
                    pass
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2.0)
        self._cleanup()

    def _cleanup(self) -> None:
        with self._lock:
            self._cleanup_locked()

    def _cleanup_locked(self) -> None:
        for conn in (self._conn, self._lifeline):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._conn = self._lifeline = None
        if self._proc is not None:
            if not self._proc.is_alive():
                self._proc.close()
            self._proc = None
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None


def _exit_words(code: int | None) -> str:
    """How a host ended, in words: "aborted by an assertion in llama.cpp (SIGABRT)", "it exited with
    status 3"."""
    if code is None:
        return "its connection broke"
    if code < 0:
        return describe_exit(code) or signal_in_words(-code)
    return f"it exited with status {code}"


_TELLING = re.compile(r"GGML_ASSERT|error|failed|abort|exception", re.IGNORECASE)
_SOURCE_PREFIX = re.compile(r"\S*/(?=(?:vendor/)?llama\.cpp/)")  # the build machine's path to the sources


def telling_lines(tail: tuple[str, ...], n: int = 3) -> list[str]:
    """The lines of a crashed host's log that say what went wrong (an assertion, an error), else
    its last few; source paths shortened to llama.cpp/…"""
    telling = [line for line in tail if _TELLING.search(line)] or list(tail)
    return [_SOURCE_PREFIX.sub("", line).removeprefix("vendor/") for line in telling[-n:]]


def _describe_operation(operation: str, args: tuple[Any, ...]) -> str:
    def paths(value: Any) -> Iterator[str]:
        if isinstance(value, str) and value.lower().endswith(".gguf"):
            yield value
        elif isinstance(value, (tuple, list)):
            for item in value:
                yield from paths(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                yield from paths(getattr(value, f.name))

    model = next(paths(args), None)
    words = {
        "load": "loading",
        "generate": "generating",
        "tokenize": "tokenizing",
        "detokenize": "detokenizing",
        "unload": "unloading the model",
        "_test_crash": "running a test crash",
    }.get(operation, operation)
    if operation == "run_job" and args:
        job = str(args[0]).rpartition(":")[2]
        if job in ("run_progress_job", "run_plain_job") and len(args) > 1 and args[1]:  # the function it runs
            job = str(args[1][0]).rpartition(":")[2]
        words = JOB_WORDS.get(job, f"running {job}")
    return f"{words} {model}" if model else words


# What each host job is doing, for a crash message ("llama.cpp crashed while <words> <model>").
JOB_WORDS = {
    "run_benchmark_job": "benchmarking",
    "tune": "auto-tuning",
    "run_tuner": "auto-tuning",
    "evaluate_perplexity": "measuring the perplexity of",
    "evaluate_kl_divergence": "measuring the KL divergence of",
    "evaluate_against_base": "comparing against the base",
    "run_benchmark_file": "running the multiple-choice benchmark on",
    "measure_speed": "measuring the speed of",
    "check_same_vocabulary": "reading the vocabularies of",
    "plan_perplexity": "tokenizing the evaluation text for",
}
