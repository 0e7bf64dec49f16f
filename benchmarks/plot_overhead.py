"""What live plotting costs generation: tokens/s with the Performance panel's live view on vs off.

The main window streams 256-token generations of the demo model; in alternate runs the panel's
"Live while generating" box is unticked (plot and tiles drawn once, after the generation). Same
window, same model, same settings, interleaved, medians. Target: plots cost <= 2 % (ratio on/off
>= 0.98). The GUI thread's CPU time during each generation is reported too: on 2 shared cores
t/s drifts by several per cent between runs, while the CPU the live view takes is the cause of
any slowdown and is measured much more steadily.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/plot_overhead.py [--runs 5] [--tokens 256]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gui_responsiveness import wait_until  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication, QSpinBox  # noqa: E402

from app.bench.history import HistoryStore  # noqa: E402
from ui.gc_guard import GuiThreadGarbageCollector  # noqa: E402
from ui.main_window import MainWindow  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    app = QApplication(sys.argv)
    collector = GuiThreadGarbageCollector(app)
    tmp = tempfile.mkdtemp()
    window = MainWindow(
        settings=QSettings(os.path.join(tmp, "b.ini"), QSettings.Format.IniFormat),
        history=HistoryStore(os.path.join(tmp, "h.sqlite3")),
    )
    window.show()
    panel, console, bridge, perf = window.model_panel, window.console, window.bridge, window.performance_panel
    wait_until(app, lambda: panel.selected_path() in panel._infos)
    panel.findChild(QSpinBox, "field_max_tokens").setValue(args.tokens)
    panel.findChild(QSpinBox, "field_n_ctx").setValue(1024)
    panel.findChild(QSpinBox, "field_top_k").setValue(1)  # greedy: every run the same length
    panel.request_load()
    wait_until(app, lambda: console.generate_button.isEnabled())
    console.completion_radio.setChecked(True)
    console.prompt_edit.setPlainText("Once upon a time, in a land far away,")

    def generate() -> tuple[float, float]:
        """Generation t/s, and the GUI thread's CPU time as a share of one core meanwhile."""
        results: list[object] = []
        bridge.generation_finished.connect(results.append)
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        console.generate_button.click()
        wait_until(app, lambda: bool(results))
        cpu1, wall1 = time.thread_time(), time.perf_counter()
        bridge.generation_finished.disconnect(results.append)
        wait_until(app, lambda: console.generate_button.isEnabled())
        return results[0].gen_tokens_per_s, (cpu1 - cpu0) / (wall1 - wall0)  # type: ignore[attr-defined]

    generate()  # warm-up
    on, off = [], []
    for _ in range(args.runs):
        perf.set_live_view(True)
        on.append(generate())
        perf.set_live_view(False)
        off.append(generate())
    window.close()
    collector.stop()

    def row(label: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
        ts, gui = [r[0] for r in runs], [100 * r[1] for r in runs]
        print(
            f"| {label} | {statistics.median(ts):.1f} | {min(ts):.1f} | {max(ts):.1f} "
            f"| {statistics.median(gui):.2f} % |"
        )
        return statistics.median(ts), statistics.median(gui)

    print(f"{args.runs} interleaved runs of {args.tokens} tokens each; platform {app.platformName()}")
    print()
    print("| live view | median gen t/s | min | max | GUI thread CPU (median, % of a core) |")
    print("|---|---:|---:|---:|---:|")
    m_off, gui_off = row("off", off)
    m_on, gui_on = row("on (speed plot + tiles)", on)
    ratio = m_on / m_off
    paired = statistics.median(a[0] / b[0] for a, b in zip(on, off, strict=True))
    print()
    print(f"ratio on/off = {ratio:.3f} (target >= 0.98): {'met' if ratio >= 0.98 else 'NOT met'}")
    print(
        f"median of the {args.runs} paired ratios (each 'on' run over the 'off' run after it) = {paired:.3f}"
    )
    print(f"the live view's own CPU: {gui_on - gui_off:+.2f} % of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
