"""Turns the telemetry sampler's callbacks and the hardware detection into Qt signals.

The sampler calls its listeners on its own thread; `snapshot_received` carries each snapshot to
the GUI thread (queued). Detection calls llama.cpp and NVML and reads /proc, so it runs on a
worker thread too. While the window is minimised the sampler slows down; nothing stops sampling
except `shutdown()`, which joins both threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PySide6.QtCore import QEvent, QObject, Signal
from PySide6.QtWidgets import QWidget

from app.telemetry.hardware import HardwareReport, detect_hardware
from app.telemetry.sampler import DEFAULT_INTERVAL_S, Sampler
from app.telemetry.snapshot import Snapshot


class TelemetryBridge(QObject):
    """Thin re-emitter around a `Sampler` and `detect_hardware`."""

    snapshot_received = Signal(object)  # Snapshot
    hardware_detected = Signal(object)  # HardwareReport
    detection_failed = Signal(str)
    interval_changed = Signal(float)  # seconds between snapshots

    MINIMISED_INTERVAL_S = 2.0

    def __init__(
        self,
        sampler: Sampler,
        *,
        detect: Callable[[], HardwareReport] = detect_hardware,
        interval_s: float = DEFAULT_INTERVAL_S,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.sampler = sampler
        self._detect = detect
        self._interval_s = interval_s
        self._minimised = False
        self._executor: ThreadPoolExecutor | None = None
        self._watched: QWidget | None = None
        self._listening = False

    # ---- sampling ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling at the normal rate and forward every snapshot."""
        if not self._listening:
            self.sampler.add_listener(self._emit_snapshot)
            self._listening = True
        self.sampler.set_interval(self._interval_s)
        self.sampler.start()
        self.interval_changed.emit(self.sampler.interval_s)

    def set_minimised(self, minimised: bool) -> None:
        if minimised == self._minimised:
            return
        self._minimised = minimised
        self.sampler.set_interval(self.MINIMISED_INTERVAL_S if minimised else self._interval_s)
        self.interval_changed.emit(self.sampler.interval_s)

    def watch_window(self, window: QWidget) -> None:
        """Sample slower while `window` is minimised."""
        self._watched = window
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if watched is self._watched and event.type() == QEvent.Type.WindowStateChange:
            self.set_minimised(self._watched.isMinimized())
        return False

    def _emit_snapshot(self, snapshot: Snapshot) -> None:  # sampler thread
        self.snapshot_received.emit(snapshot)

    # ---- detection ---------------------------------------------------------------------------
    def request_detection(self) -> None:
        """Detect the hardware on a worker thread; `hardware_detected` or `detection_failed` follows."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-hardware")
        self._executor.submit(self._run_detection)

    def _run_detection(self) -> None:  # worker thread
        try:
            report = self._detect()
        except Exception as exc:  # detection reports n/a per source; this is the unexpected rest
            self.detection_failed.emit(f"{type(exc).__name__}: {exc}")
            return
        self.hardware_detected.emit(report)

    # ---- shutdown ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop forwarding, stop and join the sampler and the detection thread."""
        if self._listening:
            self.sampler.remove_listener(self._emit_snapshot)
            self._listening = False
        self.sampler.stop()
        if self._watched is not None:
            self._watched.removeEventFilter(self)
            self._watched = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
