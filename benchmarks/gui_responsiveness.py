"""How long the GUI event loop stalls while the window streams a 256-token generation.

The main window is shown (offscreen unless a display is set), the demo model is loaded through
the real engine bridge, and a 1 ms timer measures its own lateness on the GUI thread while the
model generates and every token is appended to the console. Target: p99 < 20 ms, max < 100 ms.
A baseline with the window idle is measured in the same run.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui_responsiveness.py [--tokens 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QElapsedTimer, QEventLoop, QSettings, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QSpinBox  # noqa: E402

from app.engine.client import StopReason  # noqa: E402
from ui.gc_guard import GuiThreadGarbageCollector  # noqa: E402
from ui.main_window import MainWindow  # noqa: E402


class LatenessProbe:
    """A 1 ms timer that records how late each of its ticks fired, in milliseconds."""

    def __init__(self) -> None:
        self.lateness_ms: list[float] = []
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(1)
        self._timer.timeout.connect(self._tick)
        self._last_ns = 0

    def start(self) -> None:
        self.lateness_ms.clear()
        self._clock.start()
        self._last_ns = self._clock.nsecsElapsed()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed()
        self.lateness_ms.append(max(0.0, (now - self._last_ns) / 1e6 - 1.0))
        self._last_ns = now


def wait_until(app: QApplication, condition, timeout_s: float = 300) -> None:  # type: ignore[no-untyped-def]
    """Run the event loop (sleeping between events, as app.exec() does) until `condition()` holds."""
    loop = QEventLoop()
    deadline = time.monotonic() + timeout_s
    check = QTimer()
    check.setInterval(20)

    def poll() -> None:
        if condition() or time.monotonic() > deadline:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    if not condition():
        loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError("benchmark step timed out")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def row(label: str, values: list[float]) -> str:
    return (
        f"| {label} | {len(values)} | {statistics.median(values):.2f} | {percentile(values, 99):.2f} | "
        f"{max(values):.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    app = QApplication(sys.argv)
    collector = GuiThreadGarbageCollector(app)
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "bench.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    window.show()
    panel, console, bridge = window.model_panel, window.console, window.bridge
    wait_until(app, lambda: panel.selected_path() in panel._infos)
    panel.findChild(QSpinBox, "field_max_tokens").setValue(args.tokens)
    panel.findChild(QSpinBox, "field_n_ctx").setValue(1024)
    panel.request_load()
    wait_until(app, lambda: console.generate_button.isEnabled())

    probe = LatenessProbe()
    probe.start()
    idle_until = time.monotonic() + 2.0
    wait_until(app, lambda: time.monotonic() > idle_until)
    probe.stop()
    idle = list(probe.lateness_ms)

    results: list[object] = []
    bridge.generation_finished.connect(results.append)
    console.completion_radio.setChecked(True)
    console.prompt_edit.setPlainText("Once upon a time, in a land far away,")
    probe.start()
    console.generate_button.click()
    wait_until(app, lambda: bool(results))
    probe.stop()
    busy = list(probe.lateness_ms)
    stats = results[0]
    window.close()
    collector.stop()

    print(
        f"generation: {stats.generated_tokens} tokens at {stats.gen_tokens_per_s:.1f} t/s, "
        f"stop: {stats.stop_reason.value}; platform: {app.platformName()}"
    )
    if stats.stop_reason is not StopReason.LENGTH:
        print("note: the model stopped before the requested token count")
    print()
    print("| GUI thread, 1 ms timer | ticks | median late (ms) | p99 late (ms) | max late (ms) |")
    print("|---|---:|---:|---:|---:|")
    print(row("idle window (baseline)", idle))
    print(row(f"streaming {stats.generated_tokens} tokens", busy))
    p99, worst = percentile(busy, 99), max(busy)
    print()
    print(
        f"target p99 < 20 ms: {'met' if p99 < 20 else 'NOT met'}; "
        f"target max < 100 ms: {'met' if worst < 100 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
