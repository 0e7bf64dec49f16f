"""The live sampler: a named thread that reads the hardware on a schedule that does not drift.

`Sampler` calls a collector (app.telemetry.collector) every interval, computing the next
deadline from the schedule rather than from the last wake-up, and hands each `Snapshot` to its
listeners on the sampler thread (a GUI bridges them into signals). `stop()` wakes and joins it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from app.telemetry.collector import Collector, SnapshotCollector
from app.telemetry.snapshot import Snapshot
from app.telemetry.sysfs import (
    LogOnce,
)

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 5.0
DEFAULT_INTERVAL_S = 0.5
THREAD_NAME = "llamascope-telemetry"


def clamp_interval(seconds: float) -> float:
    if not math.isfinite(seconds):
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, float(seconds)))


def next_deadline(anchor: float, ticks: int, interval: float, now: float) -> tuple[float, int, float]:
    """The next tick on the schedule anchor + k x interval after tick number `ticks`.

    Returns (anchor, k, deadline). The deadline never drifts with the time each tick takes; a
    tick that fell behind (a slow source, a suspended machine) skips the missed slots instead of
    firing a burst, and a clock that went backwards re-anchors the schedule at `now`.
    """
    if now < anchor:
        return now, 1, now + interval
    k = ticks + 1
    deadline = anchor + k * interval
    if deadline <= now:
        k = math.floor((now - anchor) / interval) + 1
        deadline = anchor + k * interval
    return anchor, k, deadline


Listener = Callable[[Snapshot], None]


class Sampler:
    """Collects a snapshot every `interval_s` on its own thread and passes it to the listeners.

    Listeners are called on the sampler thread, in the order they were added; one that raises is
    logged once and keeps its place. `stop()` joins the thread.
    """

    def __init__(
        self,
        collector: Collector | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        name: str = THREAD_NAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collector = collector
        self._interval = clamp_interval(interval_s)
        self._name = name
        self._clock = clock
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Snapshot | None = None
        self._log_once = LogOnce(log)
        self.ticks = 0

    # ---- control (any thread) ----------------------------------------------------------------
    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def latest(self) -> Snapshot | None:
        """The most recent snapshot, or None before the first tick."""
        return self._latest

    def set_interval(self, seconds: float) -> None:
        """Change the rate (clamped to 0.1-5 s); a running sampler takes it from the next tick."""
        with self._lock:
            self._interval = clamp_interval(seconds)
        self._wake.set()

    def add_listener(self, callback: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, callback)

    def remove_listener(self, callback: Listener) -> None:
        with self._lock:
            listeners = list(self._listeners)
            if callback in listeners:
                listeners.remove(callback)
            self._listeners = tuple(listeners)

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the thread (a tick in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("telemetry sampler did not stop within %.0f s", timeout_s)
        self._thread = None

    # ---- the loop (sampler thread) -----------------------------------------------------------
    def _run(self) -> None:
        if self._collector is None:
            self._collector = self._safe_build_collector()
        interval = self._interval
        anchor = self._clock()
        ticks = 0
        while not self._stop.is_set():
            tick_t = self._clock()
            self._tick()
            anchor, ticks, deadline = next_deadline(anchor, ticks, interval, self._clock())
            while not self._stop.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                if self._wake.is_set():
                    self._wake.clear()
                    with self._lock:
                        new_interval = self._interval
                    if new_interval != interval:
                        # Restart the schedule from the last tick at the new rate.
                        interval, anchor, ticks = new_interval, tick_t, 0
                        anchor, ticks, deadline = next_deadline(anchor, ticks, interval, self._clock())

    def _safe_build_collector(self) -> Collector | None:
        try:
            return SnapshotCollector()
        except Exception as exc:
            log.warning("telemetry collector could not start: %s", exc)
            return None

    def _tick(self) -> None:
        collector = self._collector
        if collector is None:
            return
        try:
            snapshot = collector.collect()
        except Exception as exc:  # reported once per kind; the loop goes on
            self._log_once(
                ("collect", type(exc).__name__, str(exc)),
                logging.WARNING,
                "telemetry tick failed: %s: %s",
                type(exc).__name__,
                exc,
            )
            return
        self._latest = snapshot
        self.ticks += 1
        with self._lock:
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(snapshot)
            except Exception as exc:
                self._log_once(
                    ("listener", id(listener), type(exc).__name__),
                    logging.WARNING,
                    "telemetry listener %r failed: %s: %s",
                    listener,
                    type(exc).__name__,
                    exc,
                )
