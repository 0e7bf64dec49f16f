"""Watches llama-server instances off the caller's thread: one reading per server per interval.

Each watched server has its own thread (`llamascope-server-N`), so a server that times out delays
only its own readings. A thread reads, hands the frozen `ServerSnapshot` to the listeners, then
waits out the rest of the interval (at least MIN_INTERVAL_S: a server is asked at most once a
second). Listeners run on the polling thread: the GUI's bridge only emits a signal there.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.server.client import DEFAULT_TIMEOUT_S, ServerClient, ServerError, ServerErrorKind
from app.server.snapshot import ServerReader, ServerSnapshot

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 60.0

Listener = Callable[[ServerSnapshot], None]
_thread_numbers = itertools.count(1)


@dataclass(frozen=True)
class ServerTarget:
    """A server to watch: its URL and optional API key."""

    url: str
    api_key: str | None = None

    def client(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> ServerClient:
        return ServerClient(self.url, self.api_key, timeout_s)


class _Watch:
    def __init__(self, client: ServerClient, interval_s: float, notify: Listener) -> None:
        self.client = client
        self.interval_s = interval_s
        self._notify = notify
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"llamascope-server-{next(_thread_numbers)}", daemon=True
        )

    def _run(self) -> None:
        reader = ServerReader(self.client)
        while not self._stop.is_set():
            started = time.monotonic()
            snapshot = reader.read()
            if self._stop.is_set():
                break  # removed while reading: its listeners no longer expect this server
            self._notify(snapshot)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()


class ServerPoller:
    """A set of watched servers. Thread-safe; `stop()` ends every polling thread."""

    def __init__(self, interval_s: float = MIN_INTERVAL_S, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ServerError(
                ServerErrorKind.BAD_URL,
                f"the polling interval must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} s",
            )
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, callback: Listener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _notify(self, snapshot: ServerSnapshot) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(snapshot)

    @property
    def urls(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._watches)

    def add(self, target: ServerTarget) -> str:
        """Start watching a server; returns its normalized URL. A bad URL raises ServerError;
        a server already watched is not added twice (its key is replaced)."""
        client = target.client(self.timeout_s)
        self.remove(client.url, wait=False)
        watch = _Watch(client, self.interval_s, self._notify)
        with self._lock:
            self._watches[client.url] = watch
        watch.thread.start()
        return client.url

    def remove(self, url: str, *, wait: bool = True) -> None:
        """Stop watching `url`. With wait=False (the GUI thread) the thread ends after its current
        reading, at most the timeout later, without anyone waiting for it."""
        with self._lock:
            watch = self._watches.pop(url, None)
        if watch is not None:
            watch.stop()
            if wait:
                watch.thread.join(timeout=self.timeout_s + 1.0)

    def stop(self, *, wait: bool = True) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.stop()
        if wait:
            for watch in watches:
                watch.thread.join(timeout=self.timeout_s + 1.0)

    def threads(self) -> tuple[threading.Thread, ...]:
        with self._lock:
            return tuple(w.thread for w in self._watches.values())
